//! A failing egress route, as the binary shows it (#17), over the real binary and real sockets:
//! `keyturn serve`'s `/admin/status` (what the console shows) names the route without its
//! credentials, how it fails and since when, and says the key is cooling, not dead; `keyturn
//! keys check` asks through the route and, with the route dead, says so and rejects no key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use common::{FLASH, Key, Setup, World, run_cmd, text};
use keyturn_sim::{Faults, Limits};
use serde_json::Value;

const KEYS: &[Key] = &[
    ("made-up-route-key-one", "k1", "proj-a"),
    ("made-up-route-key-two", "k2", "proj-b"),
];

/// A world whose every key leaves through `http://user:hunter2secret@{dead}`, where nothing
/// listens.
async fn world() -> (World, String) {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(1000, 1_000_000, 10_000));
    let w = World::start(Setup {
        keys: KEYS.to_vec(),
        invalid: vec![],
        toml: format!(
            "[http]\nproxy = \"http://user:hunter2secret@{dead}\"\n\
             [retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 3\n\
             [rotation]\nmax_wait = \"0s\"\n\
             [models.\"{FLASH}\"]\nrpm = 1000\ntpm = 1000000\nrpd = 10000\n"
        ),
        models,
        faults: Faults::default(),
    })
    .await;
    (w, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_names_a_failing_route_as_the_cause_and_the_key_as_cooling() {
    let (w, dead) = world().await;
    let mut child = w
        .command(&["serve", "--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    while !head.contains("listening on http://") {
        assert!(stdout.read_line(&mut head).unwrap() > 0, "{head}");
    }
    let addr = head
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let r = reqwest::Client::new()
        .post(format!(
            "http://{addr}/v1beta/models/{FLASH}:generateContent"
        ))
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "hello"}]}]}))
        .send()
        .await
        .unwrap();
    assert!(
        !r.status().is_success(),
        "nothing can be sent: {}",
        r.status()
    );
    let st: Value = reqwest::get(format!("http://{addr}/admin/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = st["keys"].as_array().unwrap();
    let tried: Vec<&Value> = keys.iter().filter(|k| !k["route"].is_null()).collect();
    assert!(!tried.is_empty(), "no key names its failing route: {st}");
    for k in tried {
        assert_eq!(k["route"]["route"], format!("http://{dead}"), "{k}");
        assert_eq!(k["route"]["fault"], "unreachable", "{k}");
        assert!(k["route"]["since_ms"].as_i64().unwrap() > 0, "{k}");
        assert_ne!(k["state"], "disabled", "{k}");
        let reason = k["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("egress route http://{dead} unreachable since"))
                && reason.contains("cooling, not dead"),
            "{reason}"
        );
    }
    assert!(!st.to_string().contains("hunter2secret"), "{st}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).ok();
    child.wait().unwrap();
    assert!(!err.contains("hunter2secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_asks_through_the_route_and_a_dead_route_rejects_no_key() {
    let (w, dead) = world().await;
    let o = run_cmd(w.command(&["keys", "check"])).await;
    let said = text(&o);
    // No key could be confirmed (exit 1), none was rejected (that would be 4).
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(!said.contains("REJECTED"), "{said}");
    assert!(
        said.contains(&format!("egress route http://{dead} unreachable")),
        "{said}"
    );
    assert!(!said.contains("hunter2secret"), "{said}");
    // The simulator heard nothing: every check went to the (dead) route, none straight out.
    assert_eq!(w.stats()["keys"][0]["requests"], 0, "{}", w.stats());
    assert_eq!(w.stats()["keys"][1]["requests"], 0, "{}", w.stats());
}
