//! The simulator's `/admin/*` routes: stats, reset, its clock, faults, limits, key and project
//! states, and scripted answers (what tests and scenarios steer it with).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Faults, KeyState, Limits, ProjectState, ScriptRule};
use crate::server::json_response;
use crate::state::SimState;

pub(crate) async fn admin_stats(State(st): State<Arc<SimState>>) -> Response {
    json_response(200, &st.stats())
}

pub(crate) async fn admin_reset(State(st): State<Arc<SimState>>) -> Response {
    st.reset();
    json_response(200, &json!({"reset": true}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: u64,
}

pub(crate) async fn admin_advance(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) => {
            st.clock.advance(a.seconds as i64 * 1000);
            json_response(200, &json!({"now_ms": st.clock.now_ms()}))
        }
        Err(e) => json_response(400, &json!({"error": e.to_string()})),
    }
}

pub(crate) async fn admin_advance_day(State(st): State<Arc<SimState>>) -> Response {
    let to = st.advance_day();
    json_response(200, &json!({"now_ms": to}))
}

pub(crate) async fn admin_get_faults(State(st): State<Arc<SimState>>) -> Response {
    json_response(200, &serde_json::to_value(st.faults()).unwrap_or_default())
}

pub(crate) async fn admin_set_faults(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            f.validate().map_err(|e| e.to_string())?;
            Ok(f)
        }) {
        Ok(f) => {
            st.set_faults(f);
            json_response(200, &serde_json::to_value(f).unwrap_or_default())
        }
        Err(e) => json_response(400, &json!({"error": e})),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetLimits {
    model: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    rpm: Option<u64>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    rpd: Option<u64>,
}

pub(crate) async fn admin_set_limits(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<SetLimits>(&body) {
        Ok(s) => {
            let limits = Limits {
                rpm: s.rpm,
                tpm: s.tpm,
                rpd: s.rpd,
            };
            st.set_limits(s.project.as_deref(), &s.model, limits);
            json_response(200, &json!({"ok": true}))
        }
        Err(e) => json_response(400, &json!({"error": e.to_string()})),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetKey {
    label: String,
    state: KeyState,
}

pub(crate) async fn admin_set_key(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<SetKey>(&body) {
        Ok(s) if st.set_key_state(&s.label, s.state) => json_response(200, &json!({"ok": true})),
        Ok(s) => json_response(
            404,
            &json!({"error": format!("no key labelled {}", s.label)}),
        ),
        Err(e) => json_response(400, &json!({"error": e.to_string()})),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetProject {
    project: String,
    #[serde(default)]
    state: Option<ProjectState>,
    #[serde(default)]
    models_off: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    files: Option<Vec<String>>,
    #[serde(default)]
    tier: Option<crate::config::Tier>,
}

pub(crate) async fn admin_set_project(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<SetProject>(&body)
        .map_err(|e| e.to_string())
        .and_then(|s| {
            st.set_project(&s.project, s.state, s.models_off, s.files, s.tier)
                .map_err(|e| e.to_string())
        }) {
        Ok(()) => json_response(200, &json!({"ok": true})),
        Err(e) => json_response(400, &json!({"error": e})),
    }
}

/// One script, or a list of them.
fn parse_scripts(body: &[u8]) -> Result<Vec<ScriptRule>, String> {
    // Each form is tried on its own so a bad field is named, not lost in "no variant matched".
    match serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())? {
        Value::Array(_) => serde_json::from_slice::<Vec<ScriptRule>>(body),
        _ => serde_json::from_slice::<ScriptRule>(body).map(|r| vec![r]),
    }
    .map_err(|e| e.to_string())
}

pub(crate) async fn set_scripts(st: &SimState, body: &[u8], replace: bool) -> Response {
    match parse_scripts(body)
        .and_then(|rules| st.add_scripts(rules, replace).map_err(|e| e.to_string()))
    {
        Ok(()) => json_response(200, &st.scripts()),
        Err(e) => json_response(400, &json!({"error": e})),
    }
}

pub(crate) async fn admin_get_script(State(st): State<Arc<SimState>>) -> Response {
    json_response(200, &st.scripts())
}

pub(crate) async fn admin_add_script(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    set_scripts(&st, &body, false).await
}

pub(crate) async fn admin_replace_script(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    set_scripts(&st, &body, true).await
}

pub(crate) async fn admin_clear_script(State(st): State<Arc<SimState>>) -> Response {
    set_scripts(&st, b"[]", true).await
}
