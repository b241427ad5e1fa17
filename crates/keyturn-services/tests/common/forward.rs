//! A forward proxy written for the tests: takes absolute-form requests (`POST http://host/…`),
//! opens a connection to that host and relays both ways, keeping every byte the client sent.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A forward proxy written for the test: takes absolute-form requests (`POST http://host/…`),
/// opens a connection to that host and relays both ways, keeping every byte the client sent.
pub struct ForwardProxy {
    pub url: String,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl ForwardProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let seen = sent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, seen.clone()));
            }
        });
        Self { url, sent }
    }

    pub fn saw(&self, what: &str) -> bool {
        let sent = self.sent.lock();
        sent.windows(what.len()).any(|w| w == what.as_bytes())
    }
}

async fn relay(mut client: TcpStream, seen: Arc<Mutex<Vec<u8>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let target = line.split(' ').nth(1).unwrap_or("");
    let host = target
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    let Ok(upstream) = TcpStream::connect(&host).await else {
        return;
    };
    seen.lock().extend_from_slice(&head);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    uw.write_all(&head).await.ok();
    let up = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let n = cr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.lock().extend_from_slice(&buf[..n]);
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    tokio::io::copy(&mut ur, &mut cw).await.ok();
    up.abort();
}
