//! `keyturn serve` reloads its configuration without a restart (#17 item 3), tested over the
//! real binary and the simulator: a key added to the keys file takes requests after SIGHUP, a
//! changed limit holds at once, a key removed while a request is in flight finishes that request
//! and gets no new one, and a broken configuration (noticed by the file watch) is refused with
//! the old one kept — on the file backend and on Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::Value;

const FLASH: &str = "gemini-2.5-flash";
const KEYS: &[(&str, &str)] = &[
    ("AIzaSyTEST-reload-key-number-one-0001", "k1"),
    ("AIzaSyTEST-reload-key-number-two-0002", "k2"),
    ("AIzaSyTEST-reload-key-number-three-03", "k3"),
];

fn keys_file(dir: &Path, labels: &[&str]) {
    let lines: String = KEYS
        .iter()
        .filter(|(_, l)| labels.contains(l))
        .map(|(k, l)| format!("{k} label={l} project=p-{l}\n"))
        .collect();
    std::fs::write(dir.join("keys.txt"), lines).unwrap();
}

fn toml(dir: &Path, rpm: u64, extra: &str) {
    std::fs::write(
        dir.join("keyturn.toml"),
        format!(
            "{extra}[retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
             [models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 1000000\nrpd = 10000\n"
        ),
    )
    .unwrap();
}

struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hangup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    async fn status(&self) -> Value {
        reqwest::get(self.url("/admin/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The labels `/admin/status` shows, once `done` holds for them (reloads are asynchronous).
    async fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..600 {
            let st = self.status().await;
            if done(&st) {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keyturn serve never showed {what}: {}", self.status().await);
    }

    async fn generate(&self) -> reqwest::StatusCode {
        generate(self.addr).await
    }

    /// Stops it (SIGTERM) and returns everything it printed.
    fn stop(mut self) -> String {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .ok();
        let mut out = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child.wait().unwrap();
        out
    }
}

async fn generate(addr: SocketAddr) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!(
            "http://{addr}/v1beta/models/{FLASH}:generateContent"
        ))
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "hello there"}]}]}))
        .send()
        .await
        .unwrap()
        .status()
}

fn labels(st: &Value) -> Vec<String> {
    st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap().to_owned())
        .collect()
}

fn sent(sim: &Simulator) -> BTreeMap<String, u64> {
    sim.state().stats()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let generate = k["by_route"]["generateContent"].as_u64().unwrap_or(0);
            (k["label"].as_str().unwrap().to_owned(), generate)
        })
        .collect()
}

