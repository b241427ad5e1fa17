//! Redis' errors in keyturn's words: URLs and messages without credentials, refusals (a
//! configuration error) told apart from outages, and the cause a [`BackendError`] carries.

use keyturn_core::{BackendError, StoreError};

/// A URL with any credentials removed, for messages: the user and password before `@`, and the
/// query, where a `redis+unix://` URL carries `user=` and `pass=`. A server part that is not
/// plainly `host[:port][,host:port…][/db]`, or an `@` after the query starts (a password
/// written with a raw `?`, `#` or `/` in it, so that what looks like the host is a piece of the
/// password), is not shown at all.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, all)) => {
            let rest = all.split(['?', '#']).next().unwrap_or("");
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            let unix = scheme.ends_with("unix") && host.starts_with('/');
            // An `@` past the cut: the cut was inside the credentials.
            let cut_early = all[rest.len()..].contains('@');
            if unix || (plain_hosts(host) && !cut_early) {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://(server not shown: the URL does not read as host:port)")
            }
        }
        None => "(redis url)".to_owned(),
    }
}

/// Whether `s` reads as `host[:port][,host[:port]…]`, optionally followed by `/db`: letters,
/// digits, `.`, `-`, `_`, an IPv6 address in brackets, a port of digits.
fn plain_hosts(s: &str) -> bool {
    let (nodes, db) = s.split_once('/').unwrap_or((s, ""));
    let node_ok = |n: &str| {
        let (host, port) = match n.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((addr, after))
                    if addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
                {
                    (
                        addr,
                        after.strip_prefix(':').or(after.is_empty().then_some("")),
                    )
                }
                _ => return false,
            },
            None => match n.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (n, Some("")),
            },
        };
        !host.is_empty()
            && (n.starts_with('[')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
            && port.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    };
    !nodes.is_empty()
        && nodes.split(',').map(str::trim).all(node_ok)
        && db.bytes().all(|b| b.is_ascii_digit())
}

/// Connecting to Redis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Redis refused keyturn: wrong or missing password (`WRONGPASS`, `NOAUTH`), or an ACL that
    /// denies the commands keyturn needs (`NOPERM`). A configuration error: waiting will not help.
    #[error(
        "Redis at {server} refused keyturn ({detail}): check the user and password in the Redis URL (KEYTURN_REDIS_URL or state.redis_url) and that user's ACL; nothing was admitted"
    )]
    Refused {
        /// The server, without credentials.
        server: String,
        /// What Redis said: its error code and meaning, never the password.
        detail: String,
    },
    /// The URL is not one Redis can be reached at.
    #[error("bad Redis URL {server}: {detail}")]
    BadUrl {
        /// The URL without credentials.
        server: String,
        /// What is wrong, without credentials.
        detail: String,
    },
    /// Redis did not answer (down, unreachable, timing out).
    #[error(transparent)]
    Unavailable(StoreError),
}

impl ConnectError {
    /// Whether the configuration must change (a refusal or a bad URL), as opposed to an outage
    /// that ends by itself.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::BadUrl { .. })
    }
}

impl From<ConnectError> for StoreError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Unavailable(s) => s,
            other => StoreError::Backend(BackendError::caused_by(other.to_string(), other)),
        }
    }
}

/// Why Redis refused a command, if it refused keyturn itself (credentials or ACL) rather than
/// failing to answer. Read from the error's kind and Redis's error code, never its text.
pub(super) fn refusal(e: &redis::RedisError) -> Option<&'static str> {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some("authentication failed: wrong user or password");
    }
    match e.code() {
        Some("WRONGPASS") => Some("WRONGPASS: wrong user or password"),
        Some("NOAUTH") => Some("NOAUTH: Redis requires a password and the URL gives none"),
        Some("NOPERM") => Some("NOPERM: the user's ACL denies a command or key keyturn needs"),
        _ => None,
    }
}

/// The passwords `url` carries (after `user:` or as `pass=`), to strip from any text that might
/// echo them.
pub(super) fn passwords_of(url: &str) -> Vec<&str> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out: Vec<&str> = before_query
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .into_iter()
        .collect();
    out.extend(query.split('&').filter_map(|kv| kv.strip_prefix("pass=")));
    out.retain(|p| !p.is_empty());
    out
}

