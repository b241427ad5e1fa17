//! Admission of a request: its API version, its key (where each surface carries it, and the
//! real refusal of a dead one), then what the key's project and the scripts say, and the error
//! envelope of the surface it came in on.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{KeyState, ProjectState, Route};
use crate::corpus::{self, Names};
use crate::errors::{self, ApiError};
use crate::server::json_response;
use crate::state::{KeyInfo, SimState};

/// Query parameters of the model routes.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ApiQuery {
    pub(crate) key: Option<String>,
    pub(crate) alt: Option<String>,
}

/// Which of Gemini's surfaces a request came in on: it decides the error envelope and where
/// the key may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// `models/…`: errors as `{"error": {…}}`, the key in `x-goog-api-key` or `?key=`.
    Native,
    /// `openai/…`: errors as the same object in a one-element list, `[{"error": {…}}]`, as the
    /// real endpoint sends them; the key as `Authorization: Bearer` (or `x-goog-api-key`).
    OpenAi,
}

pub(crate) fn error_response(st: &SimState, key: Option<&KeyInfo>, e: &ApiError) -> Response {
    error_on(Surface::Native, st, key, e)
}

pub(crate) fn error_on(
    surface: Surface,
    st: &SimState,
    key: Option<&KeyInfo>,
    e: &ApiError,
) -> Response {
    st.record_status(key, e.status);
    match surface {
        Surface::Native => json_response(e.status, &e.body),
        Surface::OpenAi => json_response(e.status, &Value::Array(vec![e.body.clone()])),
    }
}

pub(crate) fn version_ok(v: &str) -> bool {
    v == "v1beta" || v == "v1"
}

pub(crate) fn not_found() -> ApiError {
    ApiError {
        status: 404,
        body: json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}),
    }
}

/// The caller's address, when the server was started with it (`Simulator::start` does).
pub(crate) type Peer = Option<axum::Extension<ConnectInfo<SocketAddr>>>;

pub(crate) fn peer_ip(peer: &Peer) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|p| p.0.0.ip())
}

/// The RPC an `API_KEY_SERVICE_BLOCKED` refusal quotes.
fn rpc_name(route: Route) -> &'static str {
    match route {
        Route::GenerateContent => "GenerativeService.GenerateContent",
        Route::StreamGenerateContent => "GenerativeService.StreamGenerateContent",
        Route::CountTokens => "GenerativeService.CountTokens",
        Route::EmbedContent => "GenerativeService.EmbedContent",
        Route::BatchEmbedContents => "GenerativeService.BatchEmbedContents",
        Route::GetModel => "ModelService.GetModel",
        Route::ListModels => "ModelService.ListModels",
        Route::CreateFile => "FileService.CreateFile",
        Route::GetFile => "FileService.GetFile",
        Route::ListFiles => "FileService.ListFiles",
        Route::DeleteFile => "FileService.DeleteFile",
        Route::CreateCachedContent => "CacheService.CreateCachedContent",
        Route::GetCachedContent => "CacheService.GetCachedContent",
        Route::ListCachedContents => "CacheService.ListCachedContents",
        Route::UpdateCachedContent => "CacheService.UpdateCachedContent",
        Route::DeleteCachedContent => "CacheService.DeleteCachedContent",
        Route::BatchGenerateContent => "GenerativeService.BatchGenerateContent",
        Route::AsyncBatchEmbedContent => "GenerativeService.AsyncBatchEmbedContent",
        Route::GetBatch => "BatchService.GetGenerateContentBatch",
        Route::ListBatches => "BatchService.ListGenerateContentBatches",
        Route::CancelBatch => "BatchService.CancelGenerateContentBatch",
        Route::DeleteBatch => "BatchService.DeleteGenerateContentBatch",
    }
}

