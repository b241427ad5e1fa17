//! Warnings by webhook: a local HTTP receiver gets exactly the expected warnings, each once,
//! with the documented body and no key, and the first is retried after the receiver's 500.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{FLASH, KEYS, RPD};
use parking_lot::Mutex;
use serde_json::Value;

#[derive(Default)]
struct Receiver {
    posts: AtomicUsize,
    accepted: Mutex<Vec<Value>>,
}

async fn hook(State(r): State<Arc<Receiver>>, body: String) -> StatusCode {
    // The very first POST fails: the sender must retry it.
    if r.posts.fetch_add(1, Ordering::SeqCst) == 0 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.accepted.lock().push(serde_json::from_str(&body).unwrap());
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_warning_is_delivered_once_and_the_first_is_retried_after_a_500() {
    let receiver = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = common::config(
        dir.path(),
        &sim,
        &format!(
            "[notify]\nwebhook_url = \"{url}\"\ncheck_interval = \"50ms\"\nthresholds = [80, 100]\n"
        ),
    );
    let services = keyturn_services::create_gemini_services(&cfg, &env, dir.path())
        .await
        .unwrap();
    // 4 of 5 in each live project: 80 %. Wait (bounded) for the monitor to announce it.
    assert_eq!(
        common::spend(&*services.caller, 2 * (RPD - 1)).await,
        2 * (RPD - 1)
    );
    let mut seen = 0;
    for _ in 0..400 {
        seen = receiver.accepted.lock().len();
        if seen >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(seen, 3, "80 % twice and the disabled key");
    // Then the rest of the day.
    let ok = common::spend_the_day(&*services.caller).await;
    assert_eq!(ok, 2, "two live projects, {RPD} a day each");
    // Watching more does not warn again.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    services.state.shutdown().await.unwrap();

    let got = receiver.accepted.lock().clone();
    let mut events: Vec<String> = got
        .iter()
        .map(|w| {
            format!(
                "{} {} {} {}",
                w["event"].as_str().unwrap(),
                w["project"].as_str().unwrap_or("-"),
                w["threshold_pct"]
                    .as_u64()
                    .map_or("-".into(), |t| t.to_string()),
                w["key"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "key_disabled proj-c - gone",
            "model_exhausted - - -",
            "quota_threshold proj-a 100 -",
            "quota_threshold proj-a 80 -",
            "quota_threshold proj-b 100 -",
            "quota_threshold proj-b 80 -",
        ],
        "{got:#?}"
    );
    assert_eq!(
        receiver.posts.load(Ordering::SeqCst),
        got.len() + 1,
        "one retry, after the 500"
    );
    let day = got[0]["day"].as_str().unwrap().to_owned();
    for w in &got {
        assert_eq!(w["source"], "keyturn");
        assert_eq!(w["version"], 1);
        assert_eq!(w["day"], day.as_str(), "{w}");
        assert!(w["at"].as_str().unwrap().ends_with('Z'), "{w}");
        assert!(!w["message"].as_str().unwrap().is_empty());
        if w["event"] == "quota_threshold" {
            assert_eq!(w["model"], FLASH);
            assert_eq!(w["limit"], RPD);
            let t = w["threshold_pct"].as_u64().unwrap();
            assert_eq!(w["severity"], if t == 100 { "critical" } else { "warning" });
            assert!(w["used"].as_u64().unwrap() * 100 >= t * RPD, "{w}");
        }
        if w["event"] == "key_disabled" {
            assert_eq!(w["reason"], "invalid key");
            assert_eq!(w["fingerprint"].as_str().unwrap().len(), 8);
        }
    }
    let all = serde_json::to_string(&got).unwrap();
    for (k, ..) in KEYS {
        assert!(!all.contains(k), "a warning carried a key");
    }

    // A second process on the same state (a restart) does not repeat today's warnings.
    let services = keyturn_services::create_gemini_services(&cfg, &env, dir.path())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    services.state.shutdown().await.unwrap();
    assert_eq!(
        receiver.accepted.lock().len(),
        got.len(),
        "nothing new after a restart"
    );
}
