//! What the hostile-client tests share: a proxy on its own pool in front of a local upstream, and
//! raw HTTP/1.1 requests whose path and headers go out exactly as written (no client normalises
//! them).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyturn_proxy::{Proxy, ProxyConfig, ProxyState};
use keyturn_services::{Config, Env, Pool, create_pool};

/// A proxy on loopback with default limits.
pub fn local() -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ProxyConfig::default()
    }
}

/// A proxy in front of `upstream` over these keys ((secret, label, project)), with its state in
/// `dir`, no waiting for capacity and two quick attempts per call.
pub async fn proxy(
    upstream: &str,
    dir: &Path,
    cfg: ProxyConfig,
    keys: &[(&str, &str, &str)],
) -> (Proxy, Pool) {
    let lines: String = keys
        .iter()
        .map(|(k, l, p)| format!("{k} label={l} project={p}\n"))
        .collect();
    std::fs::write(dir.join("keys.txt"), lines).unwrap();
    let toml = format!(
        "[state]\ndir = \"{}\"\n[rotation]\nmax_wait = \"0s\"\n[retry]\nmax_attempts = 2\nbase_backoff = \"1ms\"\nmax_backoff = \"2ms\"\n",
        dir.join("state").display()
    );
    let mut env = Env::new();
    env.insert(
        "KEYTURN_KEYS_FILE".into(),
        dir.join("keys.txt").display().to_string(),
    );
    env.insert("GEMINI_BASE_URL".into(), upstream.to_owned());
    let mut config = Config::from_toml(&toml, Path::new("test.toml")).unwrap();
    config.apply_env(&env);
    let pool = create_pool(&config, &env, dir).await.unwrap();
    let state = Arc::new(ProxyState::new(
        pool.caller_for_version(&config, "v1beta").unwrap(),
        pool.caller_for_version(&config, "v1").unwrap(),
        pool.ledger.clone(),
        pool.clock.clone(),
        &cfg,
    ));
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
