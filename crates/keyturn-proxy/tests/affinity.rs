//! Resource affinity through `keyturn serve`, over real sockets in front of `keyturn sim` with
//! keys of three projects: files uploaded through the proxy (resumable through the proxy's own
//! session URL, and multipart) are recorded with the project whose key uploaded them, and every
//! later request that names them goes only to that project's keys — in the file backend and in
//! Redis — with a 429 and `RetryInfo` when that project has no room, never another project's key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use keyturn_proxy::{Proxy, ProxyConfig, digest};
use keyturn_services::{Pool, create_pool};
use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Limits, SimConfig, Simulator, Tier};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const TOKEN_A: &str = "kt_made-up-affinity-client-a";
const TOKEN_B: &str = "kt_made-up-affinity-client-b";

/// Two keys of p1, one of p2, one of p3.
const KEYS: [(&str, &str, &str); 4] = [
    ("AIzaSyTESTaffinityKeyOfProjectOne0001", "p1-a", "p1"),
    ("AIzaSyTESTaffinityKeyOfProjectOne0002", "p1-b", "p1"),
    ("AIzaSyTESTaffinityKeyOfProjectTwo0001", "p2-a", "p2"),
    ("AIzaSyTESTaffinityKeyOfProjectThree01", "p3-a", "p3"),
];

struct Setup {
    sim: Simulator,
    proxy: Proxy,
    _pool: Pool,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// The simulator (ample limits) and a proxy over it whose own limit for flash is `rpm` per
/// project; `redis`: the namespace of a Redis backend, else the file backend in a temp folder.
async fn setup(rpm: u64, redis: Option<(&str, &str)>) -> Setup {
    setup_with(rpm, redis, ProxyConfig::default().max_upload_bytes).await
}

async fn setup_with(rpm: u64, redis: Option<(&str, &str)>, max_upload_bytes: u64) -> Setup {
    setup_full(rpm, redis, max_upload_bytes, None).await
}

/// [`setup_with`], the resource map reading `resource_clock` (to age what it holds) instead of
/// the pool's clock.
async fn setup_full(
    rpm: u64,
    redis: Option<(&str, &str)>,
    max_upload_bytes: u64,
    resource_clock: Option<Arc<dyn keyturn_core::Clock>>,
) -> Setup {
    let mut models = BTreeMap::new();
    models.insert(
        FLASH.to_owned(),
        Limits::new(10_000, 100_000_000, 1_000_000),
    );
    // Paid projects: Batch Mode is not served on the free tier.
    let projects = ["p1", "p2", "p3"]
        .into_iter()
        .map(|p| {
            let paid = ProjectConfig {
                tier: Tier::Paid,
                ..ProjectConfig::default()
            };
            (p.to_owned(), paid)
        })
        .collect();
    let sim = Simulator::start(SimConfig {
        projects,
        keys: common::sim_keys(&KEYS),
        models,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    common::write_keys(dir.path(), &KEYS);
    let backend = match redis {
        Some((url, ns)) => {
            format!("backend = \"redis\"\nredis_url = \"{url}\"\nnamespace = \"{ns}\"\n")
        }
        None => String::new(),
    };
    let env = common::env(dir.path(), &sim.base_url());
    let cfg = common::config(
        dir.path(),
        &env,
        &backend,
        &format!("[models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 100000000\nrpd = 1000000\n"),
    );
    let pool = create_pool(&cfg, &env, dir.path()).await.unwrap();
    let pcfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: vec![("a".into(), digest(TOKEN_A)), ("b".into(), digest(TOKEN_B))],
        max_upload_bytes,
        ..ProxyConfig::default()
    };
    let resources = pool
        .state
        .resources(resource_clock.unwrap_or_else(|| pool.clock.clone()))
        .unwrap();
    let state = Arc::new(
        common::state(&pool, &cfg, &pcfg)
            .with_resources(resources, common::resource_upstream(&cfg)),
    );
    let proxy = Proxy::start(state, &pcfg).await.unwrap();
    Setup {
        sim,
        proxy,
        _pool: pool,
        dir,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.base_url())
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        for (k, _, _) in KEYS {
            assert!(!text.contains(k), "a pool key reached a client");
        }
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body, headers)
    }

