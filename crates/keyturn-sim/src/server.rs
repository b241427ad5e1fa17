//! The HTTP surface: Gemini's endpoints under `/v1beta/` and `/v1/`, and `/admin/…`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::admin::*;
use crate::config::{Faults, KeyState, ProjectState, Route, ServedModel, SimConfig, file_id};
use crate::content::{embedding, json_reply, seed_of, text_reply};
use crate::corpus::{self, Names};
use crate::errors::{self, ApiError};
pub(crate) use crate::faults::{Fault, draw_fault, dropped, malformed};
use crate::state::{KeyInfo, SimState};
use crate::wire::{
    BatchEmbedContentsRequest, CountTokensRequest, EmbedContentRequest, GenerateContentRequest,
    count_tokens, describe_parse_error,
};

/// Default embedding size of gemini-embedding-001.
pub const DEFAULT_EMBEDDING_DIMS: u32 = 3072;

/// A running simulator.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Binds (port 0: a free port) and serves in the background.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = tokio::net::TcpListener::bind((config.bind, config.port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(config));
        let app = router(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                rx.await.ok();
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, with no version segment (like `GEMINI_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its state (stats, clock, faults), for in-process tests and tools.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops serving and waits for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        (&mut self.task).await.ok();
    }

    /// Serves until the process gets Ctrl-C.
    pub async fn wait(mut self) {
        tokio::signal::ctrl_c().await.ok();
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        (&mut self.task).await.ok();
    }
}

/// The router, for embedding the simulator in another server.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/{version}/models", get(list_models))
        .route("/{version}/models/{name}", get(get_model).post(call_model))
        .route(
            "/{version}/openai/chat/completions",
            post(crate::openai::chat_completions),
        )
        .route(
            "/{version}/openai/embeddings",
            post(crate::openai::embeddings),
        )
        .route("/{version}/openai/models", get(crate::openai::list_models))
        .route(
            "/{version}/openai/models/{name}",
            get(crate::openai::get_model),
        )
        .route("/upload/{version}/files", post(crate::files::upload))
        .route("/{version}/files", get(crate::files::list_files))
        .route(
            "/{version}/files/{id}",
            get(crate::files::get_file).delete(crate::files::delete_file),
        )
        .route(
            "/download/{version}/files/{name}",
            get(crate::files::download_file),
        )
        .route(
            "/{version}/cachedContents",
            get(crate::caches::list).post(crate::caches::create),
        )
        .route(
            "/{version}/cachedContents/{id}",
            get(crate::caches::get)
                .patch(crate::caches::patch)
                .delete(crate::caches::delete),
        )
        .route("/{version}/batches", get(crate::batches::list))
        .route(
            "/{version}/batches/{name}",
            get(crate::batches::get)
                .post(crate::batches::cancel)
                .delete(crate::batches::delete),
        )
        .route("/admin/stats", get(admin_stats))
        .route("/admin/reset", post(admin_reset))
        .route("/admin/advance", post(admin_advance))
        .route("/admin/advance-day", post(admin_advance_day))
        .route("/admin/faults", get(admin_get_faults).put(admin_set_faults))
        .route("/admin/limits", put(admin_set_limits))
        .route("/admin/keys", put(admin_set_key))
        .route("/admin/projects", put(admin_set_project))
        .route(
            "/admin/script",
            get(admin_get_script)
                .post(admin_add_script)
                .put(admin_replace_script)
                .delete(admin_clear_script),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
struct ApiQuery {
    key: Option<String>,
    alt: Option<String>,
}

pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
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

fn error_response(st: &SimState, key: Option<&KeyInfo>, e: &ApiError) -> Response {
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
fn authenticate(
    st: &SimState,
    headers: &HeaderMap,
    q: &ApiQuery,
    route: Route,
    ip: Option<std::net::IpAddr>,
) -> Result<KeyInfo, Box<Response>> {
    authenticate_on(Surface::Native, st, headers, q.key.as_deref(), route, ip)
}

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

/// A resource route's admission (files, caches, batches): the API version, then the key,
/// authorised for `route` with no model.
pub(crate) fn admit_resource(
    st: &SimState,
    version: &str,
    headers: &HeaderMap,
    query_key: Option<&str>,
    route: Route,
    peer: &Peer,
) -> Result<KeyInfo, Box<Response>> {
    if !version_ok(version) {
        return Err(Box::new(error_on(Surface::Native, st, None, &not_found())));
    }
    authorize(st, headers, query_key, route, None, peer_ip(peer))
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

/// `http://host:port` as the client reached the simulator (its `Host` header, when it is a
/// plain host and port), for the URLs the simulator hands out: upload URLs and file URIs.
pub(crate) fn base_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
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

/// The `fileData.fileUri`s a request names.
pub(crate) fn file_uris<'a>(
    contents: impl Iterator<Item = &'a crate::wire::Content>,
) -> Vec<String> {
    contents
        .flat_map(|c| c.parts.iter())
        .filter_map(|p| p.file_data.as_ref())
        .filter_map(|f| f.get("fileUri").or_else(|| f.get("file_uri")))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

pub(crate) fn generate_files(r: &GenerateContentRequest) -> Vec<String> {
    file_uris(r.system_instruction.iter().chain(r.contents.iter()))
}

/// `real-32`'s bare 403 for the first Files API file the key's project may not use: one another
/// project created, one whose URI says `other-project`, one expired or never created (Google
/// answers all of them alike). URIs outside the Files API (`gs://`, YouTube) are not checked.
/// Each file named is noted with its owner, for the stats.
pub(crate) fn foreign_file(
    st: &SimState,
    key: &KeyInfo,
    route: Route,
    uris: &[String],
) -> Option<ApiError> {
    uris.iter()
        .filter(|uri| uri.contains("files/"))
        .find_map(|uri| {
            let id = file_id(uri);
            let owner = st.file_owner(id);
            st.note_use(
                route,
                format!("files/{}", crate::resources::shown(id)),
                owner.clone(),
                key,
            );
            let foreign = match owner {
                Some(owner) => owner != key.project,
                None => true,
            } || uri.contains("other-project");
            foreign.then(|| crate::resources::file_denied(id))
        })
}

pub(crate) fn model_json(name: &str, m: &ServedModel) -> Value {
    let methods: &[&str] = if m.embedding {
        &[
            "embedContent",
            "countTextTokens",
            "countTokens",
            "asyncBatchEmbedContent",
        ]
    } else {
        &[
            "generateContent",
            "countTokens",
            "createCachedContent",
            "batchGenerateContent",
        ]
    };
    let mut v = json!({
        "name": format!("models/{name}"),
        "version": "001",
        "displayName": name,
        "description": format!("Simulated {name}"),
        "inputTokenLimit": m.input_token_limit,
        "outputTokenLimit": m.output_token_limit,
        "supportedGenerationMethods": methods,
    });
    if !m.embedding {
        v["temperature"] = json!(1.0);
        v["topP"] = json!(0.95);
        v["topK"] = json!(64);
        v["maxTemperature"] = json!(2.0);
        v["thinking"] = json!(m.thinking);
    }
    v
}

async fn list_models(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    Query(q): Query<ApiQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if !version_ok(&version) {
        return error_response(&st, None, &not_found());
    }
    let ip = peer_ip(&peer);
    let key = match authenticate(&st, &headers, &q, Route::ListModels, ip) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Some(e) = gate(&st, &key, Route::ListModels, None, ip) {
        return error_response(&st, Some(&key), &e);
    }
    let models: Vec<Value> = st
        .served_models()
        .iter()
        .map(|(n, m)| model_json(n, m))
        .collect();
    st.record_status(Some(&key), 200);
    json_response(200, &json!({ "models": models }))
}

async fn get_model(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<ApiQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if !version_ok(&version) {
        return error_response(&st, None, &not_found());
    }
    let ip = peer_ip(&peer);
    let key = match authenticate(&st, &headers, &q, Route::GetModel, ip) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Some(e) = gate(&st, &key, Route::GetModel, Some(&name), ip) {
        return error_response(&st, Some(&key), &e);
    }
    match st.served(&name) {
        Some(m) => {
            st.record_status(Some(&key), 200);
            json_response(200, &model_json(&name, &m))
        }
        None => error_response(
            &st,
            Some(&key),
            &errors::model_not_found(&name, &version, "get"),
        ),
    }
}

enum Call {
    Generate(GenerateContentRequest, bool),
    Count(CountTokensRequest),
    Embed(EmbedContentRequest),
    Batch(BatchEmbedContentsRequest),
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| errors::invalid_payload(&describe_parse_error(&e)))
}

async fn call_model(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<ApiQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !version_ok(&version) {
        return error_response(&st, None, &not_found());
    }
    let Some((model, action)) = name.split_once(':') else {
        return error_response(&st, None, &not_found());
    };
    // The action is read once, here; everything after matches the route.
    let route = match action {
        "generateContent" => Route::GenerateContent,
        "streamGenerateContent" => Route::StreamGenerateContent,
        "countTokens" => Route::CountTokens,
        "embedContent" => Route::EmbedContent,
        "batchEmbedContents" => Route::BatchEmbedContents,
        "batchGenerateContent" => Route::BatchGenerateContent,
        "asyncBatchEmbedContent" => Route::AsyncBatchEmbedContent,
        _ => return error_response(&st, None, &not_found()),
    };
    let ip = peer_ip(&peer);
    let key = match authenticate(&st, &headers, &q, route, ip) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Some(e) = gate(&st, &key, route, Some(model), ip) {
        return error_response(&st, Some(&key), &e);
    }
    let served = st.served(model);
    let embed_action = matches!(
        route,
        Route::EmbedContent | Route::BatchEmbedContents | Route::AsyncBatchEmbedContent
    );
    let generate_action = matches!(
        route,
        Route::GenerateContent | Route::StreamGenerateContent | Route::BatchGenerateContent
    );
    let Some(served) =
        served.filter(|m| (m.embedding && !generate_action) || (!m.embedding && !embed_action))
    else {
        return error_response(
            &st,
            Some(&key),
            &errors::model_not_found(model, &version, action),
        );
    };

    let parsed = match route {
        Route::GenerateContent => parse(&body).map(|r| Call::Generate(r, false)),
        Route::StreamGenerateContent => parse(&body).map(|r| Call::Generate(r, true)),
        Route::CountTokens => parse(&body).map(Call::Count),
        Route::EmbedContent => parse(&body).map(Call::Embed),
        Route::BatchEmbedContents => parse(&body).map(Call::Batch),
        Route::BatchGenerateContent | Route::AsyncBatchEmbedContent => {
            return match crate::batches::create(&st, &key, route, model, &body) {
                Ok(op) => {
                    st.record_status(Some(&key), 200);
                    json_response(200, &op)
                }
                Err(e) => error_response(&st, Some(&key), &e),
            };
        }
        _ => return error_response(&st, None, &not_found()),
    };
    let call = match parsed {
        Ok(c) => c,
        Err(e) => return error_response(&st, Some(&key), &e),
    };

    // countTokens spends no generation quota and gets no faults.
    let call = match call {
        Call::Count(mut req) => {
            // A whole request may name a cached content: its tokens are counted too, and
            // reported apart, as Google's CountTokensResponse does.
            let mut cached = 0;
            if let Some(g) = req.generate_content_request.as_mut() {
                match crate::caches::apply(&st, &key, route, model, g) {
                    Ok(n) => cached = n,
                    Err(e) => return error_response(&st, Some(&key), &e),
                }
            }
            let files = match (&req.contents, &req.generate_content_request) {
                (_, Some(g)) => generate_files(g),
                (Some(cs), None) => file_uris(cs.iter()),
                (None, None) => Vec::new(),
            };
            if let Some(e) = foreign_file(&st, &key, route, &files) {
                return error_response(&st, Some(&key), &e);
            }
            let text = match (&req.contents, &req.generate_content_request) {
                (_, Some(g)) => g.prompt_text(),
                (Some(cs), None) => cs.iter().map(|c| c.text()).collect::<Vec<_>>().join(" "),
                (None, None) => String::new(),
            };
            let n = count_tokens(&text);
            st.record_status(Some(&key), 200);
            let mut v = json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]});
            if cached > 0 {
                v["cachedContentTokenCount"] = json!(cached);
            }
            return json_response(200, &v);
        }
        other => other,
    };

    // A cached content joins the request first: its turns count and are answered.
    let mut cached_tokens = 0;
    let mut call = call;
    if let Call::Generate(r, _) = &mut call {
        match crate::caches::apply(&st, &key, route, model, r) {
            Ok(n) => cached_tokens = n,
            Err(e) => return error_response(&st, Some(&key), &e),
        }
    }

    // Validate before spending quota, as the real service does.
    let (requests, tokens) = match &call {
        Call::Generate(r, _) => {
            if let Some(e) = foreign_file(&st, &key, route, &generate_files(r)) {
                return error_response(&st, Some(&key), &e);
            }
            (1, count_tokens(&r.prompt_text()))
        }
        Call::Embed(r) => {
            if let Err(e) = check_embed(r, model, false) {
                return error_response(&st, Some(&key), &e);
            }
            if let Some(e) = foreign_file(&st, &key, route, &file_uris(std::iter::once(&r.content)))
            {
                return error_response(&st, Some(&key), &e);
            }
            (1, count_tokens(&embed_text(r)))
        }
        Call::Batch(b) => {
            if b.requests.len() > 100 {
                return error_response(&st, Some(&key), &errors::batch_too_large());
            }
            if b.requests.is_empty() {
                return error_response(
                    &st,
                    Some(&key),
                    &errors::invalid_argument(
                        "* BatchEmbedContentsRequest.requests: requests must not be empty\n",
                    ),
                );
            }
            for r in &b.requests {
                if let Err(e) = check_embed(r, model, true) {
                    return error_response(&st, Some(&key), &e);
                }
            }
            let files = file_uris(b.requests.iter().map(|r| &r.content));
            if let Some(e) = foreign_file(&st, &key, route, &files) {
                return error_response(&st, Some(&key), &e);
            }
            let t = b
                .requests
                .iter()
                .map(|r| count_tokens(&embed_text(r)))
                .sum();
            (b.requests.len() as u64, t)
        }
        Call::Count(_) => (0, 0),
    };

    let fault = match spend(&st, &key, model, &served, requests, tokens, ip).await {
        Ok(f) => f,
        Err(e) => return error_response(&st, Some(&key), &e),
    };

    let response_id = format!(
        "sim-{:012x}",
        st.response_seq.fetch_add(1, Ordering::Relaxed)
    );
    let body = match call {
        Call::Generate(req, true) => {
            st.record_status(Some(&key), 200);
            if fault == Fault::Drop {
                return dropped();
            }
            let sse = q.alt.as_deref() == Some("sse");
            return stream_response(&req, model, &served, &response_id, sse, st.faults());
        }
        Call::Generate(req, false) => {
            let mut v = generate(&req, model, &served, &response_id);
            if cached_tokens > 0 {
                v["usageMetadata"]["cachedContentTokenCount"] = json!(cached_tokens);
            }
            v
        }
        Call::Embed(req) => {
            json!({"embedding": {"values": embedding(&embed_text(&req), req.task_type.as_deref().unwrap_or(""), dims(&req))}})
        }
        Call::Batch(b) => {
            let embeddings: Vec<Value> = b
                .requests
                .iter()
                .map(|r| json!({"values": embedding(&embed_text(r), r.task_type.as_deref().unwrap_or(""), dims(r))}))
                .collect();
            json!({ "embeddings": embeddings })
        }
        Call::Count(_) => Value::Null,
    };
    st.record_status(Some(&key), 200);
    match fault {
        Fault::Drop => dropped(),
        Fault::Malformed => malformed(&body),
        _ => json_response(200, &body),
    }
}

