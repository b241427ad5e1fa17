//! `keyturn console` (#17): the console and admin API of `keyturn serve` over a state folder or
//! a Redis namespace, tested over the real binary, real sockets and the simulator: it follows a
//! running seed's state file without taking its lock, refuses actions read-only (403) and does
//! them with `--allow-actions` (saved, and refused with exit 2 while another process holds the
//! lock), shares a Redis namespace with a proxy both ways, refuses to listen beyond loopback
//! without an admin token, and gives a client token 401.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use common::{EMBED, FLASH, Key, Setup, World, run_cmd, text};
use keyturn_sim::{Faults, Limits};
use serde_json::Value;

const KEYS: &[Key] = &[
    ("made-up-console-key-one", "k1", "proj-a"),
    ("made-up-console-key-two", "k2", "proj-b"),
];

async fn world(latency_ms: u64, extra_toml: &str) -> World {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(1000, 1_000_000, 10_000));
    models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
    World::start(Setup {
        keys: KEYS.to_vec(),
        invalid: vec![],
        toml: format!(
            "{extra_toml}[retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
             [models.\"{FLASH}\"]\nrpm = 1000\ntpm = 1000000\nrpd = 10000\n\
             [models.\"{EMBED}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n"
        ),
        models,
        faults: Faults {
            latency_ms,
            ..Faults::default()
        },
    })
    .await
}

/// A running `keyturn console` or `keyturn serve`, with the address it printed.
struct Running {
    child: Child,
    addr: SocketAddr,
}

/// Starts `c` (a console or serve on `127.0.0.1:0`) and reads the address it prints.
async fn start(mut c: Command, marker: &'static str) -> Running {
    let mut child = c.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let head = tokio::task::spawn_blocking(move || {
        let mut head = String::new();
        while !head.contains(marker) {
            if stdout.read_line(&mut head).unwrap() == 0 {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        head
    })
    .await
    .unwrap();
    let addr = head
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split(['/', ' ']).next())
        .unwrap_or_else(|| {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("no address printed: {head}\n{err}")
        })
        .parse()
        .unwrap();
    Running { child, addr }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path)).await.unwrap()
    }

    async fn status(&self) -> Value {
        let r = self.get("/admin/status").await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the status until `done` holds for it.
    async fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..600 {
            let st = self.status().await;
            if done(&st) {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never saw {what}: {}", self.status().await);
    }

    /// SIGTERM, then everything it wrote to stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .ok();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .ok();
        let code = self.child.wait().unwrap().code();
        (code, err)
    }
}

async fn console(w: &World, args: &[&str]) -> Running {
    let mut all = vec!["console", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    start(w.command(&all), "keyturn console on http://").await
}

async fn serve(w: &World, env: &[(&str, &str)]) -> Running {
    let mut c = w.command(&["serve", "--listen", "127.0.0.1:0"]);
    for (k, v) in env {
        c.env(k, v);
    }
    start(c, "keyturn serve listening on http://").await
}

fn key<'a>(st: &'a Value, label: &str) -> &'a Value {
    st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == label)
        .unwrap_or_else(|| panic!("no key {label} in {st}"))
}

