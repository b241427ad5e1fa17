//! The real `keyturn` binary against the simulator over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{EMBED, FLASH, Setup, text};
use keyturn_sim::{Faults, KeyState, Limits};
use serde_json::Value;

const KEYS: &[common::Key] = &[
    ("made-up-e2e-key-one", "one", "proj-a"),
    ("made-up-e2e-key-two", "two", "proj-a"),
    ("made-up-e2e-key-three", "three", "proj-b"),
    ("made-up-e2e-key-dead", "dead", "proj-c"),
];

struct World(common::World);

impl std::ops::Deref for World {
    type Target = common::World;
    fn deref(&self) -> &common::World {
        &self.0
    }
}

impl World {
    fn inputs(&self) -> PathBuf {
        self.path("transcripts")
    }
    fn out(&self) -> PathBuf {
        self.path("out")
    }
    fn state(&self) -> PathBuf {
        self.path("state")
    }

    fn seed_cmd(&self) -> Command {
        self.0.seed_cmd("out")
    }

    async fn run(&self, c: Command) -> Output {
        common::run_cmd(c).await
    }
}

/// Samples, keys file, and a keyturn.toml whose limits match the simulator's exactly.
async fn world(rpm: u64, rpd: u64, faults: Faults, dead_key: bool) -> World {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(rpm, 1_000_000, rpd));
    models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
    World(
        common::World::start(Setup {
            keys: KEYS
                .iter()
                .copied()
                .filter(|k| dead_key || k.1 != "dead")
                .collect(),
            invalid: vec!["dead"],
            toml: format!(
                "[rotation]\nmax_wait = \"3m\"\n[breaker]\nbase_cooldown = \"200ms\"\nmax_cooldown = \"1s\"\n[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 30\n\
                 [models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 1000000\nrpd = {rpd}\n[models.\"{EMBED}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n"
            ),
            models,
            faults,
        })
        .await,
    )
}

/// Every output parses; every edge's ends are nodes; each episode appears once.
fn check_outputs(out: &Path, episodes: usize, dims: usize) -> Value {
    let files: Vec<PathBuf> = std::fs::read_dir(out.join("episodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), episodes, "{files:?}");
    for f in &files {
        let v: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        assert!(!v["chunks"].as_array().unwrap().is_empty());
        assert_eq!(v["chunks"][0]["embedding"].as_array().unwrap().len(), dims);
    }
    let nodes: Vec<Value> = std::fs::read_to_string(out.join("graph/nodes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let edges: Vec<Value> = std::fs::read_to_string(out.join("graph/edges.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: HashSet<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), nodes.len(), "node ids are unique");
    for n in &nodes {
        assert!(n["type"].is_string() && n["name"].is_string(), "{n}");
    }
    for e in &edges {
        assert!(
            ids.contains(e["source"].as_str().unwrap())
                && ids.contains(e["target"].as_str().unwrap()),
            "{e}"
        );
        assert!(e["type"].is_string());
    }
    let eps = nodes.iter().filter(|n| n["type"] == "Episode").count();
    assert_eq!(eps, episodes, "each episode exactly once in the graph");
    serde_json::from_slice(&std::fs::read(out.join("run-report.json")).unwrap()).unwrap()
}

fn assert_no_secret_anywhere(w: &World, outputs: &[&Output]) {
    let mut haystack = String::new();
    for o in outputs {
        haystack.push_str(&text(o));
    }
    fn walk(p: &Path, acc: &mut String) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), acc);
            }
        } else if !p.ends_with("keys.txt") {
            acc.push_str(&String::from_utf8_lossy(&std::fs::read(p).unwrap()));
        }
    }
    walk(w.dir.path(), &mut haystack);
    for (k, _, _) in KEYS {
        assert!(!haystack.contains(k), "{k} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_seed_with_several_keys_causes_no_429_and_keeps_keys_secret() {
    let w = world(60, 1000, Faults::default(), true).await;
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let report = check_outputs(&w.out(), 5, 16);
    assert_eq!(report["result"]["stop"], "done");
    assert_eq!(report["items"]["processed"], 5);
    let st = w.stats();
    assert_eq!(
        st["by_status"].get("429"),
        None,
        "no 429 that keyturn caused itself: {st}"
    );
    // The invalid key is disabled by its first refusal; requests already in flight on it then
    // (at most one per request slot: 4 episodes × 4 requests) were sent before anyone knew.
    let dead = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "dead")
        .unwrap();
    let dead_requests = dead["requests"].as_u64().unwrap();
    assert!((1..=16).contains(&dead_requests), "{dead}");
    let report_dead = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "dead")
        .unwrap();
    assert_eq!(
        report_dead["dead"].as_u64(),
        Some(dead_requests),
        "keyturn saw every refusal the server sent"
    );
    assert_eq!(st["query_key_uses"], 0);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("REQUESTS") && stdout.contains("three"),
        "{stdout}"
    );
    // Status reads the state the run left.
    let s = w.run(w.command(&["status", "--json"])).await;
    assert!(s.status.success(), "{}", text(&s));
    let status: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert!(
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["label"] == "dead" && !k["disabled"].is_null())
    );
    // Exports.
    let e = w
        .run(w.command(&[
            "export",
            "--out",
            w.out().to_str().unwrap(),
            "--format",
            "neo4j-csv",
        ]))
        .await;
    assert!(e.status.success(), "{}", text(&e));
    let nodes_csv = std::fs::read_to_string(w.out().join("export/neo4j-csv/nodes.csv")).unwrap();
    assert!(nodes_csv.starts_with("id:ID,:LABEL,name"));
    let rels = std::fs::read_to_string(w.out().join("export/neo4j-csv/relationships.csv")).unwrap();
    assert!(rels.starts_with(":START_ID,:END_ID,:TYPE"));
    assert_no_secret_anywhere(&w, &[&o, &s, &e]);
    // A rerun redoes nothing.
    let again = w.run(w.seed_cmd()).await;
    assert!(again.status.success());
    let report: Value =
        serde_json::from_slice(&std::fs::read(w.out().join("run-report.json")).unwrap()).unwrap();
    assert_eq!(
        (
            report["items"]["already_done"].as_u64(),
            report["items"]["processed"].as_u64()
        ),
        (Some(5), Some(0))
    );
}

