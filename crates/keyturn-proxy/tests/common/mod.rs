//! What the proxy's tests share: a pool over a keys file and a config in a temp folder, a proxy
//! on that pool in front of a local upstream (the simulator or a test server), and raw HTTP/1.1
//! requests whose path and headers go out exactly as written (no client normalises them).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod affinity;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyturn_proxy::{Proxy, ProxyConfig, ProxyState, ResourceUpstream};
use keyturn_services::{Config, Env, Pool, create_pool};
use keyturn_sim::SimKey;

/// A key of a test pool: (secret, label, project).
pub type TestKey<'a> = (&'a str, &'a str, &'a str);

/// A proxy on loopback with default limits.
pub fn local() -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ProxyConfig::default()
    }
}

/// Writes `keys` to `dir/keys.txt`, one `secret label=… project=…` line each, as
/// `KEYTURN_KEYS_FILE` reads them.
pub fn write_keys(dir: &Path, keys: &[TestKey<'_>]) {
    let lines: String = keys
        .iter()
        .map(|(k, l, p)| format!("{k} label={l} project={p}\n"))
        .collect();
    std::fs::write(dir.join("keys.txt"), lines).unwrap();
}

/// The environment of a test pool: its keys file in `dir`, and `upstream` as `GEMINI_BASE_URL`.
pub fn env(dir: &Path, upstream: &str) -> Env {
    let mut env = Env::new();
    env.insert(
        "KEYTURN_KEYS_FILE".into(),
        dir.join("keys.txt").display().to_string(),
    );
    env.insert("GEMINI_BASE_URL".into(), upstream.to_owned());
    env
}

/// The configuration the proxy tests run under, with `env` applied: the state in `dir/state`
/// (`state` adds lines to `[state]`, e.g. a Redis backend), no waiting for capacity, two quick
/// attempts per call, then `more` (e.g. `[models."…"]` limits).
pub fn config(dir: &Path, env: &Env, state: &str, more: &str) -> Config {
    let toml = format!(
        "[state]\n{state}dir = \"{}\"\n[rotation]\nmax_wait = \"0s\"\n[retry]\nmax_attempts = 2\nbase_backoff = \"1ms\"\nmax_backoff = \"2ms\"\n{more}",
        dir.join("state").display()
    );
    let mut config = Config::from_toml(&toml, Path::new("test.toml")).unwrap();
    config.apply_env(env);
    config
}

/// The proxy's state over `pool`: its callers for `v1beta` and `v1`, its ledger and clock.
pub fn state(pool: &Pool, config: &Config, cfg: &ProxyConfig) -> ProxyState {
    ProxyState::new(
        pool.caller_for_version(config, "v1beta").unwrap(),
        pool.caller_for_version(config, "v1").unwrap(),
        pool.ledger.clone(),
        pool.clock.clone(),
        cfg,
    )
}

/// The transports resource calls go upstream with.
pub fn resource_upstream(config: &Config) -> ResourceUpstream {
    ResourceUpstream {
        v1beta: keyturn_services::transport(config, "v1beta").unwrap(),
        v1: keyturn_services::transport(config, "v1").unwrap(),
    }
}

/// The simulator's view of the same keys (valid).
pub fn sim_keys(keys: &[TestKey<'_>]) -> Vec<SimKey> {
    keys.iter()
        .map(|(k, l, p)| SimKey {
            key: (*k).into(),
            label: Some((*l).into()),
            project: Some((*p).into()),
            state: Default::default(),
        })
        .collect()
}

/// A proxy in front of `upstream` over these keys, with its state in `dir`, no waiting for
/// capacity and two quick attempts per call.
pub async fn proxy(
    upstream: &str,
    dir: &Path,
    cfg: ProxyConfig,
    keys: &[TestKey<'_>],
) -> (Proxy, Pool) {
    write_keys(dir, keys);
    let env = env(dir, upstream);
    let config = config(dir, &env, "", "");
    let pool = create_pool(&config, &env, dir).await.unwrap();
    let state = Arc::new(state(&pool, &config, &cfg));
    (Proxy::start(state, &cfg).await.unwrap(), pool)
}

/// One raw HTTP/1.1 request (`Host: 127.0.0.1`, `headers` as given, each ending in `\r\n`); the
/// answer's status and its whole text.
pub fn raw(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Uploads a small text file straight to the upstream (`base`: the simulator) with a pool key,
/// past any proxy, as another tool (or a keyturn that recorded no owner) would: the upstream's
/// answer (`file.name`, `file.uri`).
pub async fn upload_upstream(base: &str, key: &str, text: &str) -> serde_json::Value {
    let boundary = "b0";
    let body = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{\"file\": {{}}}}\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n"
    );
    reqwest::Client::new()
        .post(format!("{base}/upload/v1beta/files?uploadType=multipart"))
        .header("x-goog-api-key", key)
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
        .unwrap()
}
