//! The affinity tests' world: `keyturn sim` with keys of three paid projects, a proxy over them
//! (file or Redis backend), and calls that check no pool key ever reaches a client.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyturn_proxy::{Proxy, ProxyConfig, digest};
use keyturn_services::{Pool, create_pool};
use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Limits, SimConfig, Simulator, Tier};
use serde_json::{Value, json};

pub const FLASH: &str = "gemini-2.5-flash";
pub const TOKEN_A: &str = "kt_made-up-affinity-client-a";
pub const TOKEN_B: &str = "kt_made-up-affinity-client-b";

/// Two keys of p1, one of p2, one of p3.
pub const KEYS: [(&str, &str, &str); 4] = [
    ("AIzaSyTESTaffinityKeyOfProjectOne0001", "p1-a", "p1"),
    ("AIzaSyTESTaffinityKeyOfProjectOne0002", "p1-b", "p1"),
    ("AIzaSyTESTaffinityKeyOfProjectTwo0001", "p2-a", "p2"),
    ("AIzaSyTESTaffinityKeyOfProjectThree01", "p3-a", "p3"),
];

pub struct Setup {
    pub sim: Simulator,
    pub proxy: Proxy,
    pub _pool: Pool,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// The simulator (ample limits) and a proxy over it whose own limit for flash is `rpm` per
/// project; `redis`: the namespace of a Redis backend, else the file backend in a temp folder.
pub async fn setup(rpm: u64, redis: Option<(&str, &str)>) -> Setup {
    setup_with(rpm, redis, ProxyConfig::default().max_upload_bytes).await
}

pub async fn setup_with(rpm: u64, redis: Option<(&str, &str)>, max_upload_bytes: u64) -> Setup {
    setup_full(rpm, redis, max_upload_bytes, None).await
}

/// [`setup_with`], the resource map reading `resource_clock` (to age what it holds) instead of
/// the pool's clock.
pub async fn setup_full(
    rpm: u64,
    redis: Option<(&str, &str)>,
    max_upload_bytes: u64,
    resource_clock: Option<Arc<dyn keyturn_core::Clock>>,
) -> Setup {
    let opts = Options {
        rpm,
        redis,
        max_upload_bytes,
        resource_clock,
        ..Options::default()
    };
    setup_on(simulator(false).await, opts).await
}

/// How a test's proxy is set up.
pub struct Options<'a> {
    /// The proxy's own limit for flash, per project.
    pub rpm: u64,
    /// The namespace of a Redis backend, else the file backend in a temp folder.
    pub redis: Option<(&'a str, &'a str)>,
    pub max_upload_bytes: u64,
    /// The resource map's clock, when not the pool's.
    pub resource_clock: Option<Arc<dyn keyturn_core::Clock>>,
    /// `[serve] share_resources`.
    pub share_resources: bool,
    /// `resources.json` as a keyturn from before left it in the state folder (file backend).
    pub resources_json: Option<String>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            rpm: 1000,
            redis: None,
            max_upload_bytes: ProxyConfig::default().max_upload_bytes,
            resource_clock: None,
            share_resources: false,
            resources_json: None,
        }
    }
}

/// The simulator with keys of three paid projects and ample limits; with `instant_batches`, a
/// batch succeeds as soon as it is created.
pub async fn simulator(instant_batches: bool) -> Simulator {
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
    let mut resources = keyturn_sim::ResourceConfig::default();
    if instant_batches {
        resources.batch_pending_secs = 0;
        resources.batch_running_secs = 0;
    }
    Simulator::start(SimConfig {
        projects,
        keys: super::sim_keys(&KEYS),
        models,
        resources,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// A proxy over `sim` as `opts` say, clients `a` ([`TOKEN_A`]) and `b` ([`TOKEN_B`]).
pub async fn setup_on(sim: Simulator, opts: Options<'_>) -> Setup {
    let Options {
        rpm,
        redis,
        max_upload_bytes,
        resource_clock,
        share_resources,
        resources_json,
    } = opts;
    let dir = tempfile::tempdir().unwrap();
    if let Some(json) = resources_json {
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state").join("resources.json"), json).unwrap();
    }
    super::write_keys(dir.path(), &KEYS);
    let backend = match redis {
        Some((url, ns)) => {
            format!("backend = \"redis\"\nredis_url = \"{url}\"\nnamespace = \"{ns}\"\n")
        }
        None => String::new(),
    };
    let env = super::env(dir.path(), &sim.base_url());
    let cfg = super::config(
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
        share_resources,
        ..ProxyConfig::default()
    };
    let resources = pool
        .state
        .resources(resource_clock.unwrap_or_else(|| pool.clock.clone()))
        .unwrap();
    let state = Arc::new(
        super::state(&pool, &cfg, &pcfg).with_resources(resources, super::resource_upstream(&cfg)),
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
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.base_url())
    }

    pub async fn send(
        &self,
        r: reqwest::RequestBuilder,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
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
    pub async fn start_upload(&self, token: &str, len: usize) -> String {
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
    pub async fn upload(&self, token: &str, bytes: &[u8]) -> Value {
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

    pub async fn generate(&self, body: &Value) -> (u16, Value) {
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

    pub async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
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
    pub async fn uses_of(&self, name: &str) -> Vec<(String, String)> {
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

pub fn with_file(uri: &str, snake: bool) -> Value {
    let part = if snake {
        json!({"file_data": {"mime_type": "application/pdf", "file_uri": uri}})
    } else {
        json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}})
    };
    json!({"contents": [{"role": "user", "parts": [part, {"text": "Summarise it."}]}]})
}

pub fn plain() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Hello."}]}]})
}

/// Uploads, then names the file in many requests: every one lands on the owner's keys (the
/// simulator counts which project's key asked), and get, list and delete go there too.
pub async fn files_are_pinned_to_their_project(s: &Setup) -> (String, String) {
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