/// Waits until `n` episodes are checkpointed (written and recorded).
async fn wait_for_episodes(out: &Path, n: usize, child: &mut Child) {
    let checkpoint = out.join(".keyturn-checkpoint/checkpoint.json");
    for _ in 0..1500 {
        let count = std::fs::read(&checkpoint)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["items"].as_object().map(serde_json::Map::len))
            .unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no episode finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_resume_finishes_each_episode_once() {
    let w = world(
        600,
        10_000,
        Faults {
            latency_ms: 60,
            ..Faults::default()
        },
        false,
    )
    .await;
    let mut c = w.seed_cmd();
    c.arg("--concurrency").arg("1");
    let mut child = c.spawn().unwrap();
    wait_for_episodes(&w.out(), 1, &mut child).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever is there parses (atomic writes).
    for f in std::fs::read_dir(w.out().join("episodes")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            serde_json::from_slice::<Value>(&std::fs::read(&p).unwrap()).unwrap();
        }
    }
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let report = check_outputs(&w.out(), 5, 16);
    assert!(
        report["items"]["already_done"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_130_with_a_resume_line_then_resumes() {
    let w = world(
        600,
        10_000,
        Faults {
            latency_ms: 60,
            ..Faults::default()
        },
        false,
    )
    .await;
    let mut c = w.seed_cmd();
    c.arg("--concurrency").arg("1");
    let mut child = c.spawn().unwrap();
    wait_for_episodes(&w.out(), 1, &mut child).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(
        text(&o).contains("Resume with: keyturn seed"),
        "{}",
        text(&o)
    );
    // The line resumes this very run: every flag that was given is in it.
    let line = text(&o)
        .lines()
        .find_map(|l| l.split_once("Resume with: ").map(|(_, r)| r.to_owned()))
        .unwrap();
    for flag in [
        "--chunk-tokens 90",
        "--dimensions 16",
        "--concurrency 1",
        "--out ",
    ] {
        assert!(line.contains(flag), "{flag} missing from: {line}");
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(w.out().join("run-report.json")).unwrap()).unwrap();
    assert_eq!(report["result"]["stop"], "interrupted");
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    check_outputs(&w.out(), 5, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_exhaustion_exits_3_and_the_next_day_resumes() {
    // Two projects × 5 extraction requests a day: not enough for 17 chunks.
    let w = world(600, 5, Faults::default(), false).await;
    let o = w.run(w.seed_cmd()).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("capacity returns at") && (msg.contains("PST") || msg.contains("PDT")),
        "{msg}"
    );
    assert_eq!(
        w.stats()["by_status"].get("429"),
        None,
        "keyturn stopped before Gemini refused"
    );
    // A new day for the simulator; keyturn's counters are reset by hand (its own clock has not moved).
    reqwest::Client::new()
        .post(format!("{}/admin/advance-day", w.sim.base_url()))
        .send()
        .await
        .unwrap();
    let r = w.run(w.command(&["keys", "reset", "--all"])).await;
    assert!(r.status.success(), "{}", text(&r));
    // Still only 10 a day: the run goes on as far as the new day allows, then resumes again.
    let mut finished = false;
    for _ in 0..4 {
        let o = w.run(w.seed_cmd()).await;
        if o.status.success() {
            finished = true;
            break;
        }
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        reqwest::Client::new()
            .post(format!("{}/admin/advance-day", w.sim.base_url()))
            .send()
            .await
            .unwrap();
        assert!(
            w.run(w.command(&["keys", "reset", "--all"]))
                .await
                .status
                .success()
        );
    }
    assert!(finished);
    check_outputs(&w.out(), 5, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_is_ridden_out() {
    let w = world(
        600,
        10_000,
        Faults {
            p503: 0.2,
            ..Faults::default()
        },
        true,
    )
    .await;
    // Besides the random 20 %, the first six calls are certain to meet the real 503 body, so
    // the storm is there on every run.
    w.sim
        .state()
        .add_scripts(
            vec![keyturn_sim::config::ScriptRule {
                shape: "real-39".into(),
                key: None,
                project: None,
                model: None,
                method: None,
                times: Some(6),
            }],
            false,
        )
        .unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    check_outputs(&w.out(), 5, 16);
    assert!(
        w.stats()["by_status"]["503"].as_u64().unwrap_or(0) >= 6,
        "{}",
        w.stats()["by_status"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_files_are_skipped_with_reasons_and_the_run_still_succeeds() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let pod = w.inputs().join("Broken Pod");
    std::fs::create_dir_all(&pod).unwrap();
    std::fs::write(pod.join("binary.vtt"), [0u8, 1, 2, 3]).unwrap();
    std::fs::write(pod.join("latin1.txt"), [0x48, 0xe9, 0x6c, 0x6c, 0x6f]).unwrap();
    std::fs::write(pod.join("empty.srt"), "").unwrap();
    std::fs::write(pod.join("bad.vtt"), "WEBVTT\n\n00:01.000 --> later\nhi\n").unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let report = check_outputs(&w.out(), 5, 16);
    let skipped: Vec<String> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}: {}", s["path"], s["reason"]))
        .collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    for needle in ["binary", "UTF-8", "no text", "line 3"] {
        assert!(
            skipped.iter().any(|s| s.contains(needle)),
            "{needle}: {skipped:?}"
        );
    }
    assert!(text(&o).contains("skipped"), "reported on stderr too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_with_no_key_and_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::task::spawn_blocking({
        let d = dir.path().to_owned();
        move || {
            Command::new(env!("CARGO_BIN_EXE_keyturn"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .current_dir(&d)
                .args(["demo", "--out", "demo-out"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let report = check_outputs(&dir.path().join("demo-out"), 5, 64);
    assert_eq!(report["result"]["stop"], "done");
    let out = text(&o);
    assert!(
        out.contains("revoked") && out.contains("429s by kind"),
        "{out}"
    );
    assert!(!out.contains("demo-made-up-key"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let w = world(60, 1000, Faults::default(), false).await;
    std::fs::write(
        w.dir.path().join("keyturn.toml"),
        "[rotation]\npolicy = \"random\"\n",
    )
    .unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("policy"));
    std::fs::write(
        w.dir.path().join("keyturn.toml"),
        "[rotation]\npolicy = \"weighted\"\n",
    )
    .unwrap();
    let mut c = w.command(&["status"]);
    c.env_remove("KEYTURN_KEYS_FILE");
    let o = w.run(c).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "no keys is a configuration error: {}",
        text(&o)
    );
    assert!(text(&o).contains("GEMINI_API_KEY"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_state_commands() {
    let w = world(600, 10_000, Faults::default(), true).await;
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));

    let list = w.run(w.command(&["keys", "list"])).await;
    let out = text(&list);
    assert!(list.status.success(), "{out}");
    assert!(
        out.contains("one") && out.contains("proj-a") && out.contains("keys.txt line 1"),
        "{out}"
    );
    assert!(
        out.contains("disabled: invalid key"),
        "health from the state: {out}"
    );

    let check = w.run(w.command(&["keys", "check"])).await;
    let out = text(&check);
    assert!(check.status.success(), "{out}");
    assert_eq!(
        out.matches("valid").count() - out.matches("REJECTED").count(),
        3,
        "{out}"
    );
    assert!(out.contains("REJECTED: invalid key"), "{out}");
    let before = w.stats()["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["admitted"].as_u64().unwrap())
        .sum::<u64>();
    assert!(before > 0);

    let reset = w.run(w.command(&["keys", "reset", "dead"])).await;
    assert!(reset.status.success(), "{}", text(&reset));
    let status: Value =
        serde_json::from_slice(&w.run(w.command(&["status", "--json"])).await.stdout).unwrap();
    assert!(
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["disabled"].is_null()),
        "{status}"
    );
    let unknown = w.run(w.command(&["keys", "reset", "nobody"])).await;
    assert_eq!(unknown.status.code(), Some(2));

    let out_dir = w.out();
    let info = w
        .run(w.command(&["state", "info", "--out", out_dir.to_str().unwrap()]))
        .await;
    let out = text(&info);
    assert!(
        info.status.success()
            && out.contains("backend: file")
            && out.contains("5 finished episodes")
            && out.contains("lock:    free"),
        "{out}"
    );
    // Two runs so far → two checkpoint backups (the first run's is of an empty checkpoint: none).
    let prune = w
        .run(w.command(&[
            "state",
            "prune",
            "--out",
            out_dir.to_str().unwrap(),
            "--keep",
            "0",
        ]))
        .await;
    assert!(
        prune.status.success() && text(&prune).contains("kept"),
        "{}",
        text(&prune)
    );

    let no = w.run(w.command(&["state", "reset"])).await;
    assert_eq!(
        no.status.code(),
        Some(1),
        "asks, and without 'yes' does nothing: {}",
        text(&no)
    );
    assert!(w.state().join("state.json").exists());
    let yes = w.run(w.command(&["state", "reset", "--yes"])).await;
    assert!(yes.status.success(), "{}", text(&yes));
    // The state is reset, not deleted: the usage history stays
    // (`state_reset_keeps_the_usage_history`).
    assert!(text(&yes).contains("usage history kept"), "{}", text(&yes));
    assert_no_secret_anywhere(&w, &[&o, &list, &check, &info]);
}

/// `status --history`: per key and model, the requests keyturn sent equal what the simulator
/// admitted, and a second process (a restart) adds to the same history rather than replacing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_history_matches_the_simulator_across_a_restart() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let project_of = |label: &str| KEYS.iter().find(|k| k.1 == label).unwrap().2;
    let check = |history: &Value, stats: &Value| {
        let mut ours: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in history.as_array().unwrap() {
            assert!(r["input_tokens"].as_u64().unwrap() > 0, "{r}");
            *ours
                .entry((
                    project_of(r["key"].as_str().unwrap()).to_owned(),
                    r["model"].as_str().unwrap().to_owned(),
                ))
                .or_default() += r["requests"].as_u64().unwrap();
        }
        let theirs: BTreeMap<(String, String), u64> = stats["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["admitted"].as_u64().unwrap() > 0)
            .map(|s| {
                (
                    (
                        s["project"].as_str().unwrap().to_owned(),
                        s["model"].as_str().unwrap().to_owned(),
                    ),
                    s["admitted"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ours, theirs, "history vs the simulator's admitted counts");
        ours.values().sum::<u64>()
    };
    let history = || async {
        let o = w.run(w.command(&["status", "--history", "--json"])).await;
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };

    let first = w.run(w.seed_cmd()).await;
    assert!(first.status.success(), "{}", text(&first));
    let after_one = check(&history().await, &w.stats());
    assert!(after_one > 0);

    // A new episode, a new process: the history grows by exactly what the simulator admitted.
    std::fs::create_dir_all(w.inputs().join("extra")).unwrap();
    std::fs::write(
        w.inputs().join("extra").join("later.txt"),
        "Ada Lovelace wrote about the Analytical Engine. Charles Babbage designed it in London.",
    )
    .unwrap();
    let second = w.run(w.seed_cmd()).await;
    assert!(second.status.success(), "{}", text(&second));
    let after_two = check(&history().await, &w.stats());
    assert!(after_two > after_one, "{after_two} > {after_one}");

    let table = w.run(w.command(&["status", "--history"])).await;
    let out = text(&table);
    assert!(
        table.status.success() && out.contains("INPUT TOKENS") && out.contains("one"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{after_two:>9}")),
        "the total row: {out}"
    );
    assert_no_secret_anywhere(&w, &[&first, &second, &table]);
}

/// A configuration looser than Google's: keyturn sends requests Gemini refuses. Status, the
/// history and its table keep sent, served and refused apart, and they match what the
/// simulator served and refused — never "22/20 used" for a day on which Gemini served 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_served_and_refused_stay_apart_when_gemini_refuses() {
    let w = world(600, 2, Faults::default(), false).await;
    // keyturn believes in 50 a day; the simulator serves 2 per project and model.
    let toml = std::fs::read_to_string(w.dir.path().join("keyturn.toml")).unwrap();
    std::fs::write(
        w.dir.path().join("keyturn.toml"),
        toml.replace("rpd = 2\n", "rpd = 50\n"),
    )
    .unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert_eq!(o.status.code(), Some(3), "the day is over: {}", text(&o));

    let h = w.run(w.command(&["status", "--history", "--json"])).await;
    assert!(h.status.success(), "{}", text(&h));
    let history: Value = serde_json::from_slice(&h.stdout).unwrap();
    let project_of = |label: &str| KEYS.iter().find(|k| k.1 == label).unwrap().2;
    let mut ours: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for r in history.as_array().unwrap() {
        if r["model"] != FLASH {
            continue;
        }
        let e = ours
            .entry(project_of(r["key"].as_str().unwrap()).to_owned())
            .or_default();
        e.0 += r["requests"].as_u64().unwrap();
        e.1 += r["served"].as_u64().unwrap();
        e.2 += r["refused"].as_u64().unwrap();
    }
    let stats = w.stats();
    let theirs: BTreeMap<String, (u64, u64)> = stats["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["model"] == FLASH)
        .map(|s| {
            (
                s["project"].as_str().unwrap().to_owned(),
                (
                    s["admitted"].as_u64().unwrap(),
                    // Refusals by kind (rpm, tpm, rpd).
                    s["refused"]
                        .as_object()
                        .unwrap()
                        .values()
                        .map(|n| n.as_u64().unwrap())
                        .sum(),
                ),
            )
        })
        .collect();
    assert!(!ours.is_empty());
    for (project, (sent, served, refused)) in &ours {
        let (admitted, denied) = theirs[project];
        assert_eq!(
            (*served, *refused),
            (admitted, denied),
            "{project}: {ours:?} vs {theirs:?}"
        );
        assert!(*refused >= 1 && *served == 2, "{project}: {ours:?}");
        assert_eq!(*sent, served + refused, "{project}: nothing else happened");
    }

    let s = w.run(w.command(&["status", "--json"])).await;
    let status: Value = serde_json::from_slice(&s.stdout).unwrap();
    for sc in status["scopes"].as_array().unwrap() {
        if sc["model"] != FLASH {
            continue;
        }
        let (sent, served, refused) = ours[sc["project"].as_str().unwrap()];
        assert_eq!(
            (
                sc["rpd_used"].as_u64(),
                sc["rpd_served"].as_u64(),
                sc["rpd_refused"].as_u64()
            ),
            (Some(sent), Some(served), Some(refused)),
            "{sc}"
        );
    }
    let table = text(&w.run(w.command(&["status", "--history"])).await);
    assert!(
        table.contains("SENT") && table.contains("SERVED") && table.contains("REFUSED"),
        "{table}"
    );
    let quota = text(&w.run(w.command(&["status"])).await);
    assert!(quota.contains("SERVED/REFUSED"), "{quota}");
}

/// A model the built-in table gives the free tier no quota for: keyturn refuses it itself and
/// says so (the table and its date), never that Gemini reported a limit; nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_keyturn_decided_names_the_built_in_table() {
    let w = world(600, 1000, Faults::default(), false).await;
    let mut cmd = w.seed_cmd();
    cmd.args(["--model", "gemini-2.5-pro"]);
    let o = w.run(cmd).await;
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("built-in limit table (dated ")
            && out.contains(keyturn_core::limits::BUILTIN_TABLE_DATE)
            && !out.contains("Gemini reported"),
        "{out}"
    );
    let stats = w.stats();
    let sent: u64 = stats["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["model"] == "gemini-2.5-pro")
        .map(|s| s["admitted"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, 0, "{stats}");
}

/// A port nobody listened on a moment ago. Only for what must bind an address itself
/// (`--metrics-addr`: the exporter takes an address, not a listener), and only through
/// [`with_metrics_port`], which tries another port when someone else took this one first.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a child that exited did so because its metrics port was taken before it bound it.
fn lost_metrics_port(child: Child) -> bool {
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    let lost = all.contains("cannot serve metrics") && all.contains("in use");
    assert!(lost, "exited {}: {all}", out.status);
    lost
}

/// Scrapes `addr` until `pred` holds while `child` runs. `None` when the child exited because
/// its metrics port was taken (the caller tries another port); panics on any other exit.
async fn scrape_until(
    child: &mut Option<Child>,
    addr: &str,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut last = String::new();
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            last = r.text().await.unwrap_or_default();
            if pred(&last) {
                return Some(last);
            }
        }
        if let Some(c) = child.as_mut()
            && c.try_wait().unwrap().is_some()
        {
            lost_metrics_port(child.take().unwrap());
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the metrics never showed what was expected:\n{last}");
}

/// Runs `attempt` with `--metrics-addr` values on free ports until one is not taken first.
async fn with_metrics_port<T, F: Future<Output = Option<T>>>(attempt: impl Fn(String) -> F) -> T {
    for _ in 0..8 {
        if let Some(t) = attempt(format!("127.0.0.1:{}", free_port())).await {
            return t;
        }
    }
    panic!("another process took each of 8 free ports before keyturn could bind it");
}

/// `--metrics-addr` on `keyturn sim` and on `keyturn seed`: both serve Prometheus text while
/// they work, labelled by key label and fingerprint, never by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_sim_serve_metrics_while_they_run() {
    let w = world(600, 10_000, Faults::default(), false).await;
    // keyturn allows one request a minute per project: the seed works slowly enough to scrape.
    std::fs::write(
        w.dir.path().join("keyturn.toml"),
        format!("[models.\"{FLASH}\"]\nrpm = 1\n"),
    )
    .unwrap();
    let text = with_metrics_port(|seed_metrics| {
        let mut seed = w.seed_cmd();
        seed.arg("--metrics-addr").arg(&seed_metrics);
        let mut child = Some(seed.spawn().unwrap());
        async move {
            let scraped = scrape_until(&mut child, &seed_metrics, |t| {
                t.contains("keyturn_requests_total{") && t.contains("keyturn_quota_used{")
            })
            .await;
            if let Some(mut c) = child {
                c.kill().ok();
                c.wait().ok();
            }
            scraped
        }
    })
    .await;
    assert!(text.contains("outcome=\"ok\""), "{text}");
    assert!(text.contains("keyturn_keys{state=\"usable\"}"), "{text}");
    assert!(text.contains("window=\"day\""), "{text}");
    for (k, ..) in KEYS {
        assert!(!text.contains(k), "a key in the metrics");
    }

    // The simulator picks its own port (`--port 0`) and prints it; only the metrics address is
    // chosen here.
    let (mut sim, sim_metrics, base_url) = with_metrics_port(|sim_metrics| async move {
        let mut sim = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args(["--metrics-addr", &sim_metrics, "sim", "--port", "0"])
            .args(["--key", "made-up-metrics-key@p1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = sim.stdout.take().unwrap();
        let base_url = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let url = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("GEMINI_BASE_URL=").map(str::to_owned));
            std::thread::spawn(move || lines.for_each(drop));
            url
        })
        .await
        .unwrap();
        match base_url {
            Some(url) => Some((sim, sim_metrics, url)),
            None => {
                lost_metrics_port(sim);
                None
            }
        }
    })
    .await;
    let url = format!("{base_url}/v1beta/models/{FLASH}:generateContent");
    let client = reqwest::Client::new();
    let mut sent = false;
    for _ in 0..300 {
        let r = client
            .post(&url)
            .header("x-goog-api-key", "made-up-metrics-key")
            .json(&serde_json::json!({"contents": [{"parts": [{"text": "hello"}]}]}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "the simulator never answered");
    let text = scrape_until(&mut None, &sim_metrics, |t| {
        t.contains("keyturn_sim_responses_total{key=\"key-1\",status=\"200\"} 1")
    })
    .await
    .unwrap();
    sim.kill().ok();
    sim.wait().ok();
    assert!(!text.contains("made-up-metrics-key"), "{text}");
}

// ---- Issue 13 ("Trust first"): the pipeline's refusals and repairs, on the real binary. ----

fn report_of(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("run-report.json")).unwrap()).unwrap()
}

fn episode_paths(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("episodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

/// A finished episode whose file was deleted, damaged or edited is redone, and the run says
/// which and why; a checkpoint from before output hashes were recorded is still trusted when
/// its episode file is there and reads back as that episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_damaged_episode_file_is_redone_and_said_so() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let eps = episode_paths(&w.out());
    assert_eq!(eps.len(), 5);
    let id = |p: &Path| p.file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&eps[0]).unwrap();
    let bytes = std::fs::read(&eps[1]).unwrap();
    std::fs::write(&eps[1], &bytes[..bytes.len() / 2]).unwrap();
    // Still valid JSON, still an episode: only the recorded hash can tell.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&eps[2]).unwrap()).unwrap();
    v["entities"] = Value::Array(Vec::new());
    std::fs::write(&eps[2], serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let o = w.run(w.seed_cmd()).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let report = check_outputs(&w.out(), 5, 16);
    assert_eq!(report["items"]["already_done"], 2, "{report}");
    assert_eq!(report["items"]["processed"], 3, "{report}");
    for (p, why) in [
        (&eps[0], "missing"),
        (&eps[1], "changed"),
        (&eps[2], "changed"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with("redoing") && l.contains(&id(p)))
            .unwrap_or_else(|| panic!("no redo line for {}: {out}", id(p)));
        assert!(line.contains(why), "{line}");
    }
    assert_eq!(report["redone"].as_array().unwrap().len(), 3, "{report}");
    let v: Value = serde_json::from_slice(&std::fs::read(&eps[2]).unwrap()).unwrap();
    assert!(
        !v["entities"].as_array().unwrap().is_empty(),
        "redone whole"
    );

    // A checkpoint written before output hashes existed: trusted when its file reads back as
    // its episode, redone when the file is gone.
    let cp_path = w.out().join(".keyturn-checkpoint/checkpoint.json");
    let mut cp: Value = serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    for (_, item) in cp["items"].as_object_mut().unwrap() {
        let item = item.as_object_mut().unwrap();
        assert!(item.remove("output_sha256").is_some(), "{item:?}");
    }
    std::fs::write(&cp_path, serde_json::to_vec(&cp).unwrap()).unwrap();
    std::fs::remove_file(&eps[3]).unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let report = check_outputs(&w.out(), 5, 16);
    assert_eq!(
        (
            report["items"]["already_done"].as_u64(),
            report["items"]["processed"].as_u64()
        ),
        (Some(4), Some(1)),
        "{report}"
    );
    assert!(text(&o).contains(&id(&eps[3])), "{}", text(&o));
}

/// keyturn writes only into an output folder it created (or found empty); a folder of the
/// user's own files is refused untouched; an output folder from a keyturn that wrote no marker
/// is still resumed; `export` into it keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_writes_only_into_an_output_folder_it_owns() {
    let w = world(600, 10_000, Faults::default(), false).await;
    std::fs::create_dir_all(w.out().join("graph")).unwrap();
    std::fs::write(w.out().join("run-report.json"), "my own report").unwrap();
    std::fs::write(w.out().join("graph/nodes.jsonl"), "my own nodes").unwrap();
    let o = w.run(w.seed_cmd()).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(w.out().to_str().unwrap()),
        "names the folder: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(w.out().join("run-report.json")).unwrap(),
        "my own report"
    );
    assert_eq!(
        std::fs::read_to_string(w.out().join("graph/nodes.jsonl")).unwrap(),
        "my own nodes"
    );
    assert!(!w.out().join("episodes").exists());
    assert_eq!(w.stats()["responses"], 0, "refused before spending quota");

    // An empty folder is taken.
    std::fs::remove_dir_all(w.out()).unwrap();
    std::fs::create_dir(w.out()).unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    check_outputs(&w.out(), 5, 16);
    assert!(w.out().join(".keyturn-out").is_file());
    let e = w
        .run(w.command(&["export", "--out", w.out().to_str().unwrap()]))
        .await;
    assert!(e.status.success(), "{}", text(&e));
    // `export --to` a folder of the user's own is refused the same way; a new one is taken,
    // and exporting there again works.
    let theirs = w.dir.path().join("neo4j-import");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("nodes.csv"), "their nodes").unwrap();
    let mine = w.dir.path().join("exports/neo4j");
    for (to, ok) in [(&theirs, false), (&mine, true), (&mine, true)] {
        let e = w
            .run(w.command(&[
                "export",
                "--out",
                w.out().to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
            ]))
            .await;
        if ok {
            assert!(e.status.success(), "{}", text(&e));
            assert!(to.join("nodes.csv").is_file());
        } else {
            assert_eq!(e.status.code(), Some(2), "{}", text(&e));
            assert!(text(&e).contains(to.to_str().unwrap()), "{}", text(&e));
        }
    }
    assert_eq!(
        std::fs::read_to_string(theirs.join("nodes.csv")).unwrap(),
        "their nodes"
    );

    // Upgrading: an output folder an older keyturn wrote (a checkpoint, no marker) resumes.
    std::fs::remove_file(w.out().join(".keyturn-out")).unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report_of(&w.out())["items"]["already_done"], 5);
    assert!(w.out().join(".keyturn-out").is_file(), "marked now");

    // An output path that is a file is refused too.
    let file_out = w.dir.path().join("a-file");
    std::fs::write(&file_out, "x").unwrap();
    let i = w.inputs();
    let o = w
        .run(w.command(&[
            "seed",
            i.to_str().unwrap(),
            "--out",
            file_out.to_str().unwrap(),
        ]))
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&file_out).unwrap(), "x");

    // Looking at a folder of the user's with `state info` / `state prune` writes nothing there.
    let users = w.dir.path().join("users-own");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("notes.txt"), "mine").unwrap();
    let u = users.to_str().unwrap();
    let mut looked = Vec::new();
    for args in [
        &["state", "info", "--out", u][..],
        &["state", "prune", "--out", u, "--keep", "0"][..],
    ] {
        looked.push(w.run(w.command(args)).await);
    }
    let names: Vec<_> = std::fs::read_dir(&users)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["notes.txt"], "nothing created in the user's folder");
    for o in &looked {
        assert!(o.status.success(), "{}", text(o));
        assert!(text(o).contains("no checkpoint"), "{}", text(o));
    }
}

/// A second seed on the same --out (with its own state folder, so the state lock does not
/// stop it) is refused while the first runs: quota is never spent twice on the same work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_seed_on_the_same_output_folder_is_refused_while_the_first_runs() {
    let w = world(
        600,
        10_000,
        Faults {
            latency_ms: 60,
            ..Faults::default()
        },
        false,
    )
    .await;
    let mut c = w.seed_cmd();
    c.arg("--concurrency").arg("1");
    let mut first = c.spawn().unwrap();
    wait_for_episodes(&w.out(), 1, &mut first).await;
    let mut second = w.seed_cmd();
    second.env("KEYTURN_STATE_DIR", w.dir.path().join("other-state"));
    let o = w.run(second).await;
    let out = text(&o);
    assert!(first.try_wait().unwrap().is_none(), "the first still runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let f = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(w.out().to_str().unwrap()) && out.contains("another keyturn"),
        "{out}"
    );
    assert_eq!(f.status.code(), Some(130), "{}", text(&f));
    // Once the first has stopped, the folder is free again.
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    check_outputs(&w.out(), 5, 16);
}

/// A link loop is not walked, a link to a file outside the input folder is not read (unless
/// --follow-links), a link to a file inside it is; each skipped link is reported with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbolic_links_never_lead_out_of_the_input_folder() {
    use std::os::unix::fs::symlink;
    let w = world(600, 10_000, Faults::default(), false).await;
    let pod = w.inputs().join("Linked Pod");
    std::fs::create_dir_all(w.inputs().join(".hidden")).unwrap();
    std::fs::create_dir_all(&pod).unwrap();
    std::fs::write(
        w.inputs().join(".hidden/real.txt"),
        "Marie Curie studied radium in Paris with Pierre Curie.",
    )
    .unwrap();
    let outside = w.dir.path().join("private");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("secret.txt"),
        "Nobody outside should read this private note about Zanzibar.",
    )
    .unwrap();
    // A loop: without care, walked until the OS gives up (40 levels, every file each time).
    symlink("..", pod.join("up")).unwrap();
    symlink("../.hidden/real.txt", pod.join("inside.txt")).unwrap();
    symlink(outside.join("secret.txt"), pod.join("outside.txt")).unwrap();
    symlink("../nowhere.txt", pod.join("broken.txt")).unwrap();

    let o = w.run(w.seed_cmd()).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let report = check_outputs(&w.out(), 6, 16);
    assert_eq!(report["items"]["found"], 6, "{report}");
    assert_eq!(report["items"]["links_skipped"], 3, "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|s| s["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not reported: {report}"))["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(reason("/up").contains("folder"), "{}", reason("/up"));
    assert!(
        reason("/outside.txt").contains("outside"),
        "{}",
        reason("/outside.txt")
    );
    assert!(
        reason("/broken.txt").contains("broken"),
        "{}",
        reason("/broken.txt")
    );
    for name in ["/up", "/outside.txt", "/broken.txt"] {
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("skipped") && l.contains(name))
                .count(),
            1,
            "one line for {name}: {out}"
        );
    }
    let graph = std::fs::read_to_string(w.out().join("graph/nodes.jsonl")).unwrap();
    assert!(!graph.contains("Zanzibar"), "the outside file was read");

    // With --follow-links the outside file is read; folder links are still not walked.
    let (i, o2) = (w.inputs(), w.dir.path().join("out-follow"));
    let o = w
        .run(w.command(&[
            "seed",
            i.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
            "--chunk-tokens",
            "90",
            "--dimensions",
            "16",
            "--follow-links",
        ]))
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let report = check_outputs(&o2, 7, 16);
    assert_eq!(report["items"]["links_skipped"], 2, "{report}");
}

/// Control characters from outside (file and folder names, key labels, model names) never
/// reach the terminal raw: the progress lines, the summary, status and keys tables escape them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_outside_reach_the_terminal_escaped() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let pod = w.inputs().join("Pod\u{1b}]0;owned\u{7}");
    std::fs::create_dir_all(&pod).unwrap();
    std::fs::write(
        pod.join("ep\u{1b}[31mred.txt"),
        "Alan Kay worked at Xerox PARC on Smalltalk.",
    )
    .unwrap();
    std::fs::write(pod.join("bin\u{9b}ary.txt"), [0u8, 1, 2]).unwrap();
    // A key label with a control character is refused by the configuration (exit 2), and the
    // refusal itself prints nothing raw.
    let good_keys = std::fs::read_to_string(w.dir.path().join("keys.txt")).unwrap();
    std::fs::write(
        w.dir.path().join("keys.txt"),
        good_keys.replace("label=one", "label=o\u{1b}[2Jne"),
    )
    .unwrap();
    let bad_label = w.run(w.command(&["keys", "list"])).await;
    assert_eq!(bad_label.status.code(), Some(2), "{}", text(&bad_label));
    std::fs::write(w.dir.path().join("keys.txt"), good_keys).unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    // A model name a client made up, with an escape in it, lands in the state.
    let i = w.inputs();
    let o2 = w.dir.path().join("out-model");
    let bad_model = w
        .run(w.command(&[
            "seed",
            i.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
            "--model",
            "gemini\u{1b}[8m-x",
        ]))
        .await;
    let status = w.run(w.command(&["status"])).await;
    let list = w.run(w.command(&["keys", "list"])).await;
    let check = w.run(w.command(&["keys", "check"])).await;
    let info = w
        .run(w.command(&["state", "info", "--out", o2.to_str().unwrap()]))
        .await;
    for (what, out) in [
        ("keys list with a bad label", &bad_label),
        ("seed", &o),
        ("seed --model", &bad_model),
        ("status", &status),
        ("keys list", &list),
        ("keys check", &check),
        ("state info", &info),
    ] {
        let t = text(out);
        assert!(
            !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{what} printed a control character raw: {t:?}"
        );
    }
    let t = text(&o);
    assert!(t.contains("episode done: ep\\u{1b}[31mred"), "{t}");
    assert!(
        text(&bad_model).contains("gemini\\u{1b}[8m-x"),
        "{}",
        text(&bad_model)
    );
}

/// A truncated checkpoint is named as the checkpoint, and the advice fixes it without touching
/// the quota state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_checkpoint_is_named_with_a_remedy_that_spares_the_quota_state() {
    let w = world(600, 10_000, Faults::default(), false).await;
    assert!(w.run(w.seed_cmd()).await.status.success());
    // A second run leaves a backup of the first run's checkpoint.
    assert!(w.run(w.seed_cmd()).await.status.success());
    let cp = w.out().join(".keyturn-checkpoint/checkpoint.json");
    let bytes = std::fs::read(&cp).unwrap();
    std::fs::write(&cp, &bytes[..bytes.len() / 2]).unwrap();
    let o = w.run(w.seed_cmd()).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("checkpoint") && out.contains(cp.to_str().unwrap()),
        "{out}"
    );
    assert!(!out.contains("state file"), "{out}");
    assert!(
        !out.contains("state reset") && !out.contains("KEYTURN_STATE_DIR"),
        "{out}"
    );
    assert!(
        out.contains("backups/checkpoint-"),
        "names the newest backup: {out}"
    );
    assert_eq!(
        std::fs::read(&cp).unwrap(),
        &bytes[..bytes.len() / 2],
        "left untouched"
    );
    let info = w
        .run(w.command(&["state", "info", "--out", w.out().to_str().unwrap()]))
        .await;
    assert!(!text(&info).contains("state reset"), "{}", text(&info));
    // Following the advice works: the newest backup put back, the run resumes.
    let newest = std::fs::read_dir(w.out().join(".keyturn-checkpoint/backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::fs::copy(newest, &cp).unwrap();
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report_of(&w.out())["items"]["already_done"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_does_not_exist_exits_2_naming_it() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let missing = w.dir.path().join("no-such-folder");
    let o = w
        .run(w.command(&[
            "seed",
            w.inputs().to_str().unwrap(),
            missing.to_str().unwrap(),
            "--out",
            w.out().to_str().unwrap(),
        ]))
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(missing.to_str().unwrap()), "{}", text(&o));
    assert_eq!(w.stats()["responses"], 0);
}

/// UTF-16 (either byte order, with its BOM) and UTF-8 with a BOM are transcripts, not binary;
/// and a file that is skipped is printed as skipped, never as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf16_transcripts_are_read_and_skipped_files_are_not_called_done() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let pod = w.inputs().join("Encodings");
    std::fs::create_dir_all(&pod).unwrap();
    let vtt = "WEBVTT\n\n00:00:01.000 --> 00:00:04.000\n<v Host>Rosalind Franklin photographed DNA at King's College.\n";
    let srt = "1\n00:00:01,000 --> 00:00:04,000\nHost: Linus Pauling proposed a triple helix at Caltech.\n";
    let mut le = vec![0xff, 0xfe];
    le.extend(vtt.encode_utf16().flat_map(u16::to_le_bytes));
    let mut be = vec![0xfe, 0xff];
    be.extend(srt.encode_utf16().flat_map(u16::to_be_bytes));
    let mut bom8 = vec![0xef, 0xbb, 0xbf];
    bom8.extend(
        b"WEBVTT\n\n00:01.000 --> 00:03.000\nFrancis Crick drew the double helix in Cambridge.\n",
    );
    std::fs::write(pod.join("le.vtt"), le).unwrap();
    std::fs::write(pod.join("be.srt"), be).unwrap();
    std::fs::write(pod.join("bom8.vtt"), bom8).unwrap();
    std::fs::write(pod.join("binary.vtt"), [0u8, 1, 2, 3]).unwrap();
    let o = w.run(w.seed_cmd()).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let report = check_outputs(&w.out(), 8, 16);
    assert_eq!(report["items"]["skipped"], 1, "{report}");
    assert!(out.contains("episode skipped: binary"), "{out}");
    assert!(!out.contains("episode done: binary"), "{out}");
    let titles: Vec<String> = episode_paths(&w.out())
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["chunks"][0]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    for needle in ["Rosalind Franklin", "Linus Pauling", "Francis Crick"] {
        assert!(
            titles.iter().any(|t| t.contains(needle)),
            "{needle}: {titles:?}"
        );
    }
}

/// `keys check`: 0 only when a key is good, 4 when every key was refused, 1 when nothing answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_exits_non_zero_when_no_key_could_be_checked() {
    let w = world(600, 10_000, Faults::default(), true).await;
    let ok = w.run(w.command(&["keys", "check"])).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    // A server that hangs up on every connection: nothing answers, and no other process can
    // take its port (as it could a port probed free and dropped).
    let hang_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = hang_up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = hang_up.accept().await {
            drop(conn);
        }
    });
    let mut c = w.command(&["keys", "check"]);
    c.env("GEMINI_BASE_URL", format!("http://{silent}"));
    let o = w.run(c).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(
        out.matches("no answer").count(),
        4,
        "same rows as before: {out}"
    );
    let dead_only = KEYS.iter().find(|k| k.1 == "dead").unwrap();
    std::fs::write(
        w.dir.path().join("keys.txt"),
        format!("{} label=dead project=proj-c\n", dead_only.0),
    )
    .unwrap();
    let o = w.run(w.command(&["keys", "check"])).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}

