//! `keyturn seed --batch`, the real binary against the simulator's Batch Mode over HTTP: three
//! projects (one free tier, which refuses batches), jobs pinned to their project, the graph equal
//! to an interactive run's node for node and edge for edge, and crashes — SIGKILL while jobs
//! run, an abort between Gemini's acceptance and the checkpoint — that resume without sending
//! any chunk twice while its job lives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keyturn_sim::{Limits, ProjectConfig, SimConfig, SimKey, Simulator, Tier};
use serde_json::Value;

mod embeddings;
mod limits;
mod status;

const FLASH: &str = "gemini-2.5-flash";
const EMBED: &str = "gemini-embedding-001";
/// Ring order puts the free-tier project first, so the first job meets its refusal.
const KEYS: &[(&str, &str, &str)] = &[
    ("AIzaSyTESTbatchFree000000000001", "free-1", "proj-free"),
    ("AIzaSyTESTbatchA000000000001", "a-1", "proj-a"),
    ("AIzaSyTESTbatchA000000000002", "a-2", "proj-a"),
    ("AIzaSyTESTbatchB000000000001", "b-1", "proj-b"),
];

struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(running_secs: u64) -> Self {
        Self::with_item_errors(running_secs, 0).await
    }

    /// Every `every`-th request of a job is answered with an item error (0: none).
    async fn with_item_errors(running_secs: u64, every: u64) -> Self {
        Self::build(running_secs, every, 100).await
    }

    /// `concurrent`: jobs a project may have pending or running at once.
    async fn build(running_secs: u64, every: u64, concurrent: u64) -> Self {
        Self::build_with_invalid(running_secs, every, concurrent, &[]).await
    }

    /// As [`World::build`], the keys labelled in `invalid` refused by Gemini as invalid.
    async fn build_with_invalid(
        running_secs: u64,
        every: u64,
        concurrent: u64,
        invalid: &[&str],
    ) -> Self {
        Self::custom(running_secs, invalid, "", |r| {
            r.batch_item_error_every = every;
            r.batch_concurrent = concurrent;
        })
        .await
    }

    /// The world with `pipeline` added to keyturn's `[pipeline]` table (`batch_max_requests` is
    /// 6 unless it sets it) and the simulator's resource settings changed by `sim`.
    async fn custom(
        running_secs: u64,
        invalid: &[&str],
        pipeline: &str,
        sim: impl FnOnce(&mut keyturn_sim::ResourceConfig),
    ) -> Self {
        let requests = if pipeline.contains("batch_max_requests") {
            ""
        } else {
            "batch_max_requests = 6\n"
        };
        let dir = tempfile::tempdir().unwrap();
        keyturn_pipeline::demo::write_samples(&dir.path().join("transcripts")).unwrap();
        let lines: String = KEYS
            .iter()
            .map(|(k, l, p)| format!("{k} label={l} project={p}\n"))
            .collect();
        std::fs::write(dir.path().join("keys.txt"), lines).unwrap();
        std::fs::write(
            dir.path().join("keyturn.toml"),
            format!(
                "[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
                 [models.\"{FLASH}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n\
                 [models.\"{EMBED}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n\
                 [pipeline]\n{requests}{pipeline}\nbatch_poll = \"100ms\"\nbatch_max_poll = \"400ms\"\n"
            ),
        )
        .unwrap();
        let mut models = BTreeMap::new();
        models.insert(FLASH.to_owned(), Limits::new(1000, 10_000_000, 100_000));
        models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
        let mut projects = BTreeMap::new();
        for p in ["proj-a", "proj-b"] {
            projects.insert(
                p.to_owned(),
                ProjectConfig {
                    tier: Tier::Paid,
                    ..ProjectConfig::default()
                },
            );
        }
        let mut cfg = SimConfig {
            keys: KEYS
                .iter()
                .map(|(k, l, p)| SimKey {
                    key: (*k).into(),
                    label: Some((*l).into()),
                    project: Some((*p).into()),
                    state: if invalid.contains(l) {
                        keyturn_sim::KeyState::Invalid
                    } else {
                        keyturn_sim::KeyState::Valid
                    },
                })
                .collect(),
            models,
            projects,
            ..SimConfig::default()
        };
        cfg.resources.batch_pending_secs = 0;
        cfg.resources.batch_running_secs = running_secs;
        sim(&mut cfg.resources);
        let sim = Simulator::start(cfg).await.unwrap();
        World { sim, dir }
    }

    fn inputs(&self) -> PathBuf {
        self.dir.path().join("transcripts")
    }

    fn command(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYTURN_KEYS_FILE", self.dir.path().join("keys.txt"))
            .env("KEYTURN_CONFIG", self.dir.path().join("keyturn.toml"))
            .env("KEYTURN_STATE_DIR", self.dir.path().join("state"))
            .env("GEMINI_BASE_URL", self.sim.base_url())
            .current_dir(self.dir.path())
            .args([
                "seed",
                self.inputs().to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--chunk-tokens",
                "90",
                "--dimensions",
                "16",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    async fn run(&self, mut c: Command) -> Output {
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    /// Every batch job of a project, as Gemini lists them (the simulator's `GET batches`).
    async fn jobs(&self, key: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let url = format!(
                "{}/v1beta/batches?pageSize=100&pageToken={token}",
                self.sim.base_url()
            );
            let v: Value = reqwest::Client::new()
                .get(url)
                .header("x-goog-api-key", key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            all.extend(v["operations"].as_array().cloned().unwrap_or_default());
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_owned(),
                _ => return all,
            }
        }
    }

    /// Requests in every job of the paid projects.
    async fn batched_requests(&self) -> u64 {
        let mut n = 0;
        for key in [KEYS[1].0, KEYS[3].0] {
            for j in self.jobs(key).await {
                n += j["metadata"]["batchStats"]["requestCount"]
                    .as_str()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap();
            }
        }
        n
    }
}

/// Starts `seed --batch` and SIGKILLs it once every episode is in a job recorded with its name
/// (watched on the filesystem, not the clock); returns the checkpoint it left.
async fn run_until_recorded_then_kill(w: &World, out: &Path) -> Value {
    let mut child = w.command(out, &["--batch"]).spawn().unwrap();
    let cp_path = out.join(".keyturn-checkpoint/checkpoint.json");
    // Wait (on the filesystem, not the clock) until every job is accepted and recorded.
    let named = |v: &Value| {
        v["batches"]
            .as_object()
            .is_some_and(|b| !b.is_empty() && b.values().all(|r| r["name"].is_string()))
    };
    let mut seen = Value::Null;
    for _ in 0..600 {
        if let Ok(bytes) = std::fs::read(&cp_path)
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && named(&v)
            && v["batches"]
                .as_object()
                .unwrap()
                .values()
                .map(|r| r["episodes"].as_array().unwrap().len())
                .sum::<usize>()
                == 5
        {
            seen = v;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(named(&seen), "the jobs were never recorded");
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("run-report.json")).unwrap()).unwrap()
}

fn graph(out: &Path) -> (String, String) {
    (
        std::fs::read_to_string(out.join("graph/nodes.jsonl")).unwrap(),
        std::fs::read_to_string(out.join("graph/edges.jsonl")).unwrap(),
    )
}

/// Chunks of the whole input set, from an interactive run's report.
fn chunks_of(r: &Value) -> u64 {
    r["items"]["chunks"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_graph_is_the_interactive_graph_and_the_free_project_is_passed_over() {
    let w = World::new(1).await;
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let batch = w.dir.path().join("out-batch");
    let o = w.run(w.command(&batch, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));

    let (n_i, e_i) = graph(&inter);
    let (n_b, e_b) = graph(&batch);
    assert!(n_i.lines().count() > 10 && e_i.lines().count() > 10);
    assert_eq!(n_b, n_i, "nodes differ");
    assert_eq!(e_b, e_i, "edges differ");

    let ri = report(&inter);
    let rb = report(&batch);
    assert_eq!(rb["result"]["stop"], "done", "{rb}");
    assert_eq!(rb["items"]["processed"], ri["items"]["processed"]);
    let b = &rb["batch"];
    assert!(
        b["projects_off"]["proj-free"]
            .as_str()
            .unwrap()
            .contains("FAILED_PRECONDITION"),
        "{b}"
    );
    assert!(text(&o).contains("batch mode switched off for project proj-free"));
    assert!(b["submitted"].as_u64().unwrap() >= 2, "{b}");
    assert_eq!(b["items_ok"].as_u64().unwrap(), chunks_of(&ri));
    assert_eq!(b["items_failed"], 0);
    assert!(b["jobs"]["proj-free"].is_null());
    assert!(b["jobs"]["proj-a"]["succeeded"].as_u64().unwrap() >= 1);
    assert!(b["jobs"]["proj-b"]["succeeded"].as_u64().unwrap() >= 1);
    let (batch_usd, inter_usd) = (
        b["estimated_cost_usd"].as_f64().unwrap(),
        b["interactive_cost_usd"].as_f64().unwrap(),
    );
    assert!(batch_usd > 0.0 && (batch_usd * 2.0 - inter_usd).abs() < 1e-12);
    // Every chunk went in exactly one job, and no interactive extraction was made.
    assert_eq!(w.batched_requests().await, chunks_of(&ri));
    // Each job was created, polled and read only with keys of its own project.
    let stats = w.sim.state().stats();
    assert_eq!(stats["resources"]["cross_project_uses"], 0, "{stats}");
    assert!(
        stats["resources"]["uses"].as_array().unwrap().len() >= 4,
        "{stats}"
    );
    let all = format!(
        "{}{}{}",
        text(&o),
        rb,
        std::fs::read_to_string(batch.join(".keyturn-checkpoint/checkpoint.json")).unwrap()
    );
    for (k, _, _) in KEYS {
        assert!(!all.contains(k), "a key leaked");
    }
    // Finished jobs leave the checkpoint.
    let cp: Value = serde_json::from_slice(
        &std::fs::read(batch.join(".keyturn-checkpoint/checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert!(cp["batches"].is_null(), "{cp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_between_submit_and_checkpoint_adopts_the_job_instead_of_sending_it_again() {
    let w = World::new(1).await;
    let out = w.dir.path().join("out");
    let mut c = w.command(&out, &["--batch"]);
    c.env("KEYTURN_TEST_ABORT_AFTER_SUBMIT", "1");
    let o = w.run(c).await;
    assert!(!o.status.success(), "the hook aborts: {}", text(&o));
    let cp: Value = serde_json::from_slice(
        &std::fs::read(out.join(".keyturn-checkpoint/checkpoint.json")).unwrap(),
    )
    .unwrap();
    let recorded = cp["batches"].as_object().unwrap();
    assert_eq!(recorded.len(), 1);
    assert!(
        recorded.values().all(|r| r["name"].is_null()),
        "killed before the name was recorded: {cp}"
    );
    let accepted = w.batched_requests().await;
    assert!(accepted > 0, "Gemini had accepted the job");

    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["batch"]["adopted"], 1, "{r}");
    assert_eq!(r["items"]["processed"], 5);
    // Every chunk in exactly one job: the adopted one was not sent again.
    assert_eq!(w.batched_requests().await, chunks_of(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_jobs_run_resumes_by_polling_the_same_jobs() {
    // Jobs run for 30 simulated seconds: the kill lands while they run.
    let w = World::new(30).await;
    let out = w.dir.path().join("out");
    let seen = run_until_recorded_then_kill(&w, &out).await;
    let before = w.batched_requests().await;

    // The jobs finish on the simulator's clock while nobody polls.
    w.sim.state().clock.advance(60_000);
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["items"]["processed"], 5);
    assert_eq!(
        r["batch"]["resumed"].as_u64().unwrap(),
        seen["batches"].as_object().unwrap().len() as u64
    );
    assert_eq!(r["batch"]["submitted"], 0, "{r}");
    assert_eq!(w.batched_requests().await, before, "nothing was sent again");
    assert_eq!(before, chunks_of(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_items_fall_back_to_interactive_calls_and_the_graph_is_still_the_same() {
    let w = World::with_item_errors(1, 4).await;
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let batch = w.dir.path().join("out-batch");
    let o = w
        .run(w.command(&batch, &["--batch", "--batch-fallback", "interactive"]))
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&batch);
    assert_eq!(r["result"]["stop"], "done", "{r}");
    assert!(r["batch"]["items_failed"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["batch"]["interactive_episodes"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["items"]["processed"], 5);
    assert_eq!(graph(&batch), graph(&inter));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_episodes_with_failed_items_go_to_later_jobs_or_fail_named() {
    // Every request fails: the episodes go to later jobs twice, then fail with the item error.
    let w = World::with_item_errors(1, 1).await;
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["items"]["failed"], 5, "{r}");
    assert!(
        r["failed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("batch items failed 3 times"),
        "{r}"
    );
    // Three rounds of jobs, each carrying every chunk once.
    let chunks = r["batch"]["items_failed"].as_u64().unwrap();
    assert_eq!(w.batched_requests().await, chunks);
    assert_eq!(chunks % 3, 0);
    assert!(r["batch"]["submitted"].as_u64().unwrap() >= 6, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_changed_while_its_job_runs_is_submitted_again_with_its_new_content() {
    let w = World::new(30).await;
    let out = w.dir.path().join("out");
    run_until_recorded_then_kill(&w, &out).await;
    let before = w.batched_requests().await;
    // One transcript changes while the jobs run.
    let file = std::fs::read_dir(w.inputs())
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    let mut text_now = std::fs::read_to_string(&file).unwrap();
    text_now.push_str(
        "\n\n00:59:00.000 --> 00:59:05.000\nA closing remark about Lisbon and the Tagus river.\n",
    );
    std::fs::write(&file, text_now).unwrap();
    w.sim.state().clock.advance(60_000);
    // The new job runs 30 simulated seconds too: the simulator's clock moves on meanwhile.
    let state = w.sim.state().clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            state.clock.advance(10_000);
        }
    });
    let o = w.run(w.command(&out, &["--batch"])).await;
    ticker.abort();
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["items"]["processed"], 5, "{r}");
    assert_eq!(
        r["batch"]["submitted"], 1,
        "only the changed episode goes again: {r}"
    );
    assert!(w.batched_requests().await > before);
    // Its episode file holds the new content's hash.
    let hashes: Vec<String> = std::fs::read_dir(out.join("episodes"))
        .unwrap()
        .map(|e| {
            let v: Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            v["source"]["content_hash"].as_str().unwrap().to_owned()
        })
        .collect();
    let new_hash = keyturn_pipeline::run::discover(&[w.inputs()], false)
        .items
        .into_iter()
        .find(|i| i.source == file || i.path == file)
        .map(|i| i.hash)
        .unwrap();
    assert!(hashes.contains(&new_hash), "{hashes:?} {new_hash}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_the_jobs_running_and_recorded_and_exits_130() {
    let w = World::new(30).await;
    let out = w.dir.path().join("out");
    let mut child = w.command(&out, &["--batch"]).spawn().unwrap();
    let cp_path = out.join(".keyturn-checkpoint/checkpoint.json");
    let mut recorded = false;
    for _ in 0..600 {
        if let Ok(bytes) = std::fs::read(&cp_path)
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && v["batches"].as_object().is_some_and(|b| {
                b.values()
                    .filter(|r| r["name"].is_string())
                    .map(|r| r["episodes"].as_array().unwrap().len())
                    .sum::<usize>()
                    == 5
            })
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recorded);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let r = report(&out);
    assert_eq!(r["result"]["stop"], "interrupted", "{r}");
    assert_eq!(r["items"]["processed"], 0);
    let jobs = r["batch"]["jobs"].as_object().unwrap();
    assert!(!jobs.is_empty(), "{r}");
    let cp: Value = serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    assert!(
        !cp["batches"].as_object().unwrap().is_empty(),
        "the jobs stay recorded"
    );
    // Nothing was cancelled at Gemini: the jobs still run.
    for key in [KEYS[1].0, KEYS[3].0] {
        for j in w.jobs(key).await {
            assert_ne!(j["metadata"]["state"], "BATCH_STATE_CANCELLED");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_at_its_concurrent_job_limit_gets_the_job_later_and_keeps_batch_mode() {
    // One job at a time per project; the run needs more: the 429s wait, they switch nothing off.
    let w = World::build(1, 0, 1).await;
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["items"]["processed"], 5, "{r}");
    let off = r["batch"]["projects_off"].as_object().unwrap();
    assert_eq!(off.keys().collect::<Vec<_>>(), ["proj-free"], "{r}");
    assert!(r["batch"]["submitted"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(
        w.batched_requests().await,
        r["items"]["chunks"].as_u64().unwrap()
    );
    let st = w.sim.state().stats();
    assert!(
        st["by_status"]["429"].as_u64().unwrap_or(0) > 0,
        "the limit was met: {}",
        st["by_status"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_ledger_switched_off_submits_no_job_and_its_project_keeps_batch_mode() {
    // proj-a's first key is dead; an interactive run finds it out and the state keeps it.
    let w = World::build_with_invalid(1, 0, 100, &["a-1"]).await;
    let inter = w.dir.path().join("out-interactive");
    let o = w.run(w.command(&inter, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let before = w.sim.state().stats();
    let batch = w.dir.path().join("out-batch");
    let o = w.run(w.command(&batch, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let rb = report(&batch);
    let b = &rb["batch"];
    // The project's other key took its jobs: batch mode stayed on there.
    assert!(b["projects_off"]["proj-a"].is_null(), "{b}");
    assert!(
        b["jobs"]["proj-a"]["succeeded"].as_u64().unwrap_or(0) >= 1,
        "{b}"
    );
    // The dead key was sent nothing by the batch run.
    let after = w.sim.state().stats();
    let calls = |stats: &Value| {
        stats["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == "a-1")
            .map(|k| k["requests"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    assert_eq!(calls(&after), calls(&before), "{}", after["keys"]);
}

/// `keyturn status --json` on the world's state.
async fn status_json(w: &World) -> Value {
    let o = status(w, &["--json"]).await;
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `keyturn status ARGS…` on the world's state; it must succeed.
async fn status(w: &World, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYTURN_KEYS_FILE", w.dir.path().join("keys.txt"))
        .env("KEYTURN_CONFIG", w.dir.path().join("keyturn.toml"))
        .env("KEYTURN_STATE_DIR", w.dir.path().join("state"))
        .env("GEMINI_BASE_URL", w.sim.base_url())
        .current_dir(w.dir.path())
        .arg("status")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let o = w.run(c).await;
    assert!(o.status.success(), "{}", text(&o));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_first_key_passes_its_projects_jobs_to_the_next_key_and_the_pool_learns_it() {
    // proj-a's first key was revoked and nothing knows it yet: its first submit meets
    // API_KEY_INVALID. That is the key's fault, not the project's: a-2 takes proj-a's jobs.
    let w = World::build_with_invalid(1, 0, 100, &["a-1"]).await;
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    let b = &r["batch"];
    assert_eq!(r["items"]["processed"], 5, "{r}");
    let off = b["projects_off"].as_object().unwrap();
    assert_eq!(off.keys().collect::<Vec<_>>(), ["proj-free"], "{b}");
    assert!(
        b["jobs"]["proj-a"]["succeeded"].as_u64().unwrap_or(0) >= 1,
        "{b}"
    );
    // Gemini has proj-a's jobs (listed with its live key), and the pool knows a-1 is dead.
    assert!(!w.jobs(KEYS[2].0).await.is_empty());
    let st = status_json(&w).await;
    let a1 = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "a-1")
        .cloned()
        .unwrap();
    assert!(!a1["disabled"].is_null(), "{a1}");
    assert!(
        text(&o).contains("trying the project's next key"),
        "{}",
        text(&o)
    );
}