/// Requests sent today, every scope together.
fn sent(st: &Value) -> u64 {
    st["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rpd_used"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_console_follows_a_running_seed_without_its_lock_and_refuses_actions() {
    // Slow answers, one at a time, so the seed runs for several of the console's refreshes.
    let w = world(250, "").await;
    let c = console(&w, &[]).await;
    let st = c.status().await;
    assert_eq!(st["actions"], false, "{st}");
    assert!(
        st["view"]["source"]
            .as_str()
            .unwrap()
            .contains("(read-only)"),
        "{st}"
    );
    assert_eq!(key(&st, "k1")["state"], "usable");
    assert_eq!(key(&st, "k2")["project"], "proj-b");

    let mut seed = w.seed_cmd("out");
    seed.args(["--concurrency", "1", "--requests", "1"]);
    let mut seed = seed.spawn().unwrap();
    // The seed's use moves in the console while it runs.
    let mut seen = Vec::new();
    let finished = loop {
        if let Some(status) = seed.try_wait().unwrap() {
            break status;
        }
        let n = sent(&c.status().await);
        if n > 0 && seen.last() != Some(&n) {
            seen.push(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut out = String::new();
    seed.stderr.take().unwrap().read_to_string(&mut out).ok();
    assert!(
        finished.success(),
        "the seed failed beside the console: {out}"
    );
    assert!(
        seen.len() >= 2,
        "the console showed no movement while the seed ran: {seen:?}"
    );
    // Once the seed is done, the console shows what the state file holds.
    let status = run_cmd(w.command(&["status", "--json"])).await;
    let stored: Value = serde_json::from_slice(&status.stdout).unwrap();
    let want = sent(&stored);
    let st = c
        .until("the seed's last write", |st| sent(st) == want)
        .await;
    assert!(want > *seen.first().unwrap(), "{seen:?} then {want}");
    assert!(st["view"]["read_at_ms"].as_i64().is_some(), "{st}");
    let hist: Value = c.get("/admin/history").await.json().await.unwrap();
    assert!(
        hist["days"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["model"] == FLASH && d["requests"].as_u64().unwrap() > 0),
        "{hist}"
    );

    // Read-only: every action is refused, naming what allows it, and nothing changes.
    for path in [
        "/admin/keys/k1/disable",
        "/admin/keys/k1/reset",
        "/admin/keys/k1/enable",
        "/admin/keys/k1/recheck",
        "/admin/scopes/reset",
    ] {
        let (code, body) = c.post(path).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-actions"),
            "{body}"
        );
    }
    assert_eq!(key(&c.status().await, "k1")["state"], "usable");
    let (code, err) = c.stop();
    assert_eq!(code, Some(0), "{err}");
    for (k, _, _) in KEYS {
        assert!(!err.contains(k), "a key reached the output: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_take_the_lock_and_are_saved_and_a_held_lock_is_exit_2() {
    let w = world(0, "").await;
    let c = console(&w, &["--allow-actions"]).await;
    assert_eq!(c.status().await["actions"], true);
    let (code, body) = c.post("/admin/keys/k1/disable").await;
    assert_eq!(code, 200, "{body}");
    let st = c
        .until("k1 disabled", |st| key(st, "k1")["state"] == "disabled")
        .await;
    assert_eq!(key(&st, "k1")["by_admin"], true);
    let ev: Value = c.get("/admin/events").await.json().await.unwrap();
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "admin_disable" && e["key"] == "k1"),
        "{ev}"
    );
    let (code, err) = c.stop();
    assert_eq!(code, Some(0), "{err}");
    // Saved: the next reader sees the operator's disable.
    let status = run_cmd(w.command(&["status", "--json"])).await;
    let stored: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        stored["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["label"] == "k1" && !k["disabled"].is_null()),
        "{}",
        text(&status)
    );

    // A proxy holds the state folder: the console with actions is refused, exit 2, saying why.
    let s = serve(&w, &[]).await;
    let refused =
        run_cmd(w.command(&["console", "--listen", "127.0.0.1:0", "--allow-actions"])).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let said = text(&refused);
    assert!(said.contains("locked"), "{said}");
    assert!(said.contains("without --allow-actions"), "{said}");
    // Read-only, it runs beside the proxy and sees the disable the other console made.
    let c = console(&w, &[]).await;
    assert_eq!(key(&c.status().await, "k1")["state"], "disabled");
    c.stop();
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_without_an_admin_token_it_refuses_to_start() {
    let w = world(0, "").await;
    let o = run_cmd(w.command(&["console", "--listen", "0.0.0.0:0"])).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("without an admin token"), "{}", text(&o));
}

fn hex(d: [u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_gets_401_and_an_admin_token_gets_in() {
    let (client, admin) = (
        "client-token-for-console-test",
        "admin-token-for-console-test",
    );
    let toml = format!(
        "[[serve.tokens]]\nlabel = \"team\"\nsha256 = \"{}\"\n\
         [[serve.admin_tokens]]\nlabel = \"ops\"\nsha256 = \"{}\"\n",
        hex(keyturn_proxy::digest(client)),
        hex(keyturn_proxy::digest(admin))
    );
    let w = world(0, &toml).await;
    let c = console(&w, &[]).await;
    let http = reqwest::Client::new();
    for path in ["/admin/status", "/console", "/admin/history"] {
        let r = http
            .get(c.url(path))
            .bearer_auth(client)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http.get(c.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = http
            .get(c.url(path))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the admin token");
    }
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn on_redis_the_console_and_a_proxy_see_each_others_changes() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let namespace = format!("console-{}", std::process::id());
    let w = world(0, &format!("[state]\nnamespace = \"{namespace}\"\n")).await;
    let env = [("KEYTURN_REDIS_URL", redis.url())];
    let s = serve(&w, &env).await;
    let start_console = |args: &'static [&'static str]| {
        let mut all = vec!["console", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = w.command(&all);
        for (k, v) in env {
            cmd.env(k, v);
        }
        start(cmd, "keyturn console on http://")
    };
    let c = start_console(&["--allow-actions"]).await;
    assert!(
        c.status().await["view"]["source"]
            .as_str()
            .unwrap()
            .contains(&namespace)
    );
    // The proxy's use shows in the console.
    let r = reqwest::Client::new()
        .post(s.url(&format!("/v1beta/models/{FLASH}:generateContent")))
        .json(&serde_json::json!({"contents": [{"parts": [{"text": "hello"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.until("the proxy's request", |st| sent(st) >= 1).await;
    // The console's action shows in the proxy.
    let (code, body) = c.post("/admin/keys/k2/disable").await;
    assert_eq!(code, 200, "{body}");
    s.until("k2 disabled by the console", |st| {
        key(st, "k2")["state"] == "disabled"
    })
    .await;
    c.stop();
    s.stop();
}