/// `serve token new` prints the label into a keyturn.toml snippet: quoted as a TOML string
/// (a quote cannot end it early) and with no control character reaching the terminal.
#[test]
fn a_token_label_is_printed_as_a_quoted_toml_string() {
    let o = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .env_clear()
        .args(["serve", "token", "new", "--label", "team\"a\u{1b}[2J"])
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains(r#"label = "team\"a\u001b[2J""#), "{out}");
}

/// `keys check` that finds a disabled key answering again brings it back into the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_re_enables_a_key_that_answers_again() {
    let w = world(600, 10_000, Faults::default(), true).await;
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let disabled = |status: &Value| {
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == "dead")
            .unwrap()["disabled"]
            .is_object()
    };
    let status = |o: Output| -> Value { serde_json::from_slice(&o.stdout).unwrap() };
    assert!(disabled(&status(
        w.run(w.command(&["status", "--json"])).await
    )));
    // Still refused: keys check leaves it disabled.
    let check = w.run(w.command(&["keys", "check"])).await;
    assert!(!text(&check).contains("re-enabled"), "{}", text(&check));
    assert!(disabled(&status(
        w.run(w.command(&["status", "--json"])).await
    )));
    // Its owner fixed it: keys check finds it alive and re-enables it.
    assert!(w.sim.state().set_key_state("dead", KeyState::Valid));
    let check = w.run(w.command(&["keys", "check"])).await;
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("re-enabled dead: it answers again"),
        "{}",
        text(&check)
    );
    assert!(!disabled(&status(
        w.run(w.command(&["status", "--json"])).await
    )));
}

