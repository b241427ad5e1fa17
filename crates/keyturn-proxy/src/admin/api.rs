//! The admin API's reads: status, the 30-day history, recent events.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyturn_core::snapshot::ScopeStatus;
use keyturn_gemini::RouteFailing;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Console;
use super::events::{key_state, observe, returns_at};
use super::{json_answer, problem};

#[derive(Serialize)]
pub(super) struct KeyView {
    label: String,
    fingerprint: String,
    project: String,
    /// `usable`, `cooling`, `exhausted`, `off`, `disabled`, `breaker`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    since_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    until_ms: Option<i64>,
    failures: u32,
    /// Disabled by the operator (`POST /admin/keys/{key}/disable`), not by Gemini's verdict.
    by_admin: bool,
    /// The key's egress route, when it is failing: the key cools, it is not dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<RouteFailing>,
}

#[derive(Serialize)]
pub(super) struct ScopeView<'a> {
    #[serde(flatten)]
    scope: &'a ScopeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_off: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    returns_at_ms: Option<i64>,
    /// At today's pace so far, when the scope's day runs out (keyturn's planner); absent when
    /// it lasts the day, or nothing was sent yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    runs_out_today_ms: Option<i64>,
}

pub(super) async fn status(State(st): State<Arc<Console>>) -> Response {
    let status = match st.host.ledger().status().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    let since = observe(&st, &status);
    let now = status.at_ms;
    let keys: Vec<KeyView> = status
        .keys
        .iter()
        .map(|k| {
            let (state, until_ms) = key_state(&status, k, now);
            let fingerprint = k.fingerprint.to_string();
            let route = st.host.route_failing(&k.fingerprint);
            let reason = match (&k.disabled, &route) {
                (Some(d), _) => Some(d.reason.to_string()),
                (None, Some(r)) => Some(format!(
                    "egress route {} {} since {}: the key is cooling, not dead",
                    r.route,
                    r.fault,
                    super::events::instant(r.since_ms)
                )),
                (None, None) => None,
            };
            KeyView {
                label: k.label.clone(),
                project: k.project.clone(),
                state,
                reason,
                route,
                since_ms: k
                    .disabled
                    .map(|d| d.since_ms)
                    .filter(|t| *t > 0)
                    .or_else(|| since.get(&fingerprint).copied())
                    .unwrap_or(now),
                until_ms,
                failures: k.failures,
                by_admin: k.disabled.is_some_and(|d| d.reason.is_admin()),
                fingerprint,
            }
        })
        .collect();
    let scopes: Vec<ScopeView> = status
        .scopes
        .iter()
        .map(|s| ScopeView {
            scope: s,
            why_off: s.why_off(),
            returns_at_ms: returns_at(s),
            runs_out_today_ms: keyturn_core::plan::runs_out_today_at_todays_pace(s, now),
        })
        .collect();
    let mut out = Map::new();
    out.insert("at_ms".into(), json!(now));
    out.insert(
        "next_pacific_midnight_ms".into(),
        json!(keyturn_core::next_pacific_midnight(now)),
    );
    out.insert("keys".into(), json!(keys));
    out.insert("scopes".into(), json!(scopes));
    out.insert("actions".into(), json!(st.allow_actions));
    st.host.status_extra(&status, &mut out);
    json_answer(StatusCode::OK, &Value::Object(out))
}

pub(super) async fn history(State(st): State<Arc<Console>>) -> Response {
    let snap = match st.host.ledger().snapshot().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    let ring = st.host.ledger().keys();
    let labels: BTreeMap<String, String> = ring
        .iter()
        .map(|(_, e)| (e.fingerprint().to_string(), e.label.clone()))
        .collect();
    let days: Vec<Value> = snap
        .usage
        .iter()
        .map(|u| {
            let fp = u.fingerprint.to_string();
            json!({
                "date": u.date.to_string(),
                "key": labels.get(&fp).cloned().unwrap_or_else(|| fp.clone()),
                "fingerprint": fp,
                "model": u.model,
                "requests": u.requests,
                "served": u.served,
                "refused": u.refused,
                "input_tokens": u.input_tokens,
            })
        })
        .collect();
    json_answer(StatusCode::OK, &json!({ "days": days }))
}

#[derive(serde::Deserialize)]
pub(super) struct After {
    #[serde(default)]
    after: u64,
}

pub(super) async fn events(State(st): State<Arc<Console>>, Query(q): Query<After>) -> Response {
    st.watch_once().await;
    json_answer(
        StatusCode::OK,
        &json!({ "events": st.events.since(q.after) }),
    )
}
