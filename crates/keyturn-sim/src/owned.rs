//! What the project-owned resources share: files, cached contents and batches are each
//! [`Owned`], and one lookup ([`owned`]) and one `get` / `delete` / `list` route serve all three.
//!
//! A lookup brings the store up to date (expired files and caches go; a finished batch gets its
//! results), notes which key asked for which resource (what `/admin/stats` shows), and answers
//! the resource only to a key of the project that owns it. Another project's resource, an expired
//! one and one that never was get the same refusal, as Google answers them alike.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::{Peer, admit, error_response, not_found};
use crate::config::Route;
use crate::errors::{self, ApiError};
use crate::resources::{Resources, shown};
use crate::server::json_response;
use crate::state::{KeyInfo, SimState};

/// A resource that belongs to the project of the key that created it.
pub(crate) trait Owned: Clone + Send + Sync + 'static {
    /// The collection in its name (`files` of `files/abc`).
    const COLLECTION: &'static str;
    /// The field a list answers with (`files`, `cachedContents`, `operations`).
    const LIST_FIELD: &'static str;
    /// A list's `pageSize` when none is given, and the most it may be.
    const PAGE_SIZE: (usize, usize);
    /// The routes of `GET {collection}/{id}`, `DELETE {collection}/{id}` and `GET {collection}`.
    const GET: Route;
    /// See [`Owned::GET`].
    const DELETE: Route;
    /// See [`Owned::GET`].
    const LIST: Route;

    /// Every resource of this kind, by id.
    fn all(res: &Resources) -> &HashMap<String, Self>;
    /// The same, to change.
    fn all_mut(res: &mut Resources) -> &mut HashMap<String, Self>;
    /// Its id.
    fn id(&self) -> &str;
    /// The project that owns it.
    fn project(&self) -> &str;
    /// When it was created (lists are newest first).
    fn create_ms(&self) -> i64;
    /// It on the wire, at `now`.
    fn json(&self, now: i64) -> Value;
    /// The refusal for one the key's project may not see (another project's, expired, unknown).
    fn denied(id: &str) -> ApiError;

    /// Brings one up to the present before it is read (a finished batch computes its results).
    fn settle(_st: &SimState, _id: &str) {}

    /// Whether a path segment names one on the `get` and `delete` routes (a batch's name with a
    /// `:action` is another route's).
    fn addressable(_name: &str) -> bool {
        true
    }
}

/// The [`Owned`] methods a resource with `id`, `project` and `create_ms` fields, kept in
/// `Resources::$map`, answers the same way.
macro_rules! owned_fields {
    ($map:ident) => {
        fn all(res: &$crate::resources::Resources) -> &std::collections::HashMap<String, Self> {
            &res.$map
        }
        fn all_mut(
            res: &mut $crate::resources::Resources,
        ) -> &mut std::collections::HashMap<String, Self> {
            &mut res.$map
        }
        fn id(&self) -> &str {
            &self.id
        }
        fn project(&self) -> &str {
            &self.project
        }
        fn create_ms(&self) -> i64 {
            self.create_ms
        }
    };
}
pub(crate) use owned_fields;

/// The resource `id` if the key's project owns it, else [`Owned::denied`]; the request is noted
/// either way, with the owner when there is one.
pub(crate) fn owned<R: Owned>(
    st: &SimState,
    key: &KeyInfo,
    route: Route,
    id: &str,
) -> Result<R, ApiError> {
    R::settle(st, id);
    let now = st.clock.now_ms();
    let found = {
        let mut res = st.resources.lock();
        res.purge(now);
        R::all(&res).get(id).cloned()
    };
    st.note_use(
        route,
        format!("{}/{}", R::COLLECTION, shown(id)),
        found.as_ref().map(|r| r.project().to_owned()),
        key,
    );
    match found {
        Some(r) if r.project() == key.project => Ok(r),
        _ => Err(R::denied(id)),
    }
}

/// Query parameters of the resource routes (others are ignored, as before: each kind read its
/// own and these three are all `get`, `delete` and `list` use).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResourceQuery {
    pub(crate) key: Option<String>,
    #[serde(rename = "pageSize")]
    page_size: Option<String>,
    #[serde(rename = "pageToken")]
    page_token: Option<String>,
}

/// `GET {collection}/{id}`.
pub(crate) async fn get<R: Owned>(
    State(st): State<Arc<SimState>>,
    Path((version, id)): Path<(String, String)>,
    Query(q): Query<ResourceQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    match one::<R>(&st, &version, &id, &q, &peer, &headers, R::GET) {
        Ok((key, r)) => {
            st.record_status(Some(&key), 200);
            json_response(200, &r.json(st.clock.now_ms()))
        }
        Err(r) => *r,
    }
}

/// `DELETE {collection}/{id}`: answers `{}`.
pub(crate) async fn delete<R: Owned>(
    State(st): State<Arc<SimState>>,
    Path((version, id)): Path<(String, String)>,
    Query(q): Query<ResourceQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    match one::<R>(&st, &version, &id, &q, &peer, &headers, R::DELETE) {
        Ok((key, r)) => {
            R::all_mut(&mut st.resources.lock()).remove(r.id());
            st.record_status(Some(&key), 200);
            json_response(200, &json!({}))
        }
        Err(r) => *r,
    }
}

