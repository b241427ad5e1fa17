//! Asking whether a key works, at no quota cost: `GET /{version}/models?pageSize=1` with it, or
//! `GET /{version}/models/{model}` to ask about one model too. Used to settle a 403 that gave no
//! reason ([`crate::ErrorKind::Unverified`]), to bring disabled keys back when they answer again,
//! and by `keyturn keys check`.

use keyturn_core::{ApiKey, DeadReason};

use crate::error::{ErrorKind, classify, refused_reason};
use crate::transport::{InvalidName, Transport};

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

/// What a check of a key against one model said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelCheck {
    /// The key works, and the model answers it.
    Alive,
    /// The key works, but the model refused the request with this status (a model that does
    /// not exist, or not for this key's project): a fault of the question, not of the key.
    ModelRefused(u16),
    /// The key is refused, for this reason.
    Refused(DeadReason),
    /// An answer that says neither (a 5xx, a throttle): its status and kind.
    Inconclusive(u16, ErrorKind),
    /// No answer at all (a timeout, a refused connection, a redirect): in words, without the key.
    NoAnswer(String),
}

/// Checks `key` with one request that costs no quota.
pub async fn check_key(transport: &Transport, key: &ApiKey) -> KeyCheck {
    let url = format!("{}?pageSize=1", transport.models_url());
    match ask(transport, key, &url).await {
        ModelCheck::Alive => KeyCheck::Alive,
        ModelCheck::Refused(reason) => KeyCheck::Refused(reason),
        ModelCheck::ModelRefused(status) => {
            KeyCheck::Unknown(format!("answered {status} ({:?})", ErrorKind::CallerFault))
        }
        ModelCheck::Inconclusive(status, kind) => {
            KeyCheck::Unknown(format!("answered {status} ({kind:?})"))
        }
        ModelCheck::NoAnswer(detail) => KeyCheck::Unknown(detail),
    }
}

/// Checks `key` by asking about `model` (`GET models/{model}`), which also costs no quota. The
/// model name is checked before anything is sent.
pub async fn check_key_for_model(
    transport: &Transport,
    key: &ApiKey,
    model: &str,
) -> Result<ModelCheck, InvalidName> {
    let url = transport.model_info_url(model)?;
    Ok(ask(transport, key, &url).await)
}

/// One unmetered GET with `key`, classified as [`crate::caller`] classifies any answer.
async fn ask(transport: &Transport, key: &ApiKey, url: &str) -> ModelCheck {
    match transport.get(key, url).await {
        Ok(r) if r.status().is_success() => ModelCheck::Alive,
        Ok(r) => {
            let status = r.status().as_u16();
            let body = crate::body::read_error(r, crate::body::MAX_ERROR_BYTES).await;
            let c = classify(status, &body);
            match c.kind {
                ErrorKind::DeadKey(reason) | ErrorKind::ProjectDead(reason) => {
                    ModelCheck::Refused(reason)
                }
                // This request costs no quota and names no resource: a bare 403 is about the key.
                ErrorKind::Unverified => ModelCheck::Refused(refused_reason(&c.message)),
                ErrorKind::CallerFault => ModelCheck::ModelRefused(status),
                other => ModelCheck::Inconclusive(status, other),
            }
        }
        Err(e) => ModelCheck::NoAnswer(e.to_string()),
    }
}
