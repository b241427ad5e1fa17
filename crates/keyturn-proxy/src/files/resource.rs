//! Calls about one resource (`GET`/`DELETE files/{id}`, and through `crate::owned` the cached
//! contents and batches), made with its owner's keys, and lists merged over every project that
//! owns one, behind a page token of the proxy's own. With client tokens, a resource of another
//! client is refused before any call and left out of lists ([`crate::access`]).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use keyturn_core::{KeyId, ResourceKind, ResourceName};
use serde_json::{Value, json};

use super::{bad_gateway, learn, learn_results_file, transport};
use crate::access;
use crate::affinity::{self};
use crate::answer::{Answer, invalid};
use crate::auth::Client;
use crate::request::slot;
use crate::{ProxyState, Refusal};

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "pageSize")]
    page_size: Option<u32>,
    #[serde(rename = "pageToken")]
    page_token: Option<String>,
}

/// `GET /{version}/files/{id}`.
pub(crate) async fn get_file(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    about_file(&st, &client, &version, &id, reqwest::Method::GET)
        .await
        .unwrap_or_else(Answer::gemini)
}

/// `DELETE /{version}/files/{id}`.
pub(crate) async fn delete_file(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    about_file(&st, &client, &version, &id, reqwest::Method::DELETE)
        .await
        .unwrap_or_else(Answer::gemini)
}

async fn about_file(
    st: &ProxyState,
    client: &Client,
    version: &str,
    id: &str,
    method: reqwest::Method,
) -> Result<Response, Refusal> {
    let name = ResourceName::new(ResourceKind::Files, id)
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    let what = About {
        method,
        action: None,
        query: None,
        body: None,
    };
    about(st, client, version, &name, what).await
}

/// What is done to one resource: the method, an action (`cancel`), a query (`updateMask=ttl`,
/// already validated), a JSON body.
pub(crate) struct About {
    pub(crate) method: reqwest::Method,
    pub(crate) action: Option<&'static str>,
    pub(crate) query: Option<String>,
    pub(crate) body: Option<Bytes>,
}

/// A call about one resource, with its owner's keys (or, never seen, one key per project until
/// one has it: these calls cost no quota); what the answer says about the resource is learned
/// (its owner and expiry; a finished batch's results file), and a deleted one forgotten. A
/// resource of another client gets Gemini's answer for another project's, and no call is made.
pub(crate) async fn about(
    st: &ProxyState,
    client: &Client,
    version: &str,
    name: &ResourceName,
    what: About,
) -> Result<Response, Refusal> {
    let About {
        method,
        action,
        query,
        body,
    } = what;
    let transport = transport(st, version)?.clone();
    let path = match action {
        Some(a) => format!("{name}:{a}"),
        None => name.to_string(),
    };
    let mut url = transport
        .resource_url(&path)
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    if let Some(q) = query {
        url = format!("{url}?{q}");
    }
    let mut headers = HeaderMap::new();
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let owner = st
        .resources
        .owner(name)
        .await
        .map_err(|_| affinity::unavailable())?;
    access::check(st, client, name, owner.as_ref())?;
    let _permit = slot(st).await?;
    let known = owner
        .as_ref()
        .map(|o| o.project.as_str())
        .filter(|p| affinity::key_of(st, p).is_some());
    let keys: Vec<Vec<KeyId>> = match known {
        Some(p) => vec![affinity::keys_for(st, Some(p))],
        // Each project's keys, tried in turn only while refused or unreachable (or switched off).
        None => affinity::one_key_per_project(st)
            .into_iter()
            .map(|(_, p)| affinity::keys_for(st, Some(&p)))
            .collect(),
    };
    let mut last = None;
    for keys in keys {
        let sent = affinity::send_with(
            st,
            &transport,
            &keys,
            method.clone(),
            &url,
            &headers,
            body.clone(),
        )
        .await?;
        let done = sent.status.is_success();
        last = Some(sent);
        if done {
            break;
        }
    }
    let sent = last.ok_or_else(affinity::unavailable)?;
    if sent.status.is_success() {
        if method == reqwest::Method::DELETE {
            st.resources
                .forget(name)
                .await
                .map_err(|_| affinity::unavailable())?;
        } else if let Ok(v) = serde_json::from_slice::<Value>(&sent.body)
            && v.get("name").and_then(Value::as_str) == Some(name.to_string().as_str())
        {
            // Learned from an answer: a recorded client stays; one never seen has none.
            learn(st, sent.key, None, &v).await?;
            if name.kind() == ResourceKind::Batches
                && let Some(batch) = st
                    .resources
                    .owner(name)
                    .await
                    .map_err(|_| affinity::unavailable())?
            {
                learn_results_file(st, sent.key, &batch, &v).await?;
            }
        }
    }
    Ok(affinity::relay(st, sent.status, &sent.body))
}

/// `GET /{version}/files`.
pub(crate) async fn list_files(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path(version): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    list(&st, &client, &version, ResourceKind::Files, q)
        .await
        .unwrap_or_else(Answer::gemini)
}

/// Longest upstream page token the proxy wraps.
const MAX_UPSTREAM_TOKEN: usize = 2048;

fn page_token(project: usize, upstream: &str) -> String {
    let hex: String = upstream.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{project}.{hex}")
}

fn parse_page_token(token: &str) -> Option<(usize, String)> {
    let (p, hex) = token.split_once('.')?;
    if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if hex.len() % 2 != 0 || hex.len() > MAX_UPSTREAM_TOKEN * 2 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((p.parse().ok()?, String::from_utf8(bytes).ok()?))
}

