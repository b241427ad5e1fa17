//! The real `keyturn` binary against the simulator over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::Value;

const FLASH: &str = "gemini-2.5-flash";
const EMBED: &str = "gemini-embedding-001";
const KEYS: &[(&str, &str, &str)] = &[
    ("made-up-e2e-key-one", "one", "proj-a"),
    ("made-up-e2e-key-two", "two", "proj-a"),
    ("made-up-e2e-key-three", "three", "proj-b"),
    ("made-up-e2e-key-dead", "dead", "proj-c"),
];

struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
}

impl World {
    fn inputs(&self) -> PathBuf {
        self.dir.path().join("transcripts")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYTURN_KEYS_FILE", self.dir.path().join("keys.txt"))
            .env("KEYTURN_CONFIG", self.dir.path().join("keyturn.toml"))
            .env("KEYTURN_STATE_DIR", self.state())
            .env("GEMINI_BASE_URL", self.sim.base_url())
            .current_dir(self.dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn seed_cmd(&self) -> Command {
        let (i, o) = (self.inputs(), self.out());
        self.command(&[
            "seed",
            i.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
            "--chunk-tokens",
            "90",
            "--dimensions",
            "16",
        ])
    }

    async fn run(&self, mut c: Command) -> Output {
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    fn stats(&self) -> Value {
        self.sim.state().stats()
    }
}

/// Samples, keys file, and a keyturn.toml whose limits match the simulator's exactly.
async fn world(rpm: u64, rpd: u64, faults: Faults, dead_key: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    keyturn_pipeline::demo::write_samples(&dir.path().join("transcripts")).unwrap();
    let keys: Vec<_> = KEYS.iter().filter(|k| dead_key || k.1 != "dead").collect();
    let lines: String = keys
        .iter()
        .map(|(k, l, p)| format!("{k} label={l} project={p}\n"))
        .collect();
    std::fs::write(dir.path().join("keys.txt"), lines).unwrap();
    std::fs::write(
        dir.path().join("keyturn.toml"),
        format!(
            "[rotation]\nmax_wait = \"3m\"\n[breaker]\nbase_cooldown = \"200ms\"\nmax_cooldown = \"1s\"\n[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 30\n\
             [models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 1000000\nrpd = {rpd}\n[models.\"{EMBED}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n"
        ),
    )
    .unwrap();
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(rpm, 1_000_000, rpd));
    models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
    let sim = Simulator::start(SimConfig {
        keys: keys
            .iter()
            .map(|(k, l, p)| SimKey {
                key: (*k).into(),
                label: Some((*l).into()),
                project: Some((*p).into()),
                state: if *l == "dead" {
                    KeyState::Invalid
                } else {
                    KeyState::Valid
                },
            })
            .collect(),
        models,
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    World { sim, dir }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
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
    let o = w.run(w.seed_cmd()).await;
    assert!(o.status.success(), "{}", text(&o));
    check_outputs(&w.out(), 5, 16);
    assert!(w.stats()["by_status"]["503"].as_u64().unwrap() > 0);
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
    assert!(!w.state().join("state.json").exists());
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Scrapes until `pred` holds (the process is starting or working), up to a generous bound.
async fn scrape_until(addr: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            last = r.text().await.unwrap_or_default();
            if pred(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the metrics never showed what was expected:\n{last}");
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
    let seed_metrics = format!("127.0.0.1:{}", free_port());
    let mut seed = w.seed_cmd();
    seed.arg("--metrics-addr").arg(&seed_metrics);
    let mut child = seed.spawn().unwrap();
    let text = scrape_until(&seed_metrics, |t| {
        t.contains("keyturn_requests_total{") && t.contains("keyturn_quota_used{")
    })
    .await;
    child.kill().ok();
    child.wait().ok();
    assert!(text.contains("outcome=\"ok\""), "{text}");
    assert!(text.contains("keyturn_keys{state=\"usable\"}"), "{text}");
    assert!(text.contains("window=\"day\""), "{text}");
    for (k, ..) in KEYS {
        assert!(!text.contains(k), "a key in the metrics");
    }

    let (sim_port, sim_metrics) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let mut sim = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["--metrics-addr", &sim_metrics, "sim", "--port"])
        .arg(sim_port.to_string())
        .args(["--key", "made-up-metrics-key@p1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{sim_port}/v1beta/models/{FLASH}:generateContent");
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
    let text = scrape_until(&sim_metrics, |t| {
        t.contains("keyturn_sim_responses_total{key=\"key-1\",status=\"200\"} 1")
    })
    .await;
    sim.kill().ok();
    sim.wait().ok();
    assert!(!text.contains("made-up-metrics-key"), "{text}");
}