/// What a call that spends quota meets once its request is valid, in the real service's order:
/// a model off for the project (with its chosen shape), an injected fault or latency, a zero
/// limit, then the quota windows. `Ok` carries the fault still to apply to the answer (a dropped
/// connection, a cut-off body).
pub(crate) async fn spend(
    st: &SimState,
    key: &KeyInfo,
    model: &str,
    served: &ServedModel,
    requests: u64,
    tokens: u64,
    ip: Option<std::net::IpAddr>,
) -> Result<Fault, ApiError> {
    // A model off for this project answers with its chosen shape; probes still answer for it.
    if let Some(shape) = st.model_off(&key.project, model) {
        let names = Names {
            model: Some(model),
            project: Some(&key.project),
            key_label: Some(&key.label),
            caller_ip: ip,
            file: None,
        };
        return Err(corpus::render(&shape, &names));
    }

    let (fault, delay) = draw_fault(&st.faults());
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let early = match fault {
        Fault::Internal => Some(errors::internal()),
        Fault::Overloaded => Some(errors::overloaded()),
        Fault::Deadline => Some(errors::deadline()),
        Fault::Bare429 => Some(errors::bare_429()),
        _ => None,
    };
    if let Some(e) = early {
        return Err(e);
    }

    let limits = st.limits(&key.project, model);
    if limits.is_zero() {
        return Err(errors::limit_zero(served.embedding, model));
    }
    if let Err(mut r) = st.admit(&key.project, model, requests, tokens) {
        if r.kind == errors::QuotaKind::PerDay
            && let Some(ms) = st.faults().per_day_retry_delay_ms
        {
            r.retry_ms = ms;
        }
        return Err(errors::quota_exceeded(
            r.kind,
            served.embedding,
            model,
            r.limit,
            r.retry_ms,
        ));
    }
    Ok(fault)
}