/// A merged list: one project's page per client page, the projects in order; with client
/// tokens, each page less the resources other clients created.
pub(crate) async fn list(
    st: &ProxyState,
    client: &Client,
    version: &str,
    kind: ResourceKind,
    q: ListQuery,
) -> Result<Response, Refusal> {
    let transport = transport(st, version)?.clone();
    let bad_token = || Refusal::from(invalid("pageToken is not one this proxy gave out"));
    let (index, upstream_token) = match q.page_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => parse_page_token(t).ok_or_else(bad_token)?,
        None => (0, String::new()),
    };
    let projects: Vec<String> = st
        .resources
        .projects(kind)
        .await
        .map_err(|_| affinity::unavailable())?
        .into_iter()
        .filter(|p| affinity::key_of(st, p).is_some())
        .collect();
    let Some(project) = projects.get(index) else {
        if index == 0 {
            return Ok(affinity::relay(
                st,
                StatusCode::OK,
                &Bytes::from_static(b"{}"),
            ));
        }
        return Err(bad_token());
    };
    let token = (!upstream_token.is_empty()).then_some(upstream_token.as_str());
    let url = transport
        .list_url(
            kind.collection(),
            q.page_size.map(|n| n.clamp(1, 1000)),
            token,
        )
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    let _permit = slot(st).await?;
    let keys = affinity::keys_for(st, Some(project));
    let sent = affinity::send_with(
        st,
        &transport,
        &keys,
        reqwest::Method::GET,
        &url,
        &HeaderMap::new(),
        None,
    )
    .await?;
    if !sent.status.is_success() {
        return Ok(affinity::relay(st, sent.status, &sent.body));
    }
    let mut page: Value = serde_json::from_slice(&sent.body)
        .map_err(|_| bad_gateway("a list answer was not JSON"))?;
    if access::isolated(st) {
        keep_only_usable(st, client, kind, &mut page).await?;
    }
    let next = match page
        .get("nextPageToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        Some(t) if t.len() <= MAX_UPSTREAM_TOKEN => Some(page_token(index, t)),
        Some(_) => return Err(bad_gateway("an upstream page token was too long")),
        None if index + 1 < projects.len() => Some(page_token(index + 1, "")),
        None => None,
    };
    if let Some(o) = page.as_object_mut() {
        o.remove("nextPageToken");
        if let Some(t) = next {
            o.insert("nextPageToken".into(), json!(t));
        }
    }
    Ok(affinity::relay(
        st,
        StatusCode::OK,
        &Bytes::from(page.to_string()),
    ))
}

/// The list's field for each kind (`operations` for batches, as Google's long-running
/// operations are listed).
fn list_field(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Files => "files",
        ResourceKind::CachedContents => "cachedContents",
        ResourceKind::Batches => "operations",
    }
}

/// Drops from a list page what `client` may not use: other clients' resources, and anything
/// whose `name` is no resource name (it cannot be checked, so it is not shown).
async fn keep_only_usable(
    st: &ProxyState,
    client: &Client,
    kind: ResourceKind,
    page: &mut Value,
) -> Result<(), Refusal> {
    let Some(items) = page.get_mut(list_field(kind)).and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let names: Vec<Option<ResourceName>> = items
        .iter()
        .map(|i| {
            i.get("name")
                .and_then(Value::as_str)
                .and_then(|n| ResourceName::parse(n).ok())
                .filter(|n| n.kind() == kind)
        })
        .collect();
    let known: Vec<ResourceName> = names.iter().flatten().cloned().collect();
    let mut owners = st
        .resources
        .owners(&known)
        .await
        .map_err(|_| affinity::unavailable())?
        .into_iter();
    let keep: Vec<bool> = names
        .iter()
        .map(|n| match n {
            Some(_) => owners
                .next()
                .flatten()
                .is_none_or(|o| access::may_use(st, client, &o)),
            None => false,
        })
        .collect();
    let mut keep = keep.into_iter();
    items.retain(|_| keep.next().unwrap_or(false));
    Ok(())
}

/// `models/{model}:countTokens` for a body naming a resource of `project`: sent with that
/// project's keys (no quota is spent counting).
pub(crate) async fn count_tokens_of(
    st: &ProxyState,
    version: &str,
    model: &str,
    project: &str,
    body: &Value,
) -> Result<Response, Response> {
    let fail = |r: Refusal| r.gemini();
    let transport = transport(st, version).map_err(fail)?;
    let url = transport
        .model_url(model, "countTokens")
        .map_err(|e| fail(invalid(&e.to_string()).into()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let keys = affinity::keys_for(st, Some(project));
    let sent = affinity::send_with(
        st,
        transport,
        &keys,
        reqwest::Method::POST,
        &url,
        &headers,
        Some(Bytes::from(body.to_string())),
    )
    .await
    .map_err(fail)?;
    Ok(affinity::relay(st, sent.status, &sent.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_hostile_ones_are_refused() {
        let t = page_token(2, "abc&x=1/..");
        assert_eq!(parse_page_token(&t), Some((2, "abc&x=1/..".to_owned())));
        assert_eq!(parse_page_token("0."), Some((0, String::new())));
        for bad in [
            "",
            ".",
            "x.00",
            "1.0",
            "1.zz",
            "-1.00",
            "99999999.00",
            "1.ff",
        ] {
            assert_eq!(parse_page_token(bad), None, "{bad}");
        }
    }
}
