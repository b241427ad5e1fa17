//! The admin API's reads: status, the 30-day history, recent events.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyturn_core::snapshot::ScopeStatus;
use serde::Serialize;
use serde_json::{Value, json};

use super::events::{key_state, observe, returns_at, watch_once};
use super::{json_answer, problem};
use crate::ProxyState;

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

pub(super) async fn status(State(st): State<Arc<ProxyState>>) -> Response {
    let status = match st.live().ledger.status().await {
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
            KeyView {
                label: k.label.clone(),
                project: k.project.clone(),
                state,
                reason: k.disabled.map(|d| d.reason.to_string()),
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
    let max = st.max_in_flight;
    let in_flight = max.saturating_sub(st.in_flight.available_permits());
    json_answer(
        StatusCode::OK,
        &json!({
            "at_ms": now,
            "next_pacific_midnight_ms": keyturn_core::next_pacific_midnight(now),
            "keys": keys,
            "scopes": scopes,
            "requests": {
                "in_flight": in_flight,
                "max_in_flight": max,
                "waiting_for_slot": st.waiting_for_slot(),
                "waiting_for_quota": st.waiting_for_quota(),
            },
            "reload": st.last_reload(),
        }),
    )
}

pub(super) async fn history(State(st): State<Arc<ProxyState>>) -> Response {
    let snap = match st.live().ledger.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    let ring = st.live().ledger.keys();
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

pub(super) async fn events(State(st): State<Arc<ProxyState>>, Query(q): Query<After>) -> Response {
    watch_once(&st).await;
    json_answer(
        StatusCode::OK,
        &json!({ "events": st.admin.events.since(q.after) }),
    )
}
