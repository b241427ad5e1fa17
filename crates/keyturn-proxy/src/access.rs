//! Which proxy client may use a resource: with client tokens configured, a file, cached content
//! or batch belongs to the client (token label) that created it through the proxy, and any
//! other client is answered exactly as Gemini answers a request for another project's resource
//! — the answer it gets for one that does not exist, so a refusal says nothing about what
//! exists. A resource with no client recorded (made before clients were recorded, without
//! tokens, or found upstream and never seen created) stays usable by every client, and
//! `[serve] share_resources = true` lets every client use every resource, as before.

use axum::http::StatusCode;
use keyturn_core::{Ownership, ResourceKind, ResourceName};

use crate::answer::Answer;
use crate::auth::Client;
use crate::{ProxyState, Refusal};

/// Whether one client's resources are kept from the others now: client tokens are configured
/// and `share_resources` is off.
pub(crate) fn isolated(st: &ProxyState) -> bool {
    let live = st.live();
    !live.tokens.is_empty() && !live.share_resources
}

/// Whether `client` may use a resource of `owner`.
pub(crate) fn may_use(st: &ProxyState, client: &Client, owner: &Ownership) -> bool {
    match owner.client.as_deref() {
        None => true,
        Some(creator) => client.0.as_deref() == Some(creator) || !isolated(st),
    }
}

/// `Ok` when `client` may use the resource `name` of `owner` (if known), else Gemini's answer
/// for another project's resource.
pub(crate) fn check(
    st: &ProxyState,
    client: &Client,
    name: &ResourceName,
    owner: Option<&Ownership>,
) -> Result<(), Refusal> {
    match owner {
        Some(o) if !may_use(st, client, o) => Err(denied(name)),
        _ => Ok(()),
    }
}

/// What Gemini answers for a resource of another project (the same as for one that does not
/// exist): for a file the bare 403 of corpus `real-32`; for a cached content the 403 users of
/// the real API report; for a batch the generic not-found of Google's long-running operations.
/// The simulator answers each the same way for another project's or a missing one, and
/// `tests/isolation.rs` compares the two.
pub(crate) fn denied(name: &ResourceName) -> Refusal {
    let (status, message, state) = match name.kind() {
        ResourceKind::Files => (
            StatusCode::FORBIDDEN,
            format!(
                "You do not have permission to access the File {} or it may not exist.",
                name.id()
            ),
            "PERMISSION_DENIED",
        ),
        ResourceKind::CachedContents => (
            StatusCode::FORBIDDEN,
            "CachedContent not found (or permission denied)".to_owned(),
            "PERMISSION_DENIED",
        ),
        ResourceKind::Batches => (
            StatusCode::NOT_FOUND,
            "Requested entity was not found.".to_owned(),
            "NOT_FOUND",
        ),
    };
    let body = serde_json::json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "status": state,
    }});
    Answer::Relay {
        status,
        body: body.to_string(),
    }
}
