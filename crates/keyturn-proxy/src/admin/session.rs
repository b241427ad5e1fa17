//! What the console's sign-in cookie carries: a session, never the admin token. A cookie sits in
//! the browser's store (on disk, in its backups, in a profile copied elsewhere); had it held the
//! token, whoever read it would hold the admin API for as long as the token is configured, and
//! signing out would revoke nothing. The session is `EXPIRES.MAC`: when it ends (Unix seconds,
//! [`SESSION_SECS`] after the sign-in) and an HMAC-SHA256, under a secret this process drew at
//! random, of that time and the digest of the admin token that signed in. So a session
//! - ends by itself (the browser drops the cookie then too: `Max-Age`);
//! - ends with its token: taken out of `[[serve.admin_tokens]]` (a reload), no session made with
//!   it matches any more;
//! - ends with the process: a restarted `keyturn serve` or `keyturn console` draws a new secret,
//!   and its users sign in again;
//! - cannot be made, or stretched, without the secret: the time is under the MAC.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How long a sign-in lasts: a working day.
pub(super) const SESSION_SECS: i64 = 12 * 3600;

/// The secret sessions are signed with, drawn when the console starts.
pub(super) struct Sessions {
    secret: [u8; 32],
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            secret: rand::random(),
        }
    }
}

impl Sessions {
    /// The cookie value of a sign-in at `now_ms` with the admin token whose digest is `token`.
    pub(super) fn issue(&self, token: &[u8; 32], now_ms: i64) -> Option<String> {
        let expires = now_ms.div_euclid(1000) + SESSION_SECS;
        let mac = self.mac(expires, token)?;
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("{expires}.{hex}"))
    }

    /// Whether `cookie` is a session, not ended at `now_ms`, of one of the admin tokens whose
    /// digests are `tokens`.
    pub(super) fn valid(&self, cookie: &str, tokens: &[(String, [u8; 32])], now_ms: i64) -> bool {
        let Some((expires, mac)) = cookie.split_once('.') else {
            return false;
        };
        let (Ok(expires), Some(mac)) = (expires.parse::<i64>(), unhex(mac)) else {
            return false;
        };
        let now = now_ms.div_euclid(1000);
        if expires <= now || expires > now + SESSION_SECS {
            return false;
        }
        let mut found = false;
        for (_, token) in tokens {
            if let Some(want) = self.mac(expires, token) {
                found |= bool::from(want.ct_eq(&mac));
            }
        }
        found
    }

    fn mac(&self, expires: i64, token: &[u8; 32]) -> Option<[u8; 32]> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        m.update(b"keyturn console session v1\0");
        m.update(&expires.to_be_bytes());
        m.update(token);
        Some(m.finalize().into_bytes().into())
    }
}

/// 64 lowercase hex digits as 32 bytes.
fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::digest;

    const NOW: i64 = 1_780_000_000_000;

    fn tokens(names: &[&str]) -> Vec<(String, [u8; 32])> {
        names.iter().map(|t| ((*t).to_owned(), digest(t))).collect()
    }

    #[test]
    fn a_session_holds_no_token_and_lasts_its_time() {
        let s = Sessions::default();
        let admins = tokens(&["kt_made_up_admin_one", "kt_made_up_admin_two"]);
        let cookie = s.issue(&admins[1].1, NOW).unwrap();
        assert!(!cookie.contains("kt_made_up"), "{cookie}");
        assert!(s.valid(&cookie, &admins, NOW));
        assert!(s.valid(&cookie, &admins, NOW + SESSION_SECS * 1000 - 1_000));
        assert!(!s.valid(&cookie, &admins, NOW + SESSION_SECS * 1000));
    }

    #[test]
    fn a_session_ends_with_its_token_and_with_its_process() {
        let s = Sessions::default();
        let admins = tokens(&["kt_made_up_admin_one", "kt_made_up_admin_two"]);
        let cookie = s.issue(&admins[0].1, NOW).unwrap();
        assert!(!s.valid(&cookie, &admins[1..], NOW), "its token is gone");
        assert!(
            !Sessions::default().valid(&cookie, &admins, NOW),
            "another process's secret"
        );
    }

    #[test]
    fn a_session_cannot_be_stretched_or_forged() {
        let s = Sessions::default();
        let admins = tokens(&["kt_made_up_admin_one"]);
        let cookie = s.issue(&admins[0].1, NOW).unwrap();
        let (expires, mac) = cookie.split_once('.').unwrap();
        let later: i64 = expires.parse::<i64>().unwrap() + 3600;
        for forged in [
            format!("{later}.{mac}"),
            format!("{}.{mac}", later + SESSION_SECS * 100),
            format!("{expires}.{}", "0".repeat(64)),
            format!("{expires}.{}", mac.to_uppercase()),
            format!("{expires}.{}", &mac[..62]),
            format!("{expires}.{mac}00"),
            "kt_made_up_admin_one".to_owned(),
            expires.to_owned(),
            String::new(),
            ".".to_owned(),
        ] {
            assert!(!s.valid(&forged, &admins, NOW), "{forged}");
        }
        assert!(!s.valid(&cookie, &[], NOW), "no admin token at all");
    }
}
