//! The proxy's serving lanes, and how a proxy on them stops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

const KEYS: &[common::TestKey<'_>] = &[("made-up-lane-key-1", "a", "p1")];

/// `drain` takes `&mut self`, so nothing stops a caller from draining twice, or draining and
/// then shutting down (to end the lanes): the second must not wait on the accept loop's
/// finished task again.
#[tokio::test]
async fn a_proxy_drained_twice_then_shut_down_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    let (mut proxy, _pool) = common::proxy(&url, dir.path(), common::local(), KEYS).await;
    proxy.drain(Duration::from_secs(1)).await;
    proxy.drain(Duration::from_secs(1)).await;
    proxy.shutdown(Duration::from_secs(1)).await;
}
