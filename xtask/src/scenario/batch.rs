//! `batch`: `keyturn seed --batch` over three projects (one free tier, which refuses batches),
//! killed twice — between Gemini's acceptance of a job and its checkpoint (the test-only
//! `KEYTURN_TEST_ABORT_AFTER_SUBMIT` hook), and with SIGKILL while the jobs run — then resumed:
//! every episode once, every chunk in exactly one job (the simulator's own job list), no job
//! touched by another project's key, and the graph equal to an interactive run's. The jobs run on
//! the simulator's admin clock, so it takes seconds.

use std::path::Path;
use std::time::Duration;

use keyturn_sim::{ProjectConfig, SimConfig, Tier};
use serde_json::Value;

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Report, World, graph_problems, key, synth_transcripts};

const EPISODES: usize = 200;

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![
        key("free1", "proj-free"),
        key("a1", "proj-a"),
        key("a2", "proj-a"),
        key("b1", "proj-b"),
    ];
    let mut sim = SimConfig::default();
    for p in ["proj-a", "proj-b"] {
        sim.projects.insert(
            p.to_owned(),
            ProjectConfig {
                tier: Tier::Paid,
                ..ProjectConfig::default()
            },
        );
    }
    // Jobs pend one simulated second and run for ten minutes: only the admin clock ends them.
    sim.resources.batch_pending_secs = 1;
    sim.resources.batch_running_secs = 600;
    let w = World::new(
        bin,
        keys,
        &[(FLASH, roomy()), (EMBED, roomy())],
        sim,
        "[pipeline]\nbatch_max_requests = 120\nbatch_poll = \"100ms\"\nbatch_max_poll = \"300ms\"\n",
    )
    .await?;
    synth_transcripts(&w.path("inputs"), EPISODES, "batch").map_err(|e| e.to_string())?;

    // The reference: the same inputs, interactively.
    let inter = w.run(&w.seed_args("inputs", "out-interactive", &[])).await;
    r.check(
        inter.code == Some(0),
        format!("an interactive run finishes (exit {})", code(&inter)),
    );
    let chunks = read_report(&w.path("out-interactive"))["items"]["chunks"]
        .as_u64()
        .unwrap_or(0);
    let args = w.seed_args("inputs", "out", &["--batch"]);

    // Kill 1: right after Gemini accepted the second job, before its name is checkpointed.
    let mut c = w.command(&args);
    c.env("KEYTURN_TEST_ABORT_AFTER_SUBMIT", "2");
    let first = w.run_cmd(c).await;
    let cp = read_checkpoint(&w.path("out"));
    let unnamed = jobs_in(&cp).filter(|j| j["name"].is_null()).count();
    r.check(
        first.code != Some(0) && unnamed == 1,
        format!(
            "kill 1 lands between submit and checkpoint (exit {}, {unnamed} job recorded without its name)",
            code(&first)
        ),
    );

    // Kill 2: SIGKILL once every episode is in a recorded job, while the jobs run.
    let mut child = w.command(&args).spawn().map_err(|e| e.to_string())?;
    let mut recorded = false;
    for _ in 0..1200 {
        let cp = read_checkpoint(&w.path("out"));
        let episodes: usize = jobs_in(&cp)
            .filter(|j| j["name"].is_string())
            .map(|j| j["episodes"].as_array().map_or(0, Vec::len))
            .sum();
        if episodes == EPISODES && jobs_in(&cp).all(|j| j["name"].is_string()) {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The jobs leave PENDING after a second of the simulator's clock: move it past that, so
    // the kill lands while they run whatever the machine's speed (they run for 600 s).
    w.sim.state().clock.advance(2_000);
    child.start_kill().map_err(|e| e.to_string())?;
    let killed = child.wait().await.map_err(|e| e.to_string())?;
    let states = job_states(&w).await;
    let running = states
        .iter()
        .filter(|s| *s == "BATCH_STATE_RUNNING")
        .count();
    r.check(
        recorded && killed.code().is_none() && running > 0,
        format!(
            "kill 2 is a SIGKILL while {running} of {} jobs run, every episode in a recorded job",
            states.len()
        ),
    );
    let sent_before = batched_requests(&w).await;

    // The jobs end on the simulator's clock while no keyturn runs; the rerun collects them.
    w.sim.state().clock.advance(700_000);
    let last = w.run(&args).await;
    r.check(
        last.code == Some(0),
        format!("the resumed run finishes (exit {})", code(&last)),
    );
    let rep = read_report(&w.path("out"));
    let b = &rep["batch"];
    r.note(format!(
        "resumed run: {} jobs resumed ({} adopted by display name), {} submitted; jobs {}; cost ${:.4} batch vs ${:.4} interactive",
        b["resumed"], b["adopted"], b["submitted"], b["jobs"],
        b["estimated_cost_usd"].as_f64().unwrap_or(0.0),
        b["interactive_cost_usd"].as_f64().unwrap_or(0.0)
    ));
    r.check(
        b["submitted"] == 0 && b["resumed"].as_u64().unwrap_or(0) > 0,
        format!(
            "the resumed run polls the recorded jobs and submits none ({} resumed, {} submitted)",
            b["resumed"], b["submitted"]
        ),
    );
    let sent = batched_requests(&w).await;
    r.check(
        sent == chunks && sent == sent_before && chunks > 0,
        format!(
            "every chunk went in exactly one job: {sent} requests in the projects' jobs, {chunks} chunks"
        ),
    );
    let problem = graph_problems(&w.path("out"), EPISODES);
    r.check(
        problem.is_none(),
        format!(
            "every episode exactly once, graph whole: {}",
            problem.unwrap_or_else(|| "yes".into())
        ),
    );
    let same = |f: &str| {
        let a = std::fs::read(w.path("out/graph").join(f)).unwrap_or_default();
        let b = std::fs::read(w.path("out-interactive/graph").join(f)).unwrap_or_default();
        !a.is_empty() && a == b
    };
    r.check(
        same("nodes.jsonl") && same("edges.jsonl"),
        format!(
            "the graph equals the interactive run's node for node and edge for edge ({:?} vs {:?})",
            rep["graph"],
            read_report(&w.path("out-interactive"))["graph"]
        ),
    );
    let stats = w.stats();
    let free_jobs = stats["resources"]["by_project"]["proj-free"]["batches"]
        .as_array()
        .map_or(0, Vec::len);
    r.check(
        free_jobs == 0 && stats["resources"]["cross_project_uses"] == 0,
        format!(
            "the free-tier project ran no job and no job was touched by another project's key ({} cross-project uses)",
            stats["resources"]["cross_project_uses"]
        ),
    );
    r.check(
        first
            .text()
            .contains("batch mode switched off for project proj-free"),
        "the free-tier refusal is said",
    );
    Ok(())
}

fn read_report(out: &Path) -> Value {
    std::fs::read(out.join("run-report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn read_checkpoint(out: &Path) -> Value {
    std::fs::read(out.join(".keyturn-checkpoint/checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn jobs_in(cp: &Value) -> impl Iterator<Item = &Value> {
    cp["batches"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
}

/// Every job of the paid projects, as Gemini lists them, read with one key of each.
async fn jobs(w: &World) -> Vec<Value> {
    let mut all = Vec::new();
    for label in ["a1", "b1"] {
        let mut token = String::new();
        loop {
            let url = format!(
                "{}/v1beta/batches?pageSize=100&pageToken={token}",
                w.sim.base_url()
            );
            let page: Value = match reqwest::Client::new()
                .get(url)
                .header("x-goog-api-key", format!("made-up-scenario-key-{label}"))
                .send()
                .await
            {
                Ok(resp) => resp.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            all.extend(page["operations"].as_array().cloned().unwrap_or_default());
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_owned(),
                _ => break,
            }
        }
    }
    all
}

async fn job_states(w: &World) -> Vec<String> {
    jobs(w)
        .await
        .iter()
        .map(|j| j["metadata"]["state"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Requests in every job the paid projects hold.
async fn batched_requests(w: &World) -> u64 {
    jobs(w)
        .await
        .iter()
        .map(|j| {
            j["metadata"]["batchStats"]["requestCount"]
                .as_str()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}