async fn serve(dir: &Path, sim: &Simulator, redis: Option<&str>) -> Served {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYTURN_KEYS_FILE", dir.join("keys.txt"))
        .env("KEYTURN_CONFIG", dir.join("keyturn.toml"))
        .env("KEYTURN_STATE_DIR", dir.join("state"))
        .env("GEMINI_BASE_URL", sim.base_url())
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = redis {
        c.env("KEYTURN_REDIS_URL", url);
    }
    let mut child = c.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let head = tokio::task::spawn_blocking(move || {
        let mut head = String::new();
        while !head.contains("keyturn serve listening on ") {
            if stdout.read_line(&mut head).unwrap() == 0 {
                break;
            }
        }
        // Keep reading so the pipe never fills.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        head
    })
    .await
    .unwrap();
    let addr = head
        .split("keyturn serve listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("keyturn serve printed no address: {head}"))
        .parse()
        .unwrap();
    Served { child, addr }
}

async fn simulator() -> Simulator {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(1000, 1_000_000, 10_000));
    Simulator::start(SimConfig {
        keys: KEYS
            .iter()
            .map(|(k, l)| SimKey {
                key: (*k).into(),
                label: Some((*l).into()),
                project: Some(format!("p-{l}")),
                state: KeyState::Valid,
            })
            .collect(),
        models,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

async fn reload_without_a_restart(redis: Option<(&str, &str)>) {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let state = match redis {
        Some((_, namespace)) => format!("[state]\nnamespace = \"{namespace}\"\n"),
        None => String::new(),
    };
    keys_file(dir.path(), &["k1", "k2"]);
    toml(dir.path(), 100, &state);
    let served = serve(dir.path(), &sim, redis.map(|r| r.0)).await;

    for _ in 0..4 {
        assert_eq!(served.generate().await, 200);
    }
    assert_eq!(sent(&sim)["k3"], 0);

    // A key joins, and the limit changes: after SIGHUP the next requests use the new key.
    keys_file(dir.path(), &["k1", "k2", "k3"]);
    toml(dir.path(), 50, &state);
    served.hangup();
    let st = served
        .until("k3 and rpm 50", |st| {
            labels(st).contains(&"k3".to_owned())
                && st["reload"]["ok"] == true
                && st["scopes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["limits"]["rpm"] == 50)
        })
        .await;
    assert_eq!(st["reload"]["ok"], true, "{st}");
    for _ in 0..6 {
        assert_eq!(served.generate().await, 200);
    }
    assert!(sent(&sim)["k3"] >= 1, "{:?}", sent(&sim));

    // Only k3 now; then k3 is removed while a request is in flight on it.
    keys_file(dir.path(), &["k3"]);
    served.hangup();
    served.until("k3 alone", |st| labels(st) == ["k3"]).await;
    let before = sent(&sim);
    sim.state().set_faults(Faults {
        latency_ms: 1500,
        ..Faults::default()
    });
    let addr = served.addr;
    let in_flight = tokio::spawn(generate(addr));
    served
        .until("a request in flight", |st| st["requests"]["in_flight"] == 1)
        .await;
    keys_file(dir.path(), &["k1"]);
    served.hangup();
    let st = served.until("k1 alone", |st| labels(st) == ["k1"]).await;
    assert_eq!(
        st["requests"]["in_flight"], 1,
        "the request on k3 is still out: {st}"
    );
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the request in flight finished"
    );
    sim.state().set_faults(Faults::default());
    for _ in 0..4 {
        assert_eq!(served.generate().await, 200);
    }
    let after = sent(&sim);
    assert_eq!(
        after["k3"],
        before["k3"] + 1,
        "k3 got only the request it had: {after:?}"
    );
    assert_eq!(after["k1"], before["k1"] + 4, "{after:?}");

    // A broken configuration, noticed by the file watch, is refused; the old one stays.
    std::fs::write(
        dir.path().join("keyturn.toml"),
        "[rotation]\npolicy = \"fastest\"\n",
    )
    .unwrap();
    let st = served
        .until("a refused reload", |st| st["reload"]["ok"] == false)
        .await;
    assert_eq!(st["reload"]["trigger"], "file", "{st}");
    assert!(
        st["reload"]["error"].as_str().unwrap().contains("policy"),
        "{st}"
    );
    assert_eq!(labels(&st), ["k1"]);
    assert_eq!(served.generate().await, 200);
    // A keys file cut short to nothing leaves no key: refused too.
    std::fs::write(dir.path().join("keys.txt"), "# nothing here yet\n").unwrap();
    toml(dir.path(), 50, &state);
    served.hangup();
    let st = served
        .until("a second refused reload", |st| {
            st["reload"]["ok"] == false && st["reload"]["trigger"] == "signal"
        })
        .await;
    assert_eq!(labels(&st), ["k1"]);
    assert_eq!(served.generate().await, 200);

    let out = served.stop();
    assert!(out.contains("reload refused"), "{out}");
    for (k, _) in KEYS {
        assert!(!out.contains(k), "a key reached the output: {out}");
        assert!(!st.to_string().contains(k));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_keys_and_limits_without_a_restart_on_the_file_backend() {
    reload_without_a_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn serve_reloads_keys_and_limits_without_a_restart_on_redis() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let namespace = format!("reload-{}", std::process::id());
    reload_without_a_restart(Some((redis.url(), &namespace))).await;
}