pub(crate) fn embed_text(r: &EmbedContentRequest) -> String {
    match &r.title {
        Some(t) => format!("{t} {}", r.content.text()),
        None => r.content.text(),
    }
}

pub(crate) fn dims(r: &EmbedContentRequest) -> usize {
    r.output_dimensionality.unwrap_or(DEFAULT_EMBEDDING_DIMS) as usize
}

fn check_embed(r: &EmbedContentRequest, model: &str, in_batch: bool) -> Result<(), ApiError> {
    if in_batch {
        match r.model.as_deref() {
            None => {
                return Err(errors::invalid_argument(
                    "* BatchEmbedContentsRequest.requests[0].model: unexpected model name format\n",
                ));
            }
            Some(m) if m.strip_prefix("models/").unwrap_or(m) != model => {
                return Err(errors::invalid_argument(&format!(
                    "Model {m} in the request does not match the model models/{model} in the URL."
                )));
            }
            Some(_) => {}
        }
    }
    if r.content.text().trim().is_empty() {
        return Err(errors::invalid_argument(
            "* EmbedContentRequest.content: contents must not be empty\n",
        ));
    }
    if let Some(d) = r.output_dimensionality
        && !(1..=DEFAULT_EMBEDDING_DIMS).contains(&d)
    {
        return Err(errors::invalid_argument(&format!(
            "* EmbedContentRequest.output_dimensionality: must be between 1 and {DEFAULT_EMBEDDING_DIMS}, got {d}\n"
        )));
    }
    Ok(())
}

