//! The proxy in front of the simulator, over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use keyturn_proxy::{Proxy, ProxyConfig, ProxyState, digest};
use keyturn_services::{Config, Env, Pool, create_pool};
use keyturn_sim::{Faults, Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const TOKEN: &str = "kt_made-up-client-token";

struct Setup {
    sim: Simulator,
    proxy: Proxy,
    _pool: Pool,
    _dir: tempfile::TempDir,
}

fn sim_config(keys: &[(&str, &str)], rpm: u64, faults: Faults) -> SimConfig {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(rpm, 10_000_000, 100_000));
    SimConfig {
        keys: keys
            .iter()
            .map(|(k, p)| SimKey {
                key: (*k).into(),
                label: Some((*k).into()),
                project: Some((*p).into()),
                state: Default::default(),
            })
            .collect(),
        models,
        faults,
        ..SimConfig::default()
    }
}

/// A proxy on its own pool. `state` is the `[state]` table's body (file in `dir` by default).
async fn proxy_for(
    sim_url: &str,
    keys: &[(&str, &str)],
    rpm: u64,
    state: Option<&str>,
    tokens: bool,
    max_body: usize,
    dir: &Path,
) -> (Proxy, Pool) {
    let lines: String = keys
        .iter()
        .map(|(k, p)| format!("{k} project={p}\n"))
        .collect();
    std::fs::write(dir.join("keys.txt"), lines).unwrap();
    let state = state.map_or_else(
        || format!("dir = \"{}\"", dir.join("state").display()),
        str::to_owned,
    );
    let toml = format!(
        "[state]\n{state}\n[rotation]\nmax_wait = \"0s\"\n[models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 10000000\nrpd = 100000\n"
    );
    let mut env = Env::new();
    env.insert(
        "KEYTURN_KEYS_FILE".into(),
        dir.join("keys.txt").display().to_string(),
    );
    env.insert("GEMINI_BASE_URL".into(), sim_url.to_owned());
    let mut cfg = Config::from_toml(&toml, Path::new("test.toml")).unwrap();
    cfg.apply_env(&env);
    let pool = create_pool(&cfg, &env, dir).await.unwrap();
    let pcfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: if tokens {
            vec![("team".into(), digest(TOKEN))]
        } else {
            vec![]
        },
        max_body_bytes: max_body,
        max_in_flight: 16,
        ..ProxyConfig::default()
    };
    let state = Arc::new(ProxyState::new(
        pool.caller_for_version(&cfg, "v1beta").unwrap(),
        pool.caller_for_version(&cfg, "v1").unwrap(),
        pool.ledger.clone(),
        pool.clock.clone(),
        &pcfg,
    ));
    (Proxy::start(state, &pcfg).await.unwrap(), pool)
}

async fn setup(
    keys: &[(&str, &str)],
    rpm: u64,
    faults: Faults,
    tokens: bool,
    max_body: usize,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(sim_config(keys, rpm, faults))
        .await
        .unwrap();
    let (proxy, pool) = proxy_for(
        &sim.base_url(),
        keys,
        rpm,
        None,
        tokens,
        max_body,
        dir.path(),
    )
    .await;
    Setup {
        sim,
        proxy,
        _pool: pool,
        _dir: dir,
    }
}

fn body(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

async fn post(s: &Setup, path: &str, token: Option<&str>, b: &Value) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", s.proxy.base_url()))
        .json(b);
    if let Some(t) = token {
        r = r.header("x-goog-api-key", t);
    }
    r.send().await.unwrap()
}