/// A route about one resource: the name, the admission, then [`owned`]; the key and the
/// resource, or the response refusing them.
fn one<R: Owned>(
    st: &SimState,
    version: &str,
    id: &str,
    q: &ResourceQuery,
    peer: &Peer,
    headers: &HeaderMap,
    route: Route,
) -> Result<(KeyInfo, R), Box<Response>> {
    if !R::addressable(id) {
        return Err(Box::new(error_response(st, None, &not_found())));
    }
    admitted(st, version, id, q, peer, headers, route)
}

/// [`one`] for a route that acts on a resource, `{id}{action}` (`:download`, `:cancel`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn acted_on<R: Owned>(
    st: &SimState,
    version: &str,
    name: &str,
    action: &str,
    q: &ResourceQuery,
    peer: &Peer,
    headers: &HeaderMap,
    route: Route,
) -> Result<(KeyInfo, R), Box<Response>> {
    let Some(id) = name.strip_suffix(action) else {
        return Err(Box::new(error_response(st, None, &not_found())));
    };
    admitted(st, version, id, q, peer, headers, route)
}

fn admitted<R: Owned>(
    st: &SimState,
    version: &str,
    id: &str,
    q: &ResourceQuery,
    peer: &Peer,
    headers: &HeaderMap,
    route: Route,
) -> Result<(KeyInfo, R), Box<Response>> {
    let key = admit(st, version, headers, q.key.as_deref(), route, None, peer)?;
    match owned::<R>(st, &key, route, id) {
        Ok(r) => Ok((key, r)),
        Err(e) => Err(Box::new(error_response(st, Some(&key), &e))),
    }
}

/// `GET {collection}`: the key's project's, newest first, a page at a time.
pub(crate) async fn list<R: Owned>(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    Query(q): Query<ResourceQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let key = match admit(
        &st,
        &version,
        &headers,
        q.key.as_deref(),
        R::LIST,
        None,
        &peer,
    ) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let mut ids: Vec<(i64, String)> = {
        let mut res = st.resources.lock();
        res.purge(st.clock.now_ms());
        R::all(&res)
            .values()
            .filter(|r| r.project() == key.project)
            .map(|r| (r.create_ms(), r.id().to_owned()))
            .collect()
    };
    // Newest first, as Google lists them.
    ids.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, id) in &ids {
        R::settle(&st, id);
    }
    let now = st.clock.now_ms();
    let items: Vec<Value> = {
        let res = st.resources.lock();
        ids.iter()
            .filter_map(|(_, id)| R::all(&res).get(id).map(|r| r.json(now)))
            .collect()
    };
    let (default, max) = R::PAGE_SIZE;
    match page(
        &items,
        q.page_size.as_deref(),
        q.page_token.as_deref(),
        default,
        max,
    ) {
        Ok((items, next)) => {
            st.record_status(Some(&key), 200);
            let mut v = json!({});
            if !items.is_empty() {
                v[R::LIST_FIELD] = Value::Array(items);
            }
            if let Some(t) = next {
                v["nextPageToken"] = json!(t);
            }
            json_response(200, &v)
        }
        Err(e) => error_response(&st, Some(&key), &e),
    }
}

/// A page of a list: `pageSize` (default `default`, at most `max`) and `pageToken` (the offset,
/// as this simulator writes it).
pub(crate) fn page<T: Clone>(
    items: &[T],
    page_size: Option<&str>,
    page_token: Option<&str>,
    default: usize,
    max: usize,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let size = match page_size {
        None | Some("") => default,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n <= 0 => default,
            Ok(n) => (n as usize).min(max),
            Err(_) => {
                return Err(errors::invalid_argument(&format!(
                    "Invalid value at 'page_size' (TYPE_INT32), \"{}\"",
                    shown(s)
                )));
            }
        },
    };
    let start = match page_token {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix("sim-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| errors::invalid_argument("Invalid page token."))?,
    };
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| format!("sim-{end}"));
    Ok((items[start..end].to_vec(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_the_list_once() {
        let items: Vec<u32> = (0..25).collect();
        let (a, t) = page(&items, Some("10"), None, 10, 100).unwrap();
        assert_eq!(a, (0..10).collect::<Vec<_>>());
        let (b, t) = page(&items, Some("10"), t.as_deref(), 10, 100).unwrap();
        assert_eq!(b, (10..20).collect::<Vec<_>>());
        let (c, t) = page(&items, Some("10"), t.as_deref(), 10, 100).unwrap();
        assert_eq!((c.len(), t), (5, None));
        assert!(page(&items, None, Some("bogus"), 10, 100).is_err());
        assert!(page(&items, Some("x"), None, 10, 100).is_err());
        assert_eq!(
            page(&items, Some("1000"), None, 10, 100).unwrap().0.len(),
            25
        );
    }
}