pub(crate) struct Reply {
    pub(crate) text: String,
    pub(crate) finish: &'static str,
    pub(crate) prompt_tokens: u64,
    pub(crate) candidate_tokens: u64,
    pub(crate) thoughts: u64,
}

pub(crate) fn reply_for(
    req: &GenerateContentRequest,
    model: &str,
    served: &ServedModel,
    index: u32,
) -> Reply {
    let prompt = req.prompt_text();
    let seed = seed_of(&[model, &prompt, &index.to_string()]);
    // Answers draw on what the user said, not on the instructions.
    let said = req
        .contents
        .iter()
        .map(|c| c.text())
        .collect::<Vec<_>>()
        .join("\n");
    let gc = req.generation_config.clone().unwrap_or_default();
    let json_mode = gc.response_mime_type.as_deref() == Some("application/json");
    let schema = gc
        .response_schema
        .as_ref()
        .or(gc.response_json_schema.as_ref());
    let (mut text, mut finish) = if json_mode {
        let v = match schema {
            Some(s) => json_reply(&said, seed, s),
            None => json!({ "answer": text_reply(&said, seed, 12) }),
        };
        (serde_json::to_string(&v).unwrap_or_default(), "STOP")
    } else {
        (text_reply(&said, seed, 24), "STOP")
    };
    if !json_mode
        && let Some(max) = gc.max_output_tokens
        && count_tokens(&text) > u64::from(max)
    {
        text = text.chars().take(max as usize * 4).collect();
        finish = "MAX_TOKENS";
    }
    let thoughts = if served.thinking { 8 + seed % 24 } else { 0 };
    Reply {
        prompt_tokens: count_tokens(&prompt),
        candidate_tokens: count_tokens(&text),
        text,
        finish,
        thoughts,
    }
}