const THREE: &[(&str, &str)] = &[
    ("made-up-proxy-1", "p1"),
    ("made-up-proxy-2", "p2"),
    ("made-up-proxy-3", "p3"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_and_passes_bodies_through_on_both_versions() {
    let s = setup(THREE, 1000, Faults::default(), false, 1 << 20).await;
    // The proxy confirms a model (GET models/{m}, no quota) before it first meters it; that probe
    // is counted by the simulator, so the spread is measured after a first call on each version.
    for version in ["v1beta", "v1"] {
        let r = post(
            &s,
            &format!("/{version}/models/{FLASH}:generateContent"),
            None,
            &json!({"contents": [{"parts": [{"text": "warm up"}]}]}),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let requests = |st: &Value, k: &str| {
        st["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["label"] == *k)
            .unwrap()["requests"]
            .as_u64()
            .unwrap()
    };
    let before = s.sim.state().stats();
    for i in 0..9 {
        let version = if i % 2 == 0 { "v1beta" } else { "v1" };
        // snake_case body: passed through unchanged, the upstream accepts it.
        let b = json!({"contents": [{"parts": [{"text": format!("hello {i}")}]}], "generation_config": {"max_output_tokens": 50}});
        let r = post(
            &s,
            &format!("/{version}/models/{FLASH}:generateContent"),
            None,
            &b,
        )
        .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["candidates"][0]["content"]["parts"][0]["text"].is_string()
                && v["usageMetadata"].is_object()
        );
    }
    let st = s.sim.state().stats();
    for (k, _) in THREE {
        assert_eq!(requests(&st, k) - requests(&before, k), 3, "{k}");
    }
    // Models list and embeddings pass through too.
    let r = reqwest::get(format!("{}/v1beta/models", s.proxy.base_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post(
        &s,
        "/v1beta/models/gemini-embedding-001:embedContent",
        None,
        &json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 8}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["embedding"]["values"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_missing_wrong_right_and_bearer() {
    let s = setup(&THREE[..1], 1000, Faults::default(), true, 1 << 20).await;
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    let r = post(&s, &path, None, &body("x")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "UNAUTHENTICATED"
    );
    assert_eq!(
        post(&s, &path, Some("kt_wrong"), &body("x")).await.status(),
        401
    );
    assert_eq!(post(&s, &path, Some(TOKEN), &body("x")).await.status(), 200);
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.proxy.base_url()))
        .bearer_auth(TOKEN)
        .json(&body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The client's token never went upstream; the pool's key did, in the header.
    let st = s.sim.state().stats();
    assert_eq!(st["keys"].as_array().unwrap().len(), 1);
    assert_eq!(st["query_key_uses"], 0);
    assert_eq!(
        reqwest::get(format!("{}/healthz", s.proxy.base_url()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", s.proxy.base_url()))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_answers_429_with_retry_info() {
    let s = setup(&THREE[..1], 1, Faults::default(), false, 1 << 20).await;
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    assert_eq!(post(&s, &path, None, &body("x")).await.status(), 200);
    let r = post(&s, &path, None, &body("y")).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let delay = v["error"]["details"][0]["retryDelay"].as_str().unwrap();
    let secs: u64 = delay.trim_end_matches('s').parse().unwrap();
    assert!((1..=61).contains(&secs), "{delay}");
    assert_eq!(
        s.sim.state().stats()["by_status"].get("429"),
        None,
        "keyturn refused; Gemini never had to"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_faults_pass_through_unchanged() {
    let s = setup(&THREE[..1], 1000, Faults::default(), false, 1 << 20).await;
    let r = post(
        &s,
        "/v1beta/models/gemini-2.5-flsh:generateContent",
        None,
        &body("x"),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("models/gemini-2.5-flsh is not found for API version v1beta")
    );
    let r = post(
        &s,
        &format!("/v1beta/models/{FLASH}:generateContent"),
        None,
        &json!({"contents": [], "bogus": 1}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Unknown name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_streamed_chunk_by_chunk() {
    let s = setup(
        &THREE[..1],
        1000,
        Faults {
            stream_chunk_delay_ms: 150,
            ..Faults::default()
        },
        false,
        1 << 20,
    )
    .await;
    let r = post(
        &s,
        &format!("/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"),
        None,
        &body("tell me a story about rivers and cities"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut reads = 0;
    let mut all = String::new();
    let mut stream = r.bytes_stream();
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        if !b.is_empty() {
            reads += 1;
            all.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let events: Vec<&str> = all.split("\r\n\r\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 2, "{all}");
    for e in &events {
        let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        assert!(v["candidates"].is_array());
    }
    // The upstream pauses between events; a buffering proxy would deliver them in one piece.
    assert!(
        reads >= events.len(),
        "{reads} reads for {} events",
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_are_refused() {
    let s = setup(&THREE[..1], 1000, Faults::default(), false, 2_000).await;
    let r = post(
        &s,
        &format!("/v1beta/models/{FLASH}:generateContent"),
        None,
        &body(&"x".repeat(5_000)),
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        s.sim.state().stats()["responses"],
        0,
        "nothing went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn two_proxies_on_one_redis_namespace_never_over_admit() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let ns = keyturn_store::testkit::unique_namespace("proxy");
    let keys = &THREE[..2];
    let sim = Simulator::start(sim_config(keys, 10, Faults::default()))
        .await
        .unwrap();
    let state = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nnamespace = \"{ns}\"",
        redis.url()
    );
    let mut proxies = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        // Each proxy is its own pool on the shared Redis namespace, as two replicas would be.
        let dir = tempfile::tempdir().unwrap();
        proxies.push(
            proxy_for(
                &sim.base_url(),
                keys,
                10,
                Some(&state),
                false,
                1 << 20,
                dir.path(),
            )
            .await,
        );
        dirs.push(dir);
    }
    let mut tasks = Vec::new();
    for i in 0..60 {
        let url = format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            proxies[i % 2].0.base_url()
        );
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&body("hi"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(ok, 20, "two projects × 10 a minute, across both proxies");
    let st = sim.state().stats();
    assert_eq!(
        st["by_status"].get("429"),
        None,
        "no 429 from Gemini: the proxies refused first"
    );
    for s in st["scopes"].as_array().unwrap() {
        assert!(s["peak_rpm"].as_u64().unwrap() <= 10);
    }
}