/// `state reset` zeroes keys and counters but keeps the usage history, as CONFIG.md says of
/// every reset: what was sent stays sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_reset_keeps_the_usage_history() {
    let w = world(600, 10_000, Faults::default(), true).await;
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    let history = |o: Output| -> Value { serde_json::from_slice(&o.stdout).unwrap() };
    let before = history(w.run(w.command(&["status", "--history", "--json"])).await);
    assert!(!before.as_array().unwrap().is_empty(), "{before}");
    let reset = w.run(w.command(&["state", "reset", "--yes"])).await;
    assert!(reset.status.success(), "{}", text(&reset));
    let after = history(w.run(w.command(&["status", "--history", "--json"])).await);
    assert_eq!(after, before, "the history survived the reset");
    let status: Value =
        serde_json::from_slice(&w.run(w.command(&["status", "--json"])).await.stdout).unwrap();
    for s in status["scopes"].as_array().unwrap() {
        assert_eq!(s["rpd_used"], 0, "{s}");
    }
    for k in status["keys"].as_array().unwrap() {
        assert!(k["disabled"].is_null(), "{k}");
    }
}

/// Each run backs its checkpoint up; the backups do not pile up without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_backups_are_pruned_to_the_newest_ten() {
    let w = world(600, 10_000, Faults::default(), false).await;
    let keep = keyturn_store::checkpoint::KEEP_BACKUPS;
    for _ in 0..keep + 3 {
        let o = w.run(w.seed_cmd()).await;
        assert!(o.status.success(), "{}", text(&o));
        // Backups are named by the run's start in ms: let the next run start later.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backups = std::fs::read_dir(w.out().join(".keyturn-checkpoint/backups"))
        .unwrap()
        .count();
    assert_eq!(backups, keep);
}

