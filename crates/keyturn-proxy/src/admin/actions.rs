//! The admin API's actions: reset a key or a scope, disable or enable a key, re-check one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyturn_core::{ResetTarget, Scrubber};
use keyturn_gemini::{KeyCheck, check_key};
use serde_json::json;

use super::Console;
use super::events::NewEvent;
use super::{json_answer, problem};

pub(super) fn find_key(st: &Console, key: &str) -> Option<(keyturn_core::KeyId, String)> {
    let ring = st.host.ledger().keys();
    let id = ring.find(key)?;
    let label = ring.get(id).map(|e| e.label.clone()).unwrap_or_default();
    Some((id, label))
}

pub(super) fn no_such_key() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no key with that label or fingerprint",
    )
}

pub(super) async fn reset_key(State(st): State<Arc<Console>>, Path(key): Path<String>) -> Response {
    let Some((id, label)) = find_key(&st, &key) else {
        return no_such_key();
    };
    match st.host.ledger().reset(ResetTarget::Key(id)).await {
        Ok(()) => {
            tracing::info!(key = %label.escape_debug(), "key reset from the admin API");
            st.events.push(
                st.clock.now_ms(),
                NewEvent {
                    kind: "admin_reset",
                    severity: "info",
                    key: Some(label.clone()),
                    project: None,
                    model: None,
                    message: format!("key {label} reset by an admin: enabled, breaker closed"),
                },
            );
            st.watch_once().await;
            json_answer(StatusCode::OK, &json!({"reset": label}))
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not reset: {e}"),
        ),
    }
}

pub(super) async fn disable_key(
    State(st): State<Arc<Console>>,
    Path(key): Path<String>,
) -> Response {
    set_disabled(&st, &key, true).await
}

pub(super) async fn enable_key(
    State(st): State<Arc<Console>>,
    Path(key): Path<String>,
) -> Response {
    set_disabled(&st, &key, false).await
}

/// Takes a key out of rotation, or puts it back (only the operator's disable is lifted).
pub(super) async fn set_disabled(st: &Console, key: &str, disabled: bool) -> Response {
    let Some((id, label)) = find_key(st, key) else {
        return no_such_key();
    };
    let (kind, did, message) = if disabled {
        (
            "admin_disable",
            "disabled",
            format!("key {label} disabled by an admin: it takes no request until enabled"),
        )
    } else {
        (
            "admin_enable",
            "enabled",
            format!("key {label} enabled by an admin"),
        )
    };
    match st.host.ledger().disable_by_admin(id, disabled).await {
        Ok(()) => {
            tracing::info!(key = %label.escape_debug(), "key {did} from the admin API");
            st.events.push(
                st.clock.now_ms(),
                NewEvent {
                    kind,
                    severity: if disabled { "warning" } else { "info" },
                    key: Some(label.clone()),
                    project: None,
                    model: None,
                    message,
                },
            );
            st.watch_once().await;
            json_answer(StatusCode::OK, &json!({ did: label }))
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not change the key: {e}"),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeTarget {
    project: String,
    model: String,
}

pub(super) async fn reset_scope(State(st): State<Arc<Console>>, body: Bytes) -> Response {
    let Ok(t) = serde_json::from_slice::<ScopeTarget>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "expected {\"project\": …, \"model\": …}",
        );
    };
    let status = match st.host.ledger().status().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    if !status
        .scopes
        .iter()
        .any(|s| s.project == t.project && s.model == t.model)
    {
        return problem(StatusCode::NOT_FOUND, "no such project and model");
    }
    let target = ResetTarget::Scope {
        project: t.project.clone(),
        model: t.model.clone(),
    };
    match st.host.ledger().reset(target).await {
        Ok(()) => {
            st.events.push(
                st.clock.now_ms(),
                NewEvent {
                    kind: "admin_reset",
                    severity: "info",
                    key: None,
                    project: Some(t.project.clone()),
                    model: Some(t.model.clone()),
                    message: format!(
                        "{} in project {} reset by an admin: counters, cooldown, exhaustion and learned limits cleared",
                        t.model, t.project
                    ),
                },
            );
            st.watch_once().await;
            json_answer(
                StatusCode::OK,
                &json!({"reset": {"project": t.project, "model": t.model}}),
            )
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not reset: {e}"),
        ),
    }
}

pub(super) async fn recheck_key(
    State(st): State<Arc<Console>>,
    Path(key): Path<String>,
) -> Response {
    let Some((id, label)) = find_key(&st, &key) else {
        return no_such_key();
    };
    let Some(transport) = st.recheck.load_full() else {
        return problem(
            StatusCode::NOT_IMPLEMENTED,
            "this console was started without a way to re-check keys",
        );
    };
    let ring = st.host.ledger().keys();
    let Some(entry) = ring.get(id) else {
        return problem(StatusCode::NOT_FOUND, "no such key");
    };
    let answer = check_key(&transport, &entry.key).await;
    let disabled = st
        .host
        .ledger()
        .status()
        .await
        .ok()
        .and_then(|s| s.keys.into_iter().find(|k| k.label == label))
        // Gemini's verdict only: the operator's disable is lifted by enabling the key.
        .is_some_and(|k| k.disabled.is_some_and(|d| !d.reason.is_admin()));
    let (result, detail) = match &answer {
        KeyCheck::Alive if disabled => match st.host.ledger().reset(ResetTarget::Key(id)).await {
            Ok(()) => ("alive", "the key answers; re-enabled".to_owned()),
            Err(e) => (
                "alive",
                format!("the key answers, but could not re-enable it: {e}"),
            ),
        },
        KeyCheck::Alive => ("alive", "the key answers".to_owned()),
        KeyCheck::Refused(reason) => ("refused", format!("Gemini refuses the key: {reason}")),
        KeyCheck::Unknown(why) => (
            "unknown",
            // In words without the key; scrubbed again in case a server quoted it.
            format!(
                "no clear answer: {}",
                Scrubber::new(ring.iter().map(|(_, e)| &e.key)).redact(why)
            ),
        ),
    };
    st.events.push(
        st.clock.now_ms(),
        NewEvent {
            kind: "admin_recheck",
            severity: if result == "alive" { "info" } else { "warning" },
            key: Some(label.clone()),
            project: Some(entry.project.clone()),
            model: None,
            message: format!("key {label} re-checked by an admin: {detail}"),
        },
    );
    st.watch_once().await;
    json_answer(
        StatusCode::OK,
        &json!({"key": label, "result": result, "detail": detail}),
    )
}

/// Refuses every action on a read-only console, naming what allows them.
pub(super) async fn actions_gate(
    State(st): State<Arc<Console>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if st.allow_actions {
        return next.run(req).await;
    }
    problem(
        StatusCode::FORBIDDEN,
        "this console is read-only: start keyturn console with --allow-actions to reset, disable, enable or re-check keys",
    )
}
