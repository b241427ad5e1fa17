//! Errors of configuration and of building services. They name files, fields and variables;
//! never a key.

use std::path::{Path, PathBuf};

use keyturn_core::StoreError;

/// What stands in for a secret in a message.
const HIDDEN: &str = "[key]";
/// Known key values shorter than this are not searched for in messages: replacing a two-letter
/// test key everywhere would garble the message and protect nothing.
const MIN_SECRET_LEN: usize = 8;

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether a value looks like a Google API key (`AIza` and then key characters), whole or cut
/// short: such a value is never a variable name, a path, a label or a project, and is never
/// shown.
pub fn looks_like_key(value: &str) -> bool {
    let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
    if keyturn_gemini::redact(v, "") != v {
        return true;
    }
    v.match_indices("AIza")
        .any(|(i, _)| v[i + 4..].chars().take_while(|c| key_char(*c)).count() >= 16)
}

/// `text` with anything key-shaped and every known key value (`secrets`) hidden. Every message
/// built from something outside keyturn (a file, a variable, toml's own error text) goes through
/// this before anyone can see it.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = keyturn_gemini::redact(text, "");
    for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), HIDDEN);
        }
    }
    // A key cut short (a partial paste) is still most of a secret.
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("AIza") {
        let n = rest[i + 4..].chars().take_while(|c| key_char(*c)).count();
        masked.push_str(&rest[..i]);
        if n >= 16 {
            masked.push_str(HIDDEN);
        } else {
            masked.push_str(&rest[i..i + 4 + n]);
        }
        rest = &rest[i + 4 + n..];
    }
    masked.push_str(rest);
    masked
}

/// Whether `value` is one of the configured key values (`secrets`), long enough to be a real key.
pub(crate) fn is_known_secret(value: &str, secrets: &[String]) -> bool {
    let v = value.trim();
    v.len() >= MIN_SECRET_LEN && secrets.iter().any(|s| s == v)
}

fn scrub_path(p: &Path, secrets: &[String]) -> PathBuf {
    let shown = p.to_string_lossy();
    let clean = scrub(&shown, secrets);
    if clean == shown {
        p.to_owned()
    } else {
        PathBuf::from(clean)
    }
}

/// Configuration that cannot be used. All are usage errors (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file cannot be read.
    #[error("cannot read {}: {detail}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("{}: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (it names the field and line).
        detail: String,
    },
    /// A value is out of range.
    #[error("{}: {field}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A field holds what looks like an API key (a key pasted where a name belongs).
    #[error("{}: {field} holds what looks like an API key{hint}", path.display())]
    KeyShaped {
        /// The file (or `(environment)`).
        path: PathBuf,
        /// The field or variable, e.g. `keys[0].env`.
        field: String,
        /// What to do instead, starting with its own separator.
        hint: String,
    },
    /// A limit is wrong.
    #[error("{}: {detail}", path.display())]
    Limits {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the table and field).
        detail: String,
    },
    /// A `[[keys]]` entry names a variable that is not set.
    #[error("{}: keys[{entry}] reads ${var}, which is not set", path.display())]
    MissingEnv {
        /// The file.
        path: PathBuf,
        /// Which entry.
        entry: usize,
        /// The variable.
        var: String,
    },
    /// A keys file line is wrong.
    #[error("{} line {line}: {detail}", path.display())]
    KeysFile {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// A key is unusable.
    #[error("{source_name}: {detail}")]
    Key {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// Redis refused keyturn's credentials or permissions (wrong password, NOAUTH, WRONGPASS, an
    /// ACL that denies a command): the configuration must change, waiting will not help.
    #[error(
        "Redis at {server} refused keyturn: {detail}. This is a configuration error: check the user and password in KEYTURN_REDIS_URL (or state.redis_url) and that user's ACL"
    )]
    RedisAccess {
        /// The server, without its password.
        server: String,
        /// What Redis said (its error code), never the password.
        detail: String,
    },
    /// No keys anywhere.
    #[error("no Gemini API keys found; keyturn looked at {}", looked_at.join(", "))]
    NoKeys {
        /// Where keyturn looked.
        looked_at: Vec<String>,
    },
}

impl ConfigError {
    /// The classification: every configuration error is one the user must fix.
    pub fn kind(&self) -> ServiceErrorKind {
        ServiceErrorKind::Configuration
    }

    /// The same error with anything key-shaped, and every value in `secrets`, hidden in every
    /// field (paths included: a key pasted where a path belongs is still a key).
    pub fn scrubbed(self, secrets: &[String]) -> Self {
        let s = |t: String| scrub(&t, secrets);
        let p = |p: PathBuf| scrub_path(&p, secrets);
        match self {
            Self::Read { path, detail } => Self::Read {
                path: p(path),
                detail: s(detail),
            },
            Self::Parse { path, detail } => Self::Parse {
                path: p(path),
                detail: s(detail),
            },
            Self::Invalid {
                path,
                field,
                detail,
            } => Self::Invalid {
                path: p(path),
                field: s(field),
                detail: s(detail),
            },
            Self::KeyShaped { path, field, hint } => Self::KeyShaped {
                path: p(path),
                field: s(field),
                hint: s(hint),
            },
            Self::Limits { path, detail } => Self::Limits {
                path: p(path),
                detail: s(detail),
            },
            Self::MissingEnv { path, entry, var } => Self::MissingEnv {
                path: p(path),
                entry,
                var: s(var),
            },
            Self::KeysFile { path, line, detail } => Self::KeysFile {
                path: p(path),
                line,
                detail: s(detail),
            },
            Self::Key {
                source_name,
                detail,
            } => Self::Key {
                source_name: s(source_name),
                detail: s(detail),
            },
            Self::RedisAccess { server, detail } => Self::RedisAccess {
                server: s(server),
                detail: s(detail),
            },
            e @ Self::NoKeys { .. } => e,
        }
    }
}

/// Building services failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state backend (a locked or corrupt state file, Redis unreachable).
    #[error(transparent)]
    State(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The metrics exporter could not start.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What kind of failure stopped the services from starting, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceErrorKind {
    /// The user must change something: configuration, a state file another process holds, one
    /// that does not parse or that a newer keyturn wrote (exit 2).
    Configuration,
    /// Anything else: an outage, an I/O error, a port taken (exit 1).
    Failed,
}

impl ServiceError {
    /// The classification.
    pub fn kind(&self) -> ServiceErrorKind {
        match self {
            Self::Config(_)
            | Self::State(
                StoreError::Locked { .. }
                | StoreError::Corrupt { .. }
                | StoreError::NewerSchema { .. },
            ) => ServiceErrorKind::Configuration,
            _ => ServiceErrorKind::Failed,
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn what_the_user_must_change_is_a_configuration_error() {
        let locked = ServiceError::State(StoreError::Locked {
            path: PathBuf::from("state.json"),
            pid: Some(7),
        });
        assert_eq!(locked.kind(), ServiceErrorKind::Configuration);
        let down = ServiceError::State(StoreError::Backend("redis://h:6379 unreachable".into()));
        assert_eq!(down.kind(), ServiceErrorKind::Failed);
        assert_eq!(
            ServiceError::Http("tls".into()).kind(),
            ServiceErrorKind::Failed
        );
    }
}