/// One clock per run: under `KEYTURN_CLOCK_OFFSET_MS` the run report's times are the ledger's
/// (the pool's clock, built once by the factory), not the system's. Ten days apart before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_clock_is_the_one_clock_of_the_run_report_and_the_ledger() {
    const SHIFT_MS: i64 = 10 * 86_400_000;
    let w = world(600, 10_000, Faults::default(), false).await;
    let mut seed = w.seed_cmd();
    seed.env("KEYTURN_CLOCK_OFFSET_MS", SHIFT_MS.to_string());
    let o = w.run(seed).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        text(&o).matches("the clock is shifted").count(),
        1,
        "said once per run: {}",
        text(&o)
    );
    let mut status = w.command(&["status", "--json"]);
    status.env("KEYTURN_CLOCK_OFFSET_MS", SHIFT_MS.to_string());
    let status: Value = serde_json::from_slice(&w.run(status).await.stdout).unwrap();
    let ledger_now = status["at_ms"].as_i64().unwrap();
    let report = report_of(&w.out());
    let ms = |field: &str| {
        report[field]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    };
    let (started, finished) = (ms("started_at"), ms("finished_at"));
    assert!(
        started <= finished && finished <= ledger_now,
        "report {started}..{finished}, ledger {ledger_now}"
    );
    assert!(
        ledger_now - started < SHIFT_MS / 2,
        "the report ran on another clock than the ledger: started {started}, ledger {ledger_now}"
    );
}