/// Authenticates: the key from `x-goog-api-key` (on the OpenAI surface, first from
/// `Authorization: Bearer`), else from `?key=` (counted: clients should never put keys in URLs).
/// Dead keys get their real refusal, on every route.
pub(crate) fn authenticate_on(
    surface: Surface,
    st: &SimState,
    headers: &HeaderMap,
    query_key: Option<&str>,
    route: Route,
    ip: Option<std::net::IpAddr>,
) -> Result<KeyInfo, Box<Response>> {
    let bearer = match surface {
        Surface::OpenAi => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim().to_owned()),
        Surface::Native => None,
    };
    let from_header = bearer.or_else(|| {
        headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let (key, via_query) = match (from_header, query_key) {
        (Some(k), _) => (k, false),
        (None, Some(k)) => (k.to_owned(), true),
        (None, None) => {
            return Err(Box::new(error_on(surface, st, None, &errors::no_key())));
        }
    };
    let Some(info) = st.key(&key, via_query, route) else {
        return Err(Box::new(error_on(
            surface,
            st,
            None,
            &errors::key_invalid(),
        )));
    };
    let names = Names {
        project: Some(&info.project),
        key_label: Some(&info.label),
        caller_ip: ip,
        ..Names::default()
    };
    let refusal = match info.state {
        KeyState::Valid => return Ok(info),
        KeyState::Invalid => errors::key_invalid(),
        KeyState::Deleted => corpus::render("real-18", &names),
        KeyState::Expired => errors::key_expired(),
        KeyState::Leaked => errors::key_leaked(),
        KeyState::Suspended => errors::key_suspended(&key),
        KeyState::ServiceDisabled => errors::service_disabled(&info.project),
        KeyState::Blocked => errors::key_blocked(rpc_name(route)),
        KeyState::IpBlocked => corpus::render("real-28", &names),
        KeyState::ReferrerBlocked => corpus::render("real-29", &names),
        KeyState::CredentialsMissing => corpus::render("real-35", &names),
    };
    Err(Box::new(error_on(surface, st, Some(&info), &refusal)))
}

/// A native route's admission: the API version, then the key, authorised for `route` (and
/// `model`, when the route names one) by the scripts and the key's project.
pub(crate) fn admit(
    st: &SimState,
    version: &str,
    headers: &HeaderMap,
    query_key: Option<&str>,
    route: Route,
    model: Option<&str>,
    peer: &Peer,
) -> Result<KeyInfo, Box<Response>> {
    if !version_ok(version) {
        return Err(Box::new(error_on(Surface::Native, st, None, &not_found())));
    }
    authorize(st, headers, query_key, route, model, peer_ip(peer))
}

/// Authenticates and gates a request on the native surface: its key, or the response refusing it.
pub(crate) fn authorize(
    st: &SimState,
    headers: &HeaderMap,
    query_key: Option<&str>,
    route: Route,
    model: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> Result<KeyInfo, Box<Response>> {
    let key = authenticate_on(Surface::Native, st, headers, query_key, route, ip)?;
    if let Some(e) = gate(st, &key, route, model, ip) {
        return Err(Box::new(error_on(Surface::Native, st, Some(&key), &e)));
    }
    Ok(key)
}

/// What the key's project and the scripts say before a route does its own work: a script that
/// matches, else a project state that refuses every route.
pub(crate) fn gate(
    st: &SimState,
    key: &KeyInfo,
    route: Route,
    model: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> Option<ApiError> {
    let names = Names {
        model,
        project: Some(&key.project),
        key_label: Some(&key.label),
        caller_ip: ip,
        file: None,
    };
    if let Some(shape) = st.scripted(key, route, model) {
        return Some(corpus::render(&shape, &names));
    }
    match st.project_state(&key.project) {
        ProjectState::ServiceDisabled => Some(errors::service_disabled(&key.project)),
        ProjectState::BillingDenied => Some(corpus::render("real-30", &names)),
        ProjectState::ApiLimitZero => Some(corpus::render(corpus::API_LIMIT_ZERO, &names)),
        ProjectState::CreditsDepleted if route.spends_quota() => {
            Some(corpus::render("real-16", &names))
        }
        ProjectState::CreditsDepleted | ProjectState::Active => None,
    }
}
