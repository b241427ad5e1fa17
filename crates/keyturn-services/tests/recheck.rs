//! Dead keys heal: a disabled key is asked again, at no quota cost, `[recheck] interval` after it
//! was disabled; while the server still refuses it, it stays out; once it answers, it is back in
//! the pool, logged and announced by webhook (`key_reenabled`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use common::KEYS;
use parking_lot::Mutex;
use serde_json::Value;

async fn hook(State(got): State<Arc<Mutex<Vec<Value>>>>, body: String) {
    got.lock().push(serde_json::from_str(&body).unwrap());
}

fn disabled(st: &keyturn_core::PoolStatus, label: &str) -> bool {
    st.keys
        .iter()
        .find(|k| k.label == label)
        .unwrap()
        .disabled
        .is_some()
}

fn probes_of(sim: &keyturn_sim::Simulator, label: &str) -> u64 {
    let stats = sim.state().stats();
    stats["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == label)
        .map_or(0, |k| k["requests"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_key_comes_back_when_it_answers_again() {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = common::config(
        dir.path(),
        &sim,
        &format!(
            "[notify]\nwebhook_url = \"{url}\"\ncheck_interval = \"50ms\"\nthresholds = []\n[recheck]\ninterval = \"300ms\"\n"
        ),
    );
    let services = keyturn_services::create_gemini_services(&cfg, &env, dir.path())
        .await
        .unwrap();
    // Round-robin reaches the invalid key on one of the first calls.
    assert_eq!(common::spend(&*services.caller, 3).await, 3);
    let gone = KEYS.iter().find(|k| !k.3).unwrap().1;
    assert!(disabled(&services.ledger.status().await.unwrap(), gone));

    // Still refused: re-checked, and stays out.
    let before = probes_of(&sim, gone);
    for _ in 0..400 {
        if probes_of(&sim, gone) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        probes_of(&sim, gone) > before,
        "the disabled key was asked again"
    );
    assert!(disabled(&services.ledger.status().await.unwrap(), gone));

    // The key works again (its owner fixed it): it is back within an interval or so.
    assert!(
        sim.state()
            .set_key_state(gone, keyturn_sim::KeyState::Valid)
    );
    let mut back = false;
    for _ in 0..400 {
        if !disabled(&services.ledger.status().await.unwrap(), gone) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "the key was re-enabled once it answered");
    for _ in 0..200 {
        if got.lock().iter().any(|w| w["event"] == "key_reenabled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    services.state.shutdown().await.unwrap();
    let events = got.lock().clone();
    let back: Vec<_> = events
        .iter()
        .filter(|w| w["event"] == "key_reenabled")
        .collect();
    assert_eq!(back.len(), 1, "{events:?}");
    assert_eq!(back[0]["key"], gone);
    assert_eq!(back[0]["severity"], "info");
    assert_eq!(back[0]["reason"], "invalid key");
    let all = serde_json::to_string(&events).unwrap();
    for (k, ..) in KEYS {
        assert!(!all.contains(k), "a key reached the webhook");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rechecking_can_be_turned_off() {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = common::config(
        dir.path(),
        &sim,
        "[notify]\ncheck_interval = \"50ms\"\n[recheck]\nenabled = false\ninterval = \"50ms\"\n",
    );
    let services = keyturn_services::create_gemini_services(&cfg, &env, dir.path())
        .await
        .unwrap();
    assert_eq!(common::spend(&*services.caller, 3).await, 3);
    let gone = KEYS.iter().find(|k| !k.3).unwrap().1;
    let before = probes_of(&sim, gone);
    assert!(
        sim.state()
            .set_key_state(gone, keyturn_sim::KeyState::Valid)
    );
    // Many monitor ticks and several intervals pass: nothing asks the key.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(probes_of(&sim, gone), before);
    assert!(disabled(&services.ledger.status().await.unwrap(), gone));
    services.state.shutdown().await.unwrap();
}