/// `keys check --model` for a model the server does not know: the keys are good (exit 0), and
/// each row says the model, not the key, was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_tells_a_refused_model_from_a_dead_key() {
    let w = world(600, 10_000, Faults::default(), true).await;
    let o = w
        .run(w.command(&["keys", "check", "--model", "gemini-no-such-model"]))
        .await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("valid key, but gemini-no-such-model answered 404")
            .count(),
        3,
        "{out}"
    );
    assert!(out.contains("REJECTED: invalid key"), "{out}");
}

/// `keyturn status` during a seed shows the run, where it writes, how far it is and an ETA
/// from the planner; once the seed has ended, the run is gone from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_running_seed_with_its_eta_and_forgets_it_when_it_ends() {
    let w = world(
        600,
        10_000,
        Faults {
            latency_ms: 60,
            ..Faults::default()
        },
        false,
    )
    .await;
    let mut c = w.seed_cmd();
    c.arg("--concurrency").arg("1");
    let mut seed = c.spawn().unwrap();
    wait_for_episodes(&w.out(), 1, &mut seed).await;
    let mut run = Value::Null;
    for _ in 0..500 {
        let o = w.run(w.command(&["status", "--json"])).await;
        assert!(o.status.success(), "{}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        if let Some(r) = v["runs"].as_array().and_then(|r| r.first()) {
            run = r.clone();
            break;
        }
        assert!(seed.try_wait().unwrap().is_none(), "the seed ended unseen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(run["pid"].as_u64(), Some(u64::from(seed.id())), "{run}");
    assert_eq!(run["out"].as_str(), w.out().to_str(), "{run}");
    assert_eq!(run["episodes_total"].as_u64(), Some(5), "{run}");
    let eta = run["eta"].as_str().unwrap();
    assert!(eta.starts_with("ETA: done ~"), "{run}");
    assert!(run["finish_ms"].as_i64().is_some(), "{run}");
    let table = w.run(w.command(&["status"])).await;
    let table = text(&table);
    assert!(table.contains("seed runs in progress"), "{table}");
    assert!(table.contains(w.out().to_str().unwrap()), "{table}");

    let done = tokio::task::spawn_blocking(move || seed.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(done.status.success(), "{}", text(&done));
    let o = w.run(w.command(&["status", "--json"])).await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["runs"], serde_json::json!([]), "{v}");
    assert!(!text(&w.run(w.command(&["status"])).await).contains("seed runs in progress"));
}
