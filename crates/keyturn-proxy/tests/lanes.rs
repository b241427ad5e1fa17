//! The proxy's serving lanes, and how a proxy on them stops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use keyturn_proxy::Proxy;
use keyturn_sim::{Limits, SimConfig, Simulator};

const FLASH: &str = "gemini-2.5-flash";

/// One `generateContent` through the proxy at `base`: its status.
async fn generate(base: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/v1beta/models/{FLASH}:generateContent"))
        .header("content-type", "application/json")
        .body(r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

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

/// What the namespace holds counted for the model this minute and today, as another process
/// (`observer`, which holds no grant) reads it.
async fn used(observer: &keyturn_services::view::StateView) -> (u64, u64) {
    let st = observer.ledger().status().await.unwrap();
    let s = st
        .scopes
        .iter()
        .find(|s| s.model == FLASH)
        .expect("the model's scope");
    (s.rpm_used, s.rpd_used)
}

/// A request on a lane takes a grant from Redis ahead of its need, and the ledger's timer for
/// the model, started by that request, gives back what was not spent when the grant's second
/// ends. The ledger outlives the proxy (a library user restarting the proxy on the same pool):
/// the timer must not die with the proxy's lanes, or the room stays taken for the day in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn grants_taken_on_a_lane_are_given_back_after_the_proxy_stops() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let ns = keyturn_store::testkit::unique_namespace("lanes");
    let mut models = std::collections::BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(100, 10_000_000, 1000));
    let sim = Simulator::start(SimConfig {
        keys: common::sim_keys(KEYS),
        models,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let state = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nnamespace = \"{ns}\"\n",
        redis.url()
    );
    let more = format!("[models.\"{FLASH}\"]\nrpm = 100\ntpm = 10000000\nrpd = 1000\n");
    let pool_on = |dir: &std::path::Path| {
        common::write_keys(dir, KEYS);
        let env = common::env(dir, &sim.base_url());
        let config = common::config(dir, &env, &state, &more);
        (config, env)
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, env) = pool_on(dir.path());
    let pool = keyturn_services::create_pool(&config, &env, dir.path())
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let (oconfig, oenv) = pool_on(other.path());
    let observer = keyturn_services::view::StateView::open(
        &oconfig,
        &oenv,
        other.path(),
        false,
        &[FLASH.into()],
    )
    .await
    .unwrap();
    let cfg = common::local();
    let proxy = Proxy::start(
        std::sync::Arc::new(common::state(&pool, &config, &cfg)),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(generate(&proxy.base_url()).await, 200);
    let (rpm, _) = used(&observer).await;
    assert!(rpm > 1, "the request took a grant ahead: {rpm}");
    proxy.shutdown(Duration::from_secs(1)).await;
    // The grant ends with its Redis second; the timer gives it back then.
    let mut last = (0, 0);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = used(&observer).await;
        if last == (1, 1) {
            return;
        }
    }
    panic!("the unspent grant was never given back: {last:?} counted for 1 request sent");
}
