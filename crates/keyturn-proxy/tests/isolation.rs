//! One proxy client cannot see or touch another's files, cached contents or batches, over real
//! sockets in front of `keyturn sim`: with client tokens `a` and `b`, what `a` creates is `a`'s
//! alone — `b` is answered for it exactly as it is answered for a resource that does not exist
//! (Gemini's answer for another project's), no call about it goes upstream and no quota is
//! spent on a request naming it — unless `[serve] share_resources`; records with no client (a
//! `resources.json` from before clients were recorded) stay usable by both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::affinity::*;
use reqwest::Method;
use serde_json::{Value, json};

/// What `a` created through the proxy.
struct Mine {
    /// `files/…` and its URI.
    file: String,
    uri: String,
    cache: String,
    batch: String,
    /// The batch's results file, `files/…`.
    results: String,
}

async fn as_client(
    s: &Setup,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = s
        .http
        .request(method, s.url(path))
        .header("x-goog-api-key", token);
    if let Some(b) = body {
        r = r.json(b);
    }
    let (status, body, _) = s.send(r).await;
    (status, body)
}

/// `a` uploads a file and a batch input file, creates a cached content and a batch from that
/// input, and reads the finished batch (which names its results file).
async fn a_creates(s: &Setup) -> Mine {
    let file = s.upload(TOKEN_A, b"%PDF-1.4 what only a may read").await;
    let line = json!({"key": "r0", "request": {"contents": [{"role": "user", "parts": [{"text": "Name a river."}]}]}});
    let input = s.upload(TOKEN_A, format!("{line}\n").as_bytes()).await;
    let text: String = (0..700).map(|i| format!("word{i} ")).collect();
    let create = json!({
        "model": format!("models/{FLASH}"),
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "ttl": "300s",
    });
    let (status, cache) = as_client(
        s,
        TOKEN_A,
        Method::POST,
        "/v1beta/cachedContents",
        Some(&create),
    )
    .await;
    assert_eq!(status, 200, "{cache}");
    let batch =
        json!({"batch": {"display_name": "a's", "input_config": {"file_name": input["name"]}}});
    let (status, op) = as_client(
        s,
        TOKEN_A,
        Method::POST,
        &format!("/v1beta/models/{FLASH}:batchGenerateContent"),
        Some(&batch),
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let batch = op["name"].as_str().unwrap().to_owned();
    let (status, done) =
        as_client(s, TOKEN_A, Method::GET, &format!("/v1beta/{batch}"), None).await;
    assert_eq!(status, 200, "{done}");
    let results = done["response"]["responsesFile"]
        .as_str()
        .unwrap_or_else(|| panic!("the batch names no results file: {done}"))
        .to_owned();
    Mine {
        file: file["name"].as_str().unwrap().to_owned(),
        uri: file["uri"].as_str().unwrap().to_owned(),
        cache: cache["name"].as_str().unwrap().to_owned(),
        batch,
        results,
    }
}

/// Every item name of every page of a list, as `token` sees it.
async fn listed(s: &Setup, token: &str, collection: &str, field: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut page_token = String::new();
    for _ in 0..20 {
        let path = format!("/v1beta/{collection}?pageToken={page_token}");
        let (status, page) = as_client(s, token, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for item in page[field].as_array().into_iter().flatten() {
            names.push(item["name"].as_str().unwrap().to_owned());
        }
        match page["nextPageToken"].as_str() {
            Some(t) => page_token = t.to_owned(),
            None => return names,
        }
    }
    panic!("the list of {collection} never ended");
}

fn generate_naming(field: &str, value: &str) -> Value {
    match field {
        "file" => with_file(value, false),
        _ => {
            json!({"cachedContent": value, "contents": [{"role": "user", "parts": [{"text": "What is word3?"}]}]})
        }
    }
}

/// `b` gets, for each of `a`'s resources, exactly what it gets for one that does not exist, and
/// nothing it asks about `a`'s resources reaches the upstream.
async fn b_is_kept_out(s: &Setup, mine: &Mine) {
    let uses_before: Vec<usize> = {
        let mut v = Vec::new();
        for n in [&mine.file, &mine.cache, &mine.batch, &mine.results] {
            v.push(s.uses_of(n).await.len());
        }
        v
    };
    // The answer for a resource that does not exist, relayed from the upstream, with the name
    // put in: what `b` must get for `a`'s.
    let file_ghost = as_client(s, TOKEN_B, Method::GET, "/v1beta/files/nosuchthing0", None).await;
    assert_eq!(file_ghost.0, 403, "{}", file_ghost.1);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = as_client(
            s,
            TOKEN_B,
            method.clone(),
            &format!("/v1beta/{}", mine.file),
            None,
        )
        .await;
        assert_eq!(
            (status, &body),
            (403, &ghost_as(&file_ghost.1, &mine.file)),
            "{method}"
        );
    }
    assert_eq!(
        body_of_message(&file_ghost.1),
        "You do not have permission to access the File nosuchthing0 or it may not exist."
    );
    for file in [&mine.file, &mine.results] {
        let id = file.trim_start_matches("files/");
        let path = format!("/download/v1beta/files/{id}:download?alt=media");
        let (status, body) = as_client(s, TOKEN_B, Method::GET, &path, None).await;
        let expected = ghost_as(&file_ghost.1, file);
        assert_eq!((status, &body), (403, &expected), "download of {file}");
    }

    let cache_ghost = as_client(
        s,
        TOKEN_B,
        Method::GET,
        "/v1beta/cachedContents/nosuchthing0",
        None,
    )
    .await;
    assert_eq!(cache_ghost.0, 403, "{}", cache_ghost.1);
    let ttl = json!({"ttl": "7200s"});
    for (method, path, body) in [
        (Method::GET, format!("/v1beta/{}", mine.cache), None),
        (
            Method::PATCH,
            format!("/v1beta/{}?updateMask=ttl", mine.cache),
            Some(&ttl),
        ),
        (Method::DELETE, format!("/v1beta/{}", mine.cache), None),
    ] {
        let (status, got) = as_client(s, TOKEN_B, method.clone(), &path, body).await;
        let expected = ghost_as(&cache_ghost.1, &mine.cache);
        assert_eq!((status, &got), (403, &expected), "{method} {path}");
    }

    let batch_ghost = as_client(
        s,
        TOKEN_B,
        Method::GET,
        "/v1beta/batches/nosuchthing0",
        None,
    )
    .await;
    assert_eq!(batch_ghost.0, 404, "{}", batch_ghost.1);
    for (method, path) in [
        (Method::GET, format!("/v1beta/{}", mine.batch)),
        (Method::POST, format!("/v1beta/{}:cancel", mine.batch)),
        (Method::DELETE, format!("/v1beta/{}", mine.batch)),
    ] {
        let (status, got) = as_client(s, TOKEN_B, method.clone(), &path, None).await;
        let expected = ghost_as(&batch_ghost.1, &mine.batch);
        assert_eq!((status, &got), (404, &expected), "{method} {path}");
    }

    // Naming them in a request: refused as Gemini refuses another project's, before any quota.
    let flash = format!("/v1beta/models/{FLASH}");
    for (field, value, status) in [("file", &mine.uri, 403), ("cache", &mine.cache, 403)] {
        for method in ["generateContent", "streamGenerateContent", "countTokens"] {
            let (got, body) = as_client(
                s,
                TOKEN_B,
                Method::POST,
                &format!("{flash}:{method}"),
                Some(&generate_naming(field, value)),
            )
            .await;
            assert_eq!(got, status, "{method} naming a's {field}: {body}");
            assert_eq!(body["error"]["status"], "PERMISSION_DENIED", "{body}");
        }
    }
    let (status, body) = as_client(
        s,
        TOKEN_B,
        Method::POST,
        &format!("{flash}:generateContent"),
        Some(&generate_naming("file", &mine.uri)),
    )
    .await;
    assert_eq!((status, &body), (403, &ghost_as(&file_ghost.1, &mine.file)));
    // A cache or a batch of b's own that names a's file is refused the same way.
    let cache_of_a_file = json!({"model": format!("models/{FLASH}"), "contents": [{"role": "user", "parts": [{"fileData": {"fileUri": mine.uri}}]}]});
    let (status, body) = as_client(
        s,
        TOKEN_B,
        Method::POST,
        "/v1beta/cachedContents",
        Some(&cache_of_a_file),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let batch_of_a_file = json!({"batch": {"input_config": {"file_name": mine.file}}});
    let (status, body) = as_client(
        s,
        TOKEN_B,
        Method::POST,
        &format!("{flash}:batchGenerateContent"),
        Some(&batch_of_a_file),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // The OpenAI-compatible route too: a's file as an image part's URL.
    let chat = json!({"model": FLASH, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in it?"},
        {"type": "image_url", "image_url": {"url": mine.uri}},
    ]}]});
    let (status, body) = as_client(
        s,
        TOKEN_B,
        Method::POST,
        "/v1beta/openai/chat/completions",
        Some(&chat),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Lists: none of a's.
    for (collection, field) in [
        ("files", "files"),
        ("cachedContents", "cachedContents"),
        ("batches", "operations"),
    ] {
        let seen = listed(s, TOKEN_B, collection, field).await;
        for n in [&mine.file, &mine.results, &mine.cache, &mine.batch] {
            assert!(
                !seen.contains(n),
                "b's list of {collection} shows {n}: {seen:?}"
            );
        }
    }

    // Nothing b asked about a's resources went upstream.
    for (n, before) in [&mine.file, &mine.cache, &mine.batch, &mine.results]
        .into_iter()
        .zip(uses_before)
    {
        let uses = s.uses_of(n).await;
        assert_eq!(
            uses.len(),
            before,
            "a request of b's about {n} went upstream: {uses:?}"
        );
    }
}

/// The answer for `nosuchthing0`, with `name`'s id in its place.
fn ghost_as(ghost: &Value, name: &str) -> Value {
    let id = name.split_once('/').unwrap().1;
    serde_json::from_str(&ghost.to_string().replace("nosuchthing0", id)).unwrap()
}

fn body_of_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap()
}

