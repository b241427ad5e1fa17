//! `GET /download/{version}/files/{id}:download` (`?alt=media`): a file's bytes — the results
//! file of a batch that wrote its answers to one — fetched with a key of the project that owns
//! it and streamed to the client as they come, never held whole.
//!
//! The owner is the one recorded when the batch or upload was seen ([`crate::affinity`]); a
//! file the proxy never saw is asked for with one key per project (the call costs no quota),
//! and the first project that has it answers. The bytes are the file's, relayed unchanged. With
//! client tokens, a file another client uploaded (or a batch of another client wrote) gets
//! Gemini's answer for another project's file, and nothing is fetched ([`crate::access`]).

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use keyturn_core::{KeyId, ResourceKind, ResourceName};
use keyturn_gemini::KeyHeader;

use crate::answer::{Answer, Problem, invalid, not_found};
use crate::auth::Client;
use crate::request::slot;
use crate::{ProxyState, Refusal, access, affinity, files};

/// `GET /download/{version}/files/{name}` where `name` is `{id}:download`.
pub(crate) async fn download_file(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<Client>,
    Path((version, name)): Path<(String, String)>,
) -> Response {
    download(&st, &client, &version, &name)
        .await
        .unwrap_or_else(Answer::gemini)
}

async fn download(
    st: &ProxyState,
    client: &Client,
    version: &str,
    name: &str,
) -> Result<Response, Refusal> {
    let Some(id) = name.strip_suffix(":download") else {
        return Err(not_found().into());
    };
    let file = ResourceName::new(ResourceKind::Files, id)
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    let transport = files::transport(st, version)?;
    let url = transport
        .download_url(&format!("files/{id}"))
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    let owner = st
        .resources
        .owner(&file)
        .await
        .map_err(|_| affinity::unavailable())?;
    access::check(st, client, &file, owner.as_ref())?;
    let permit = slot(st).await?;
    // Keys the ledger switched off (an operator's disable, a dead key) take no call here either;
    // a file never seen is asked for with the first usable key of each project.
    let ring = st.live().ledger.keys();
    let off = affinity::switched_off(st).await;
    let usable = |ids: Vec<KeyId>| {
        ids.into_iter()
            .filter(|id| {
                ring.get(*id)
                    .is_some_and(|e| !off.contains(&e.fingerprint()))
            })
            .collect::<Vec<_>>()
    };
    let known = owner
        .as_ref()
        .map(|o| o.project.as_str())
        .filter(|p| affinity::key_of(st, p).is_some());
    let keys: Vec<KeyId> = match known {
        Some(p) => usable(affinity::keys_for(st, Some(p))),
        None => affinity::one_key_per_project(st)
            .into_iter()
            .filter_map(|(_, p)| usable(affinity::keys_for(st, Some(&p))).into_iter().next())
            .collect(),
    };
    let mut last: Option<Refusal> = None;
    for id in keys {
        let Some(entry) = ring.get(id) else { continue };
        let resp = match transport
            .send_as(
                reqwest::Method::GET,
                KeyHeader::GoogApiKey,
                &entry.key,
                &url,
                HeaderMap::new(),
                None,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last = Some(affinity::send_failed(&e));
                continue;
            }
        };
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            // Another project's key, or a file this project does not have: the next project
            // may. The answer is relayed when no project has it.
            let body =
                keyturn_gemini::body::read_error(resp, keyturn_gemini::body::MAX_ERROR_BYTES).await;
            last = Some(Answer::Relay {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                body: st.live().scrubber.redact(&String::from_utf8_lossy(&body)),
            });
            continue;
        }
        let mut out = Response::builder().status(StatusCode::OK);
        for h in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
            if let Some(v) = resp.headers().get(h.as_str())
                && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
            {
                out = out.header(h, v);
            }
        }
        // The in-flight permit travels with the body: released when the stream ends or the
        // client goes away.
        let bytes = resp.bytes_stream().map(move |chunk| {
            let _held = &permit;
            chunk.map_err(std::io::Error::other)
        });
        return out.body(Body::from_stream(bytes)).map_err(|_| {
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "keyturn proxy: the file's answer had headers that cannot be relayed",
            )
            .into()
        });
    }
    Err(last.unwrap_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "keyturn proxy: no key in the pool to fetch the file with",
        )
        .into()
    }))
}
