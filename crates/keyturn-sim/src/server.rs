//! The HTTP surface: the running [`Simulator`] and its [`router`] (Gemini's endpoints under
//! `/v1beta/` and `/v1/`, and `/admin/…`). Admission is [`crate::admission`]'s, the model routes
//! [`crate::models`]', the project-owned resources [`crate::files`], [`crate::caches`] and
//! [`crate::batches`]' over [`crate::owned`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::admin::*;
use crate::config::SimConfig;
use crate::errors::ApiError;
use crate::models::{call_model, get_model, list_models};
use crate::owned;
use crate::resources::{Batch, CachedContent, StoredFile};
use crate::state::SimState;

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
        .route(
            "/{version}/models/{name}",
            get(get_model)
                .post(call_model)
                .layer(DefaultBodyLimit::max(crate::errors::MAX_REQUEST_BYTES)),
        )
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
        .route("/{version}/files", get(owned::list::<StoredFile>))
        .route(
            "/{version}/files/{id}",
            get(owned::get::<StoredFile>).delete(owned::delete::<StoredFile>),
        )
        .route(
            "/download/{version}/files/{name}",
            get(crate::files::download_file),
        )
        .route(
            "/{version}/cachedContents",
            get(owned::list::<CachedContent>).post(crate::caches::create),
        )
        .route(
            "/{version}/cachedContents/{id}",
            get(owned::get::<CachedContent>)
                .patch(crate::caches::patch)
                .delete(owned::delete::<CachedContent>),
        )
        .route("/{version}/batches", get(owned::list::<Batch>))
        .route(
            "/{version}/batches/{name}",
            get(owned::get::<Batch>)
                .post(crate::batches::cancel)
                .delete(owned::delete::<Batch>),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}