/// `a` still reads, lists, names and downloads all of it.
async fn a_still_can(s: &Setup, mine: &Mine) {
    for n in [&mine.file, &mine.cache, &mine.batch] {
        let (status, got) = as_client(s, TOKEN_A, Method::GET, &format!("/v1beta/{n}"), None).await;
        assert_eq!((status, &got["name"]), (200, &json!(n)), "{got}");
    }
    for (collection, field, n) in [
        ("files", "files", &mine.file),
        ("cachedContents", "cachedContents", &mine.cache),
        ("batches", "operations", &mine.batch),
    ] {
        let seen = listed(s, TOKEN_A, collection, field).await;
        assert!(
            seen.contains(n),
            "a's list of {collection} lacks {n}: {seen:?}"
        );
    }
    for (field, value) in [("file", &mine.uri), ("cache", &mine.cache)] {
        let (status, body) = as_client(
            s,
            TOKEN_A,
            Method::POST,
            &format!("/v1beta/models/{FLASH}:generateContent"),
            Some(&generate_naming(field, value)),
        )
        .await;
        assert_eq!(status, 200, "{field}: {body}");
    }
    let id = mine.results.trim_start_matches("files/");
    let r = s
        .http
        .get(s.url(&format!("/download/v1beta/files/{id}:download?alt=media")))
        .header("x-goog-api-key", TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"r0\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_see_or_touch_anothers_files_caches_or_batches() {
    let s = setup_on(simulator(true).await, Options::default()).await;
    let mine = a_creates(&s).await;
    b_is_kept_out(&s, &mine).await;
    a_still_can(&s, &mine).await;
    // b's attempts changed nothing: a deletes what it made.
    for n in [&mine.cache, &mine.batch, &mine.file] {
        let (status, body) =
            as_client(&s, TOKEN_A, Method::DELETE, &format!("/v1beta/{n}"), None).await;
        assert_eq!(status, 200, "{n}: {body}");
    }
    // The state file names the client, never a token.
    let kept = std::fs::read_to_string(s.dir.path().join("state").join("resources.json")).unwrap();
    assert!(kept.contains(r#""client":"a""#), "{kept}");
    assert!(!kept.contains(TOKEN_A) && !kept.contains(TOKEN_B));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_share_resources_every_client_uses_every_clients_resources() {
    let opts = Options {
        share_resources: true,
        ..Options::default()
    };
    let s = setup_on(simulator(true).await, opts).await;
    let mine = a_creates(&s).await;
    for n in [&mine.file, &mine.cache, &mine.batch] {
        let (status, got) =
            as_client(&s, TOKEN_B, Method::GET, &format!("/v1beta/{n}"), None).await;
        assert_eq!((status, &got["name"]), (200, &json!(n)), "{got}");
    }
    for (collection, field, n) in [
        ("files", "files", &mine.file),
        ("cachedContents", "cachedContents", &mine.cache),
        ("batches", "operations", &mine.batch),
    ] {
        let seen = listed(&s, TOKEN_B, collection, field).await;
        assert!(
            seen.contains(n),
            "b's list of {collection} lacks {n}: {seen:?}"
        );
    }
    let (status, body) = as_client(
        &s,
        TOKEN_B,
        Method::POST,
        &format!("/v1beta/models/{FLASH}:generateContent"),
        Some(&generate_naming("file", &mine.uri)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = mine.results.trim_start_matches("files/");
    let (status, _) = as_client(
        &s,
        TOKEN_B,
        Method::GET,
        &format!("/download/v1beta/files/{id}:download?alt=media"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    a_still_can(&s, &mine).await;
}

/// A file uploaded straight to the upstream with p2's key, as a keyturn from before clients were
/// recorded left its owner: in a schema-1 `resources.json` with no client. Both clients use it,
/// pinned to p2 (the record was read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_clients_were_recorded_stay_usable_by_every_client() {
    let sim = simulator(false).await;
    let r = common::upload_upstream(&sim.base_url(), KEYS[2].0, "shared").await;
    let name = r["file"]["name"].as_str().unwrap().to_owned();
    let uri = r["file"]["uri"].as_str().unwrap().to_owned();
    #[allow(clippy::disallowed_methods)] // the record must outlive the test on the real clock
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_millis() as i64;
    let old = json!({"schema": 1, "resources": [{"name": name, "project": "p2", "expiresMs": now + 3_600_000}]});
    let opts = Options {
        resources_json: Some(old.to_string()),
        ..Options::default()
    };
    let s = setup_on(sim, opts).await;
    for token in [TOKEN_B, TOKEN_A] {
        let (status, got) =
            as_client(&s, token, Method::GET, &format!("/v1beta/{name}"), None).await;
        assert_eq!((status, &got["name"]), (200, &json!(name)), "{got}");
        assert!(listed(&s, token, "files", "files").await.contains(&name));
        for _ in 0..4 {
            let (status, body) = as_client(
                &s,
                token,
                Method::POST,
                &format!("/v1beta/models/{FLASH}:generateContent"),
                Some(&with_file(&uri, false)),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let uses = s.uses_of(&name).await;
    assert!(
        uses.len() >= 8 && uses.iter().all(|(asked, _)| asked == "p2"),
        "{uses:?}"
    );
    // Learned again from an answer, it is still nobody's in particular.
    let kept = std::fs::read_to_string(s.dir.path().join("state").join("resources.json")).unwrap();
    assert!(kept.contains(&name) && !kept.contains("client"), "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn the_redis_backend_keeps_clients_apart_the_same_way() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let ns = keyturn_store::testkit::unique_namespace("isolation");
    let opts = Options {
        redis: Some((redis.url(), &ns)),
        ..Options::default()
    };
    let s = setup_on(simulator(true).await, opts).await;
    let mine = a_creates(&s).await;
    b_is_kept_out(&s, &mine).await;
    a_still_can(&s, &mine).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let kept: String = redis::cmd("GET")
        .arg(format!("kt:{{{ns}}}:rc:{}", mine.file))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kept, "a");
}
