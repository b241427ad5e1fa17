//! Resource affinity through `keyturn serve`, over real sockets in front of `keyturn sim` with
//! keys of three projects: files uploaded through the proxy (resumable through the proxy's own
//! session URL, and multipart) are recorded with the project whose key uploaded them, and every
//! later request that names them goes only to that project's keys — in the file backend and in
//! Redis — with a 429 and `RetryInfo` when that project has no room, never another project's key.
//! Uploads themselves (sessions, the cap, downloads) are in `uploads.rs`; the world both run in
//! is `common/affinity.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::affinity::*;
use keyturn_proxy::ProxyConfig;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_uploaded_through_the_proxy_are_used_only_with_their_projects_keys() {
    let s = setup(1000, None).await;
    let (name, owner) = files_are_pinned_to_their_project(&s).await;
    // The file backend kept the owner in the state folder: the project, never a key.
    let kept = std::fs::read_to_string(s.dir.path().join("state").join("resources.json")).unwrap();
    assert!(
        kept.contains(&name) && kept.contains(&format!("\"{owner}\"")),
        "{kept}"
    );
    for (k, _, _) in KEYS {
        assert!(!kept.contains(k));
    }
    // Deleted through the proxy: forgotten.
    let (status, _) = s
        .call(reqwest::Method::DELETE, &format!("/v1beta/{name}"))
        .await;
    assert_eq!(status, 200);
    let kept = std::fs::read_to_string(s.dir.path().join("state").join("resources.json")).unwrap();
    assert!(!kept.contains(&name), "{kept}");
    let uses = s.uses_of(&name).await;
    assert!(uses.iter().all(|(asked, _)| *asked == owner), "{uses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_without_room_answers_429_and_no_other_project_is_used() {
    // Two requests a minute per project, by the proxy's own limits.
    let s = setup(2, None).await;
    let file = s.upload(TOKEN_A, b"%PDF-1.4 tiny").await;
    let name = file["name"].as_str().unwrap().to_owned();
    let uri = file["uri"].as_str().unwrap().to_owned();
    let before = s.uses_of(&name).await.len();
    for _ in 0..2 {
        let (status, body) = s.generate(&with_file(&uri, false)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = s.generate(&with_file(&uri, true)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    let retry = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("RetryInfo");
    assert!(retry["retryDelay"].as_str().unwrap().ends_with('s'));
    // The other projects still serve what names no file.
    let (status, body) = s.generate(&plain()).await;
    assert_eq!(status, 200, "{body}");
    let uses = s.uses_of(&name).await;
    assert_eq!(
        uses.len(),
        before + 2,
        "the refused request never went upstream: {uses:?}"
    );
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn the_redis_backend_keeps_owners_and_pins_the_same_way() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let ns = keyturn_store::testkit::unique_namespace("affinity");
    let s = setup(1000, Some((redis.url(), &ns))).await;
    let (name, owner) = files_are_pinned_to_their_project(&s).await;
    assert!(!s.dir.path().join("state").join("resources.json").exists());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let kept: String = redis::cmd("GET")
        .arg(format!("kt:{{{ns}}}:r:{name}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kept, owner);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("kt:{{{ns}}}:r:{name}"))
        .query_async(&mut c)
        .await
        .unwrap();
    // Expiring with the file: 48 hours from its upload.
    assert!(ttl > 47 * 3_600_000 && ttl <= 48 * 3_600_000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_contents_and_batches_stay_with_the_project_that_created_them() {
    let s = setup(1000, None).await;
    let text: String = (0..700).map(|i| format!("word{i} ")).collect();
    let create = json!({
        "model": format!("models/{FLASH}"),
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "ttl": "300s",
    });
    let (status, cache, _) = s
        .send(
            s.http
                .post(s.url("/v1beta/cachedContents"))
                .header("x-goog-api-key", TOKEN_A)
                .json(&create),
        )
        .await;
    assert_eq!(status, 200, "{cache}");
    let cache_name = cache["name"].as_str().unwrap().to_owned();
    for i in 0..8 {
        let field = if i % 2 == 0 {
            "cachedContent"
        } else {
            "cached_content"
        };
        let ask = json!({field: cache_name, "contents": [{"role": "user", "parts": [{"text": "What is word3?"}]}]});
        let (status, body) = s.generate(&ask).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, patched, _) = s
        .send(
            s.http
                .patch(s.url(&format!("/v1beta/{cache_name}?updateMask=ttl")))
                .header("x-goog-api-key", TOKEN_A)
                .json(&json!({"ttl": "7200s"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    // The owner is kept as long as the patched cache lives.
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(s.dir.path().join("state").join("resources.json")).unwrap(),
    )
    .unwrap();
    let entry = kept["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == cache_name)
        .unwrap()
        .clone();
    let expire: jiff::Timestamp = patched["expireTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(entry["expiresMs"], expire.as_millisecond());
    let (status, list) = s.call(reqwest::Method::GET, "/v1beta/cachedContents").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["cachedContents"][0]["name"], json!(cache_name));
    let (status, _) = s
        .call(reqwest::Method::DELETE, &format!("/v1beta/{cache_name}"))
        .await;
    assert_eq!(status, 200);
    let uses = s.uses_of(&cache_name).await;
    assert!(uses.len() >= 8, "{uses:?}");
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");

    let batch = json!({"batch": {"display_name": "b", "input_config": {"requests": {"requests": [
        {"request": {"contents": [{"role": "user", "parts": [{"text": "Name a river."}]}]}, "metadata": {"key": "r0"}},
    ]}}}});
    let (status, op, _) = s
        .send(
            s.http
                .post(s.url(&format!("/v1beta/models/{FLASH}:batchGenerateContent")))
                .header("x-goog-api-key", TOKEN_A)
                .json(&batch),
        )
        .await;
    assert_eq!(status, 200, "{op}");
    let batch_name = op["name"].as_str().unwrap().to_owned();
    for _ in 0..6 {
        let (status, got) = s
            .call(reqwest::Method::GET, &format!("/v1beta/{batch_name}"))
            .await;
        assert_eq!((status, &got["name"]), (200, &json!(batch_name)), "{got}");
    }
    let (status, list) = s.call(reqwest::Method::GET, "/v1beta/batches").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["operations"][0]["name"], json!(batch_name));
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            &format!("/v1beta/{batch_name}:cancel"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s
        .call(reqwest::Method::DELETE, &format!("/v1beta/{batch_name}"))
        .await;
    assert_eq!(status, 200);
    let uses = s.uses_of(&batch_name).await;
    assert!(uses.len() >= 6, "{uses:?}");
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_proxy_never_saw_blames_no_key_when_another_project_refuses_it() {
    let s = setup(1000, None).await;
    // Uploaded straight to the upstream with p2's key: the proxy has no owner for it.
    let r = common::upload_upstream(&s.sim.base_url(), KEYS[2].0, "hidden").await;
    let uri = r["file"]["uri"].as_str().unwrap().to_owned();
    let mut refused = 0;
    for i in 0..8 {
        let (status, body) = s.generate(&with_file(&uri, i % 2 == 0)).await;
        assert!(status == 200 || status == 403, "{status} {body}");
        if status == 403 {
            refused += 1;
            assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
        }
    }
    // Round robin over four keys of three projects: some landed elsewhere and were refused.
    assert!(refused > 0);
    // The caller's fault: every key is still in service.
    let status = s._pool.ledger.status().await.unwrap();
    assert!(
        status.keys.iter().all(|k| k.disabled.is_none()),
        "{status:?}"
    );
    // Asked about by name, the proxy finds it on its project and learns the owner: from then
    // on, every request for it lands there.
    let name = r["file"]["name"].as_str().unwrap().to_owned();
    let (status, _) = s
        .call(reqwest::Method::GET, &format!("/v1beta/{name}"))
        .await;
    assert_eq!(status, 200);
    let before = s.uses_of(&name).await.len();
    for i in 0..6 {
        let (status, body) = s.generate(&with_file(&uri, i % 2 == 0)).await;
        assert_eq!(status, 200, "{body}");
    }
    let uses = s.uses_of(&name).await;
    assert!(
        uses[before..].iter().all(|(asked, _)| asked == "p2"),
        "{uses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_files_share_one_project_so_a_request_can_name_several() {
    let s = setup(1000, None).await;
    let files = [
        s.upload(TOKEN_A, b"%PDF-1.4 one").await,
        s.upload(TOKEN_A, b"%PDF-1.4 two").await,
        s.upload(TOKEN_A, b"%PDF-1.4 three").await,
    ];
    let parts: Vec<Value> = files
        .iter()
        .map(|f| json!({"fileData": {"mimeType": "application/pdf", "fileUri": f["uri"]}}))
        .collect();
    let body = json!({"contents": [{"role": "user", "parts": parts}]});
    for _ in 0..4 {
        let (status, got) = s.generate(&body).await;
        assert_eq!(status, 200, "{got}");
    }
    for f in &files {
        let uses = s.uses_of(f["name"].as_str().unwrap()).await;
        assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
    }
}

/// countTokens spends no quota but still names the file: it goes with a key of the owning
/// project too (another project's key would get a bare 403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_tokens_of_a_request_naming_a_file_uses_its_projects_keys() {
    let s = setup(1000, None).await;
    let file = s.upload(TOKEN_A, &b"%PDF-1.4\n".repeat(50)).await;
    let name = file["name"].as_str().unwrap().to_owned();
    let uri = file["uri"].as_str().unwrap().to_owned();
    for i in 0..8 {
        let (status, body, _) = s
            .send(
                s.http
                    .post(s.url(&format!("/v1beta/models/{FLASH}:countTokens")))
                    .header("x-goog-api-key", TOKEN_A)
                    .json(&with_file(&uri, i % 2 == 0)),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["totalTokens"].as_u64().is_some(), "{body}");
    }
    let uses = s.uses_of(&name).await;
    assert!(uses.len() >= 8, "{uses:?}");
    assert!(
        uses.iter().all(|(asked, own)| asked == own),
        "a count went to another project: {uses:?}"
    );
}

/// A file lives 48 hours: once its `expirationTime` has passed, the proxy forgets its owner (the
/// name is Google's no more), so a request naming it is no longer pinned — here, where the
/// simulator still holds it, such requests reach other projects' keys and their bare 403s come
/// back as the caller's fault, no key blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_owner_is_forgotten_when_the_file_expires() {
    #[allow(clippy::disallowed_methods)] // the map's clock starts at the simulator's time
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_millis() as i64;
    let clock = Arc::new(keyturn_core::ManualClock::at_ms(now));
    let s = setup_full(
        1000,
        None,
        ProxyConfig::default().max_upload_bytes,
        Some(clock.clone()),
    )
    .await;
    let file = s.upload(TOKEN_A, &b"%PDF-1.4\n".repeat(50)).await;
    let name = file["name"].as_str().unwrap().to_owned();
    let uri = file["uri"].as_str().unwrap().to_owned();
    for _ in 0..6 {
        let (status, body) = s.generate(&with_file(&uri, false)).await;
        assert_eq!(status, 200, "pinned while the file lives: {body}");
    }
    let kept =
        || std::fs::read_to_string(s.dir.path().join("state").join("resources.json")).unwrap();
    assert!(kept().contains(&name));
    clock.advance(std::time::Duration::from_secs(49 * 3600));
    let mut refused = 0;
    for _ in 0..8 {
        let (status, body) = s.generate(&with_file(&uri, false)).await;
        match status {
            200 => {}
            403 => refused += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "requests naming an expired file were still pinned"
    );
    let st = s._pool.ledger.status().await.unwrap();
    assert!(
        st.keys.iter().all(|k| k.disabled.is_none()),
        "a 403 for a file blamed a key"
    );
    let uses = s.uses_of(&name).await;
    assert!(
        uses.iter().any(|(asked, own)| asked != own),
        "no request went unpinned after expiry: {uses:?}"
    );
}