/// What went wrong with Redis: the cause a [`BackendError`] from the Redis ledger carries. It is
/// keyturn's own description of the client's error, by kind only, because the client's text can
/// quote the URL and its password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisFailure {
    /// Redis refused keyturn's credentials or its ACL denies a command.
    #[error("{0}")]
    Refused(&'static str),
    /// Nothing listens at the address.
    #[error("connection refused")]
    ConnectionRefused,
    /// Redis did not answer in time.
    #[error("timed out")]
    TimedOut,
    /// The connection dropped or failed.
    #[error("connection lost")]
    ConnectionLost,
    /// Another failure, by the client's category.
    #[error("{0}")]
    Other(String),
}

impl RedisFailure {
    fn of(e: &redis::RedisError) -> Self {
        if let Some(why) = refusal(e) {
            Self::Refused(why)
        } else if e.is_connection_refusal() {
            Self::ConnectionRefused
        } else if e.is_timeout() {
            Self::TimedOut
        } else if e.is_connection_dropped() || e.is_io_error() {
            Self::ConnectionLost
        } else {
            Self::Other(e.category().to_owned())
        }
    }
}

pub(super) fn backend(server: &str, e: &redis::RedisError) -> BackendError {
    failed(server, e, "nothing was admitted")
}

/// A settle call's failure. Unlike an acquire's, it may have run in Redis (a timed-out call
/// still runs there) and it is never resent, so it must not say that nothing happened.
pub(super) fn settle_backend(server: &str, e: &redis::RedisError) -> BackendError {
    failed(
        server,
        e,
        "this call's outcome may not have been recorded and is not resent (what was reserved for it stays counted)",
    )
}

fn failed(server: &str, e: &redis::RedisError, consequence: &str) -> BackendError {
    let failure = RedisFailure::of(e);
    let message = match &failure {
        RedisFailure::Refused(why) => format!(
            "Redis at {server} refused keyturn ({why}); {consequence}: this is a configuration error, check the user and password in the Redis URL and that user's ACL"
        ),
        what => format!(
            "Redis at {server} did not answer ({what}); {consequence}; keyturn retries when Redis is back"
        ),
    };
    BackendError::caused_by(message, failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_settle_does_not_say_nothing_happened() {
        let e = redis::RedisError::from((redis::ErrorKind::Io, "made-up timeout"));
        let acquire = backend("redis://h:6379", &e).to_string();
        let settle = settle_backend("redis://h:6379", &e).to_string();
        assert!(acquire.contains("nothing was admitted"), "{acquire}");
        assert!(!settle.contains("nothing was admitted"), "{settle}");
        assert!(settle.contains("may not have been recorded"), "{settle}");
    }

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        for (url, shown) in [
            ("redis://:made-up-pw@h:6379/2", "redis://h:6379/2"),
            ("redis://user:made-up-pw@h:6379", "redis://h:6379"),
            ("rediss://user:made@up-pw@h", "rediss://h"),
            (
                "redis+unix:///run/redis.sock?user=u&pass=made-up-pw&db=1",
                "redis+unix:///run/redis.sock",
            ),
            (
                "unix:///run/redis.sock?pass=made-up-pw",
                "unix:///run/redis.sock",
            ),
            (
                "redis+cluster://u:made-up-pw@h1:7000,h2:7001",
                "redis+cluster://h1:7000,h2:7001",
            ),
            ("made-up-pw", "(redis url)"),
            ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
            ("redis://h_1.example:6379", "redis://h_1.example:6379"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        // A password written raw with a character that ends the authority: what follows `://`
        // up to it is a piece of the password, never shown as if it were the host.
        for url in [
            "redis://:made-up?pw@h:6379",
            "redis://u:made-up#pw@h:6379",
            "rediss://u:made-up/pw@h:6379",
            "redis+cluster://u:made-up?pw@h1:7000,h2:7001",
            "redis://made-up-pw?x@h",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("made-up"), "{url}: {shown}");
        }
        assert_eq!(
            passwords_of("redis+unix:///s?pass=made-up-a&x=1"),
            ["made-up-a"]
        );
        assert_eq!(
            passwords_of("redis://:made-up-b@h?pass=made-up-c"),
            ["made-up-b", "made-up-c"]
        );
    }
}