fn usage(prompt: u64, candidates: u64, thoughts: u64) -> Value {
    let mut u = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if thoughts > 0 {
        u["thoughtsTokenCount"] = json!(thoughts);
    }
    u
}

/// The `generateContent` answer; batches answer each request with it too.
pub(crate) fn generate(
    req: &GenerateContentRequest,
    model: &str,
    served: &ServedModel,
    id: &str,
) -> Value {
    let n = req
        .generation_config
        .as_ref()
        .and_then(|g| g.candidate_count)
        .unwrap_or(1)
        .clamp(1, 8);
    let replies: Vec<Reply> = (0..n).map(|i| reply_for(req, model, served, i)).collect();
    let candidates: Vec<Value> = replies
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "content": {"parts": [{"text": r.text}], "role": "model"},
                "finishReason": r.finish,
                "index": i,
            })
        })
        .collect();
    let prompt = replies[0].prompt_tokens;
    let cand: u64 = replies.iter().map(|r| r.candidate_tokens).sum();
    let thoughts: u64 = replies.iter().map(|r| r.thoughts).sum();
    json!({
        "candidates": candidates,
        "usageMetadata": usage(prompt, cand, thoughts),
        "modelVersion": model,
        "responseId": id,
    })
}

fn stream_response(
    req: &GenerateContentRequest,
    model: &str,
    served: &ServedModel,
    id: &str,
    sse: bool,
    faults: Faults,
) -> Response {
    let r = reply_for(req, model, served, 0);
    // Split the text into up to three chunks on char boundaries.
    let chars: Vec<char> = r.text.chars().collect();
    let pieces = 3.min(chars.len().max(1));
    let per = chars.len().div_ceil(pieces).max(1);
    let chunks: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    let last = chunks.len().saturating_sub(1);
    let mut sent_tokens = 0;
    let events: Vec<String> = chunks
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            sent_tokens += count_tokens(piece);
            let mut cand =
                json!({"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0});
            let thoughts = if i == last { r.thoughts } else { 0 };
            let tokens = if i == last {
                r.candidate_tokens
            } else {
                sent_tokens
            };
            if i == last {
                cand["finishReason"] = json!(r.finish);
            }
            let chunk = json!({
                "candidates": [cand],
                "usageMetadata": usage(r.prompt_tokens, tokens, thoughts),
                "modelVersion": model,
                "responseId": id,
            });
            let text = serde_json::to_string(&chunk).unwrap_or_default();
            if sse {
                format!("data: {text}\r\n\r\n")
            } else if i == 0 {
                format!("[{text}")
            } else {
                format!(",\r\n{text}")
            }
        })
        .chain((!sse).then(|| "]".to_owned()))
        .collect();
    let delay = Duration::from_millis(faults.stream_chunk_delay_ms);
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<Bytes, Infallible>(Bytes::from(e))
        });
    let mut resp = Response::new(Body::from_stream(stream));
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}
