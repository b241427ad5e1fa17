//! An egress route that is hostile or broken — nobody listening, garbage, a refusal naming
//! itself, a redirect — fails the request as a transport fault whose words never carry the
//! route's credentials, nor the key. Over real sockets, for each scheme a route may have.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_core::ApiKey;
use keyturn_gemini::{EgressRoute, KeyHeader, Transport, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PASSWORD: &str = "hunter2secretEgress";
const KEY: &str = "AIzaSyTESTegressHostileKey0000000001";

/// A "proxy" that reads what comes and answers `reply`, then closes.
async fn answering(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            });
        }
    });
    port
}

async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_route_fails_without_showing_its_credentials() {
    let replies: [&'static [u8]; 4] = [
        b"\x05\xff\x00garbage\r\n\r\n",
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/steal\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ];
    let mut ports = vec![dead_port().await];
    for r in replies {
        ports.push(answering(r).await);
    }
    let key = ApiKey::new(KEY).unwrap();
    for scheme in ["http", "https", "socks5", "socks5h"] {
        for base in ["http://127.0.0.1:9", "https://generativelanguage.example"] {
            for port in &ports {
                let route =
                    EgressRoute::parse(&format!("{scheme}://user:{PASSWORD}@127.0.0.1:{port}"))
                        .unwrap();
                let cfg = TransportConfig {
                    base_url: base.to_owned(),
                    ..TransportConfig::default()
                };
                let t = Transport::with_routes(&cfg, &[(key.fingerprint(), route)]).unwrap();
                let url = t.model_url("gemini-2.5-flash", "generateContent").unwrap();
                let r = t
                    .send_as(
                        reqwest::Method::POST,
                        KeyHeader::GoogApiKey,
                        &key,
                        &url,
                        reqwest::header::HeaderMap::new(),
                        Some(reqwest::Body::from("{}")),
                    )
                    .await;
                let words = match r {
                    Ok(resp) => format!("{} {:?}", resp.status(), resp.headers()),
                    Err(e) => format!("{e} {e:?}"),
                };
                for secret in [PASSWORD, KEY] {
                    assert!(
                        !words.contains(secret),
                        "{scheme} to {base} via port {port}: {words}"
                    );
                }
            }
        }
    }
}
