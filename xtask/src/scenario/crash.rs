//! `crash`: SIGKILL at random points, resume, every episode exactly once

use std::path::Path;
use std::time::Duration;

use keyturn_sim::Faults;
use rand::Rng;
use serde_json::Value;

use super::{code, roomy_world};
use crate::world::{Report, graph_problems, key, synth_transcripts};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("k1", "p1"), key("k2", "p2")];
    let slow = Faults {
        latency_ms: 120,
        jitter_ms: 60,
        ..Faults::default()
    };
    let w = roomy_world(bin, keys, slow).await?;
    let episodes = 24;
    synth_transcripts(&w.path("inputs"), episodes, "crash").map_err(|e| e.to_string())?;
    // Four requests in flight against a slow server: a run takes seconds, so kills land mid-run.
    let args = w.seed_args(
        "inputs",
        "out",
        &[
            "--chunk-tokens",
            "60",
            "--concurrency",
            "2",
            "--requests",
            "2",
        ],
    );
    let mut kills = 0;
    for round in 0..6 {
        let child = w.command(&args).spawn().map_err(|e| e.to_string())?;
        let after = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(after)).await;
        let pid = child.id();
        if let Some(pid) = pid {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .ok();
            kills += 1;
        }
        let o = child.wait_with_output().await.map_err(|e| e.to_string())?;
        let done = std::fs::read_dir(w.path("out/episodes"))
            .map(|d| d.count())
            .unwrap_or(0);
        r.note(format!(
            "round {round}: SIGKILL after {after} ms ({}), {done} episode files so far",
            if o.status.code().is_none() {
                "killed"
            } else {
                "had already finished"
            }
        ));
        let st = w.run(&["status", "--json"]).await;
        let parsed: Value = serde_json::from_str(&st.stdout).unwrap_or(Value::Bool(false));
        r.check(
            st.code == Some(0) && (parsed.is_object() || parsed.is_null()),
            format!(
                "round {round}: the state reads back after the kill (status exit {})",
                code(&st)
            ),
        );
    }
    let o = w.run(&args).await;
    r.check(
        o.code == Some(0),
        format!(
            "after {kills} SIGKILLs a last run finishes (exit {})",
            code(&o)
        ),
    );
    let problem = graph_problems(&w.path("out"), episodes);
    r.check(
        problem.is_none(),
        format!(
            "every episode exactly once, graph whole: {}",
            problem.unwrap_or_else(|| "yes".into())
        ),
    );
    // The same inputs in one uninterrupted run give the same graph.
    let clean_args = w.seed_args(
        "inputs",
        "out-clean",
        &["--chunk-tokens", "60", "--concurrency", "4"],
    );
    let clean = w.run(&clean_args).await;
    let (a, b) = (
        graph_shape(&w.path("out")),
        graph_shape(&w.path("out-clean")),
    );
    r.check(
        clean.code == Some(0) && a == b,
        format!(
            "the graph equals an uninterrupted run's: {} nodes / {} edges vs {} / {}",
            a.0.len(),
            a.1.len(),
            b.0.len(),
            b.1.len()
        ),
    );
    let again = w.run(&args).await;
    r.check(
        again.code == Some(0)
            && again
                .text()
                .contains(&format!("0 processed, {episodes} already done")),
        format!(
            "a rerun redoes nothing: {}",
            again
                .text()
                .lines()
                .find(|l| l.contains("episodes:"))
                .unwrap_or("?")
        ),
    );
    Ok(())
}

/// Node ids and (source, type, target) of edges, sorted.
fn graph_shape(out: &Path) -> (Vec<String>, Vec<String>) {
    let lines = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(out.join("graph").join(f))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mut nodes: Vec<String> = lines("nodes.jsonl")
        .iter()
        .map(|n| n["id"].to_string())
        .collect();
    let mut edges: Vec<String> = lines("edges.jsonl")
        .iter()
        .map(|e| format!("{} {} {}", e["source"], e["type"], e["target"]))
        .collect();
    nodes.sort();
    edges.sort();
    (nodes, edges)
}
