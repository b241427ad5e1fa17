//! Cached contents and batches through the proxy, each pinned to the project that created it.
//!
//! - `POST cachedContents`: metered on the model the body names (creating a cache spends its
//!   input tokens), through the rotation, so it lands on a project with room for that model —
//!   or, when its contents name a file, on the file's project; the owner is recorded until the
//!   cache's `expireTime`.
//! - `GET`, `PATCH` (`updateMask=ttl` / `expireTime`: the new expiry is recorded), `DELETE
//!   cachedContents/{id}`; `GET batches/{id}`, `POST batches/{id}:cancel`, `DELETE
//!   batches/{id}`: with the owner's keys (see [`crate::files::about`]).
//! - `GET cachedContents`, `GET batches`: merged over the projects that own one, as files are.
//! - With client tokens, each is the creating client's alone ([`crate::access`]).
//! - Batches are created on `models/{m}:batchGenerateContent` and `:asyncBatchEmbedContent`
//!   (the native route), which records the owner from the operation's `name`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use keyturn_core::{Demand, ResourceKind, ResourceName};
use serde_json::Value;

use crate::affinity;
use crate::answer::{Answer, failure, invalid, not_found};
use crate::auth::Client;
use crate::files::{self, About, ListQuery};
use crate::native::confirm_model;
use crate::request::{estimate, json_values, max_json_values, read_body, slot};
use crate::{ProxyState, Refusal};

fn name_of(kind: ResourceKind, id: &str) -> Result<ResourceName, Refusal> {
    ResourceName::new(kind, id).map_err(|e| invalid(&e.to_string()).into())
}

/// `POST /{version}/cachedContents`.
pub(crate) async fn create_cache(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path(version): Path<String>,
    body: Body,
) -> Response {
    create(&st, &client, &version, body)
        .await
        .unwrap_or_else(Answer::gemini)
}

async fn create(
    st: &ProxyState,
    client: &Client,
    version: &str,
    body: Body,
) -> Result<Response, Refusal> {
    let caller = st.caller(version).ok_or_else(not_found)?;
    let raw = read_body(st, body).await?;
    let most = max_json_values(st.max_body_bytes);
    if json_values(&raw) > most {
        return Err(invalid(&format!(
            "the request body holds more than {most} JSON values"
        ))
        .into());
    }
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|e| invalid(&format!("Invalid JSON payload received. {e}")))?;
    let model = v.get("model").and_then(Value::as_str).ok_or_else(|| {
        invalid("a cached content names its model (\"model\": \"models/gemini-2.5-flash\")")
    })?;
    let model = keyturn_gemini::model_id(model)
        .map_err(|e| invalid(&e.to_string()))?
        .to_owned();
    let demand = affinity::pin(st, client, &v, Demand::tokens(estimate(&v)), false).await?;
    let _permit = slot(st).await?;
    confirm_model(st, &caller, version, &model).await?;
    let r = caller
        .call_resource(&model, "cachedContents", demand, v)
        .await
        .map_err(|e| failure(st, &e))?;
    if let Some(key) = affinity::key_by_label(st, &r.key) {
        files::learn(st, key, client.0.as_deref(), &r.body).await?;
    }
    Ok(st.relay(r.raw))
}

/// `GET /{version}/cachedContents`.
pub(crate) async fn list_caches(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path(version): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    files::list(&st, &client, &version, ResourceKind::CachedContents, q)
        .await
        .unwrap_or_else(Answer::gemini)
}

/// `GET /{version}/batches`.
pub(crate) async fn list_batches(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path(version): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    files::list(&st, &client, &version, ResourceKind::Batches, q)
        .await
        .unwrap_or_else(Answer::gemini)
}

async fn on(
    st: &ProxyState,
    client: &Client,
    version: &str,
    kind: ResourceKind,
    id: &str,
    what: About,
) -> Response {
    let run = async {
        let name = name_of(kind, id)?;
        files::about(st, client, version, &name, what).await
    };
    run.await.unwrap_or_else(Answer::gemini)
}

fn plain(method: reqwest::Method) -> About {
    About {
        method,
        action: None,
        query: None,
        body: None,
    }
}

/// `GET /{version}/cachedContents/{id}`.
pub(crate) async fn get_cache(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    let what = plain(reqwest::Method::GET);
    on(
        &st,
        &client,
        &version,
        ResourceKind::CachedContents,
        &id,
        what,
    )
    .await
}

/// `DELETE /{version}/cachedContents/{id}`.
pub(crate) async fn delete_cache(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    let what = plain(reqwest::Method::DELETE);
    on(
        &st,
        &client,
        &version,
        ResourceKind::CachedContents,
        &id,
        what,
    )
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct PatchQuery {
    #[serde(rename = "updateMask", alias = "update_mask")]
    update_mask: Option<String>,
}

/// `PATCH /{version}/cachedContents/{id}?updateMask=ttl`: the new expiry is recorded.
pub(crate) async fn patch_cache(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
    Query(q): Query<PatchQuery>,
    body: Body,
) -> Response {
    let run = async {
        // A field mask is field names: nothing else goes into the upstream query.
        let query = match q.update_mask.as_deref() {
            Some(m)
                if !m.is_empty()
                    && m.len() <= 256
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b'.')) =>
            {
                Some(format!("updateMask={m}"))
            }
            Some(_) => return Err(invalid("updateMask is a list of field names").into()),
            None => None,
        };
        let raw = read_body(&st, body).await?;
        serde_json::from_slice::<Value>(&raw)
            .map_err(|e| invalid(&format!("Invalid JSON payload received. {e}")))?;
        let name = name_of(ResourceKind::CachedContents, &id)?;
        let what = About {
            method: reqwest::Method::PATCH,
            action: None,
            query,
            body: Some(raw),
        };
        files::about(&st, &client, &version, &name, what).await
    };
    run.await.unwrap_or_else(Answer::gemini)
}

/// `GET /{version}/batches/{id}`.
pub(crate) async fn get_batch(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    let what = plain(reqwest::Method::GET);
    on(&st, &client, &version, ResourceKind::Batches, &id, what).await
}

/// `DELETE /{version}/batches/{id}`.
pub(crate) async fn delete_batch(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    let what = plain(reqwest::Method::DELETE);
    on(&st, &client, &version, ResourceKind::Batches, &id, what).await
}

/// `POST /{version}/batches/{id}:cancel`.
pub(crate) async fn cancel_batch(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, name)): Path<(String, String)>,
) -> Response {
    let Some(id) = name.strip_suffix(":cancel") else {
        return Answer::from(not_found()).gemini();
    };
    let what = About {
        method: reqwest::Method::POST,
        action: Some("cancel"),
        query: None,
        body: Some(axum::body::Bytes::from_static(b"{}")),
    };
    on(&st, &client, &version, ResourceKind::Batches, id, what).await
}