    /// Starts a resumable upload as `token`: the proxy's session URL.
    async fn start_upload(&self, token: &str, len: usize) -> String {
        let (status, body, headers) = self
            .send(
                self.http
                    .post(self.url("/upload/v1beta/files"))
                    .header("x-goog-api-key", token)
                    .header("x-goog-upload-protocol", "resumable")
                    .header("x-goog-upload-command", "start")
                    .header("x-goog-upload-header-content-length", len.to_string())
                    .header("x-goog-upload-header-content-type", "application/pdf")
                    .json(&json!({"file": {"display_name": "report"}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-goog-upload-status"], "active");
        let url = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
        // The client is sent back to the proxy, with an opaque id: not the simulator, no key.
        assert!(
            url.starts_with(&format!(
                "{}/upload/v1beta/files?upload_id=",
                self.proxy.base_url()
            )),
            "{url}"
        );
        assert!(!url.contains(&self.sim.base_url()), "{url}");
        for (k, _, _) in KEYS {
            assert!(!url.contains(k));
        }
        url
    }

    /// A whole resumable upload through the proxy, in two chunks: the file. The first chunk
    /// comes with the client's token, the last without one, as google-genai sends chunks (the
    /// session id is their credential).
    async fn upload(&self, token: &str, bytes: &[u8]) -> Value {
        let url = self.start_upload(token, bytes.len()).await;
        let half = bytes.len() / 2;
        let (status, body, headers) = self
            .send(
                self.http
                    .post(&url)
                    .header("x-goog-api-key", token)
                    .header("x-goog-upload-command", "upload")
                    .header("x-goog-upload-offset", "0")
                    .body(bytes[..half].to_vec()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-goog-upload-status"], "active");
        let (status, body, headers) = self
            .send(
                self.http
                    .post(&url)
                    .header("x-goog-upload-command", "upload, finalize")
                    .header("x-goog-upload-offset", half.to_string())
                    .body(bytes[half..].to_vec()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-goog-upload-status"], "final");
        body["file"].clone()
    }

    async fn generate(&self, body: &Value) -> (u16, Value) {
        let (s, b, _) = self
            .send(
                self.http
                    .post(self.url(&format!("/v1beta/models/{FLASH}:generateContent")))
                    .header("x-goog-api-key", TOKEN_A)
                    .json(body),
            )
            .await;
        (s, b)
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let (s, b, _) = self
            .send(
                self.http
                    .request(method, self.url(path))
                    .header("x-goog-api-key", TOKEN_A),
            )
            .await;
        (s, b)
    }

    /// The simulator's record of requests naming `name`: (key's project, owner) for each.
    async fn uses_of(&self, name: &str) -> Vec<(String, String)> {
        let stats: Value = self
            .http
            .get(format!("{}/admin/stats", self.sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["resources"]["uses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["resource"] == name)
            .map(|u| {
                (
                    u["key_project"].as_str().unwrap_or_default().to_owned(),
                    u["owner"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn with_file(uri: &str, snake: bool) -> Value {
    let part = if snake {
        json!({"file_data": {"mime_type": "application/pdf", "file_uri": uri}})
    } else {
        json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}})
    };
    json!({"contents": [{"role": "user", "parts": [part, {"text": "Summarise it."}]}]})
}

fn plain() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Hello."}]}]})
}

/// Uploads, then names the file in many requests: every one lands on the owner's keys (the
/// simulator counts which project's key asked), and get, list and delete go there too.
async fn files_are_pinned_to_their_project(s: &Setup) -> (String, String) {
    let pdf = b"%PDF-1.4\n".repeat(500);
    let file = s.upload(TOKEN_A, &pdf).await;
    let name = file["name"].as_str().unwrap().to_owned();
    assert_eq!(file["sizeBytes"], pdf.len().to_string());
    let uri = file["uri"].as_str().unwrap().to_owned();
    for i in 0..12 {
        let (status, body) = s.generate(&with_file(&uri, i % 2 == 0)).await;
        assert_eq!(status, 200, "{body}");
    }
    let uses = s.uses_of(&name).await;
    assert!(uses.len() >= 12, "{uses:?}");
    let owner = uses[0].1.clone();
    assert!(
        uses.iter()
            .all(|(asked, own)| *asked == owner && *own == owner),
        "a request for the file went to another project: {uses:?}"
    );
    let (status, got) = s
        .call(reqwest::Method::GET, &format!("/v1beta/{name}"))
        .await;
    assert_eq!((status, &got["name"]), (200, &json!(name)));
    let (status, list) = s.call(reqwest::Method::GET, "/v1beta/files").await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == name)
    );
    (name, owner)
}

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
async fn a_multipart_upload_is_recorded_and_pinned_too() {
    let s = setup(1000, None).await;
    let boundary = "keyturn-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{\"file\": {{\"display_name\": \"notes\"}}}}\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nsome notes\r\n--{boundary}--\r\n"
    );
    let (status, got, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files?uploadType=multipart"))
                .header("x-goog-api-key", TOKEN_A)
                .header("x-goog-upload-protocol", "multipart")
                .header(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    let name = got["file"]["name"].as_str().unwrap().to_owned();
    let uri = got["file"]["uri"].as_str().unwrap().to_owned();
    for i in 0..6 {
        let (status, body) = s.generate(&with_file(&uri, i % 2 == 1)).await;
        assert_eq!(status, 200, "{body}");
    }
    let uses = s.uses_of(&name).await;
    assert!(uses.len() >= 6);
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_upload_sessions_are_refused() {
    let s = setup(1000, None).await;
    let url = s.start_upload(TOKEN_A, 10).await;
    // Another client holding the URL gets nothing of it.
    let (status, _, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-api-key", TOKEN_B)
                .header("x-goog-upload-command", "upload, finalize")
                .header("x-goog-upload-offset", "0")
                .body(vec![b'x'; 10]),
        )
        .await;
    assert_eq!(status, 404);
    // A token that is no client's is refused as anywhere else.
    let (status, _, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-api-key", "kt_not-a-client")
                .header("x-goog-upload-command", "upload, finalize")
                .body(vec![b'x'; 10]),
        )
        .await;
    assert_eq!(status, 401);
    // Without a session id, no token is no entry.
    let (status, _, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .json(&json!({"file": {}})),
        )
        .await;
    assert_eq!(status, 401);
    // Made-up, malformed and hostile ids are unknown sessions, with or without a token; nothing
    // goes upstream for them.
    for id in [
        "0".repeat(64),
        "zz".repeat(32),
        "..%2F..%2Fv1beta%2Fmodels".to_owned(),
        String::new(),
    ] {
        for token in [Some(TOKEN_A), None] {
            let mut r = s
                .http
                .post(s.url(&format!("/upload/v1beta/files?upload_id={id}")))
                .header("x-goog-upload-command", "upload, finalize")
                .body(vec![b'x'; 10]);
            if let Some(t) = token {
                r = r.header("x-goog-api-key", t);
            }
            let (status, body, _) = s.send(r).await;
            assert!(status == 404 || status == 400, "{id}: {status} {body}");
        }
    }
    // The session's owner still finishes it.
    let (status, body, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-api-key", TOKEN_A)
                .header("x-goog-upload-command", "upload, finalize")
                .header("x-goog-upload-offset", "0")
                .body(vec![b'x'; 10]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
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

#[test]
fn hostile_file_ids_are_refused_before_anything_goes_upstream() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup(1000, None));
    let addr = s.proxy.addr();
    let auth = format!("x-goog-api-key: {TOKEN_A}\r\n");
    for path in [
        "/v1beta/files/..%2F..%2Fmodels",
        "/v1beta/files/%2e%2e",
        "/v1beta/files/a%3Fkey%3Dx",
        "/v1beta/files/a%23b",
        "/v1beta/files/a:download",
        "/v1beta/files/a.b",
    ] {
        let (status, text) = common::raw(addr, "GET", path, &auth, "");
        assert_eq!(status, 400, "{path}: {text}");
    }
    let (status, text) = common::raw(addr, "GET", "/v1beta/files?pageToken=..%2Fx", &auth, "");
    assert_eq!(status, 400, "{text}");
    let stats: Value = rt.block_on(async {
        reqwest::get(format!("{}/admin/stats", s.sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(
        stats["resources"]["uses"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{stats}"
    );
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
    let http = reqwest::Client::new();
    let boundary = "b0";
    let body = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{\"file\": {{}}}}\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nhidden\r\n--{boundary}--\r\n"
    );
    let r: Value = http
        .post(format!(
            "{}/upload/v1beta/files?uploadType=multipart",
            s.sim.base_url()
        ))
        .header("x-goog-api-key", KEYS[2].0)
        .header("x-goog-upload-protocol", "multipart")
        .header(
            "content-type",
            format!("multipart/related; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
async fn uploads_past_the_cap_are_refused_whether_announced_or_streamed() {
    let s = setup_with(1000, None, 1000).await;
    // Announced at the start: refused before anything goes upstream.
    let (status, body, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-api-key", TOKEN_A)
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .header("x-goog-upload-header-content-length", "1001")
                .json(&json!({"file": {}})),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    // A chunk whose length says it is past the cap: refused before anything goes upstream.
    let url = s.start_upload(TOKEN_A, 10).await;
    let (status, body, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-upload-command", "upload, finalize")
                .header("x-goog-upload-offset", "0")
                .body(vec![b'x'; 1001]),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    // Streamed without a length: cut off once past the cap (413), unless the upstream refused
    // the overlong chunk first (the simulator checks it against the announced length: 400).
    // Either way no file came to be.
    let chunks = futures::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 100]))),
    );
    let sent = s
        .http
        .post(&url)
        .header("x-goog-api-key", TOKEN_A)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // A client still writing may see the connection closed instead of the answer.
    if let Ok(r) = sent {
        assert!(matches!(r.status().as_u16(), 413 | 400), "{}", r.status());
    }
    let stats: Value = s
        .http
        .get(format!("{}/admin/stats", s.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files: Vec<&Value> = stats["resources"]["by_project"]
        .as_object()
        .map(|m| {
            m.values()
                .flat_map(|p| p["files"].as_array().into_iter().flatten())
                .collect()
        })
        .unwrap_or_default();
    assert!(files.is_empty(), "{stats}");
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

/// A file's bytes (a batch's results file, here a small upload) come through the proxy's
/// download route, fetched with the owning project's key; a name that is not a file's is refused
/// before anything goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_bytes_are_downloaded_with_its_projects_key() {
    let s = setup(1000, None).await;
    let content = b"{\"key\": \"a\", \"response\": {}}\n".repeat(40);
    let file = s.upload(TOKEN_A, &content).await;
    let name = file["name"].as_str().unwrap().to_owned();
    let id = name.strip_prefix("files/").unwrap();
    for _ in 0..4 {
        let resp = s
            .http
            .get(s.url(&format!("/download/v1beta/files/{id}:download?alt=media")))
            .header("x-goog-api-key", TOKEN_A)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
    }
    let uses = s.uses_of(&name).await;
    assert!(uses.len() >= 4, "{uses:?}");
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
    for bad in ["..%2Fmodels:download", "abc", "a.b:download", "abc:delete"] {
        let resp = s
            .http
            .get(s.url(&format!("/download/v1beta/files/{bad}")))
            .header("x-goog-api-key", TOKEN_A)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(resp.status().as_u16(), 400 | 404),
            "{bad}: {}",
            resp.status()
        );
    }
    // Without a client token: refused like every route.
    let resp = s
        .http
        .get(s.url(&format!("/download/v1beta/files/{id}:download?alt=media")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
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
