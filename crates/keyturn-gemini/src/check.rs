//! Asking whether a key works, at no quota cost: `GET /{version}/models?pageSize=1` with it.
//! Used to settle a 403 that gave no reason ([`crate::ErrorKind::Unverified`]), to bring disabled
//! keys back when they answer again, and by `keyturn keys check`.

use keyturn_core::{ApiKey, DeadReason};

use crate::error::{ErrorKind, classify, refused_reason};
use crate::transport::Transport;

/// What a check said about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key works.
    Alive,
    /// The key is refused, for this reason.
    Refused(DeadReason),
    /// No answer that says either (a timeout, a 5xx, a throttle): in words, without the key.
    Unknown(String),
}

/// Checks `key` with one request that costs no quota.
pub async fn check_key(transport: &Transport, key: &ApiKey) -> KeyCheck {
    let url = format!("{}?pageSize=1", transport.models_url());
    match transport.get(key, &url).await {
        Ok(r) if r.status().is_success() => KeyCheck::Alive,
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap_or_default();
            let c = classify(status, &body);
            match c.kind {
                ErrorKind::DeadKey(reason) | ErrorKind::ProjectDead(reason) => {
                    KeyCheck::Refused(reason)
                }
                // This request names no model and no resource: a bare 403 is about the key.
                ErrorKind::Unverified => KeyCheck::Refused(refused_reason(&c.message)),
                other => KeyCheck::Unknown(format!("answered {status} ({other:?})")),
            }
        }
        Err(e) => KeyCheck::Unknown(e.to_string()),
    }
}
