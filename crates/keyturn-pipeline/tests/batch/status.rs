//! `keyturn status` shows batch jobs: a running batch seed's (from its run record) and the last
//! one's once it ended — per project and state, items done of total, the estimated cost at the
//! batch price next to the interactive one — in the table and in `--json`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_last_batch_seeds_jobs_items_and_costs() {
    let w = World::new(1).await;
    let out = w.dir.path().join("out");
    let o = w.run(w.command(&out, &["--batch"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    let rb = &r["batch"];

    let st = status_json(&w).await;
    let last = &st["last_batch"];
    let b = &last["batch"];
    assert_eq!(last["episodes_done"], 5, "{last}");
    // The same jobs, items and costs as the run's own report.
    assert_eq!(b["jobs"], rb["jobs"], "{b}");
    assert!(
        b["jobs"]["proj-a"]["succeeded"].as_u64().unwrap() >= 1,
        "{b}"
    );
    assert_eq!(b["items_done"], rb["items_ok"], "{b}");
    assert_eq!(b["items_total"], r["items"]["chunks"], "{b}");
    assert_eq!(b["estimated_cost_usd"], rb["estimated_cost_usd"]);
    assert_eq!(b["interactive_cost_usd"], rb["interactive_cost_usd"]);
    assert!(st["runs"].as_array().unwrap().is_empty(), "the run ended");

    let table = String::from_utf8(status(&w, &[]).await.stdout).unwrap();
    assert!(table.contains("last batch seed"), "{table}");
    assert!(table.contains("jobs on proj-a: succeeded"), "{table}");
    let chunks = r["items"]["chunks"].as_u64().unwrap();
    assert!(
        table.contains(&format!("items {chunks}/{chunks} · estimated cost $")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_running_batch_seeds_jobs_from_its_record() {
    let w = World::new(1).await;
    // A first command makes the state; then a run record of a live process (this one), as a
    // running `seed --batch` keeps it, refreshed now.
    let o = w.run(w.command(&w.dir.path().join("out"), &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let now = status_json(&w).await["at_ms"].as_i64().unwrap();
    let runs = w.dir.path().join("state/runs");
    std::fs::create_dir_all(&runs).unwrap();
    let record = serde_json::json!({
        "pid": std::process::id(), "out": "/tmp/batch-out", "started_ms": now - 1_000,
        "updated_ms": now, "episodes_done": 2, "episodes_total": 5, "left": [],
        "batch": {"at_ms": now, "jobs": {"proj-a": {"running": 2, "succeeded": 1},
                  "proj-b": {"pending": 1}},
                  "items_done": 12, "items_total": 40,
                  "estimated_cost_usd": 0.25, "interactive_cost_usd": 0.5}
    });
    std::fs::write(
        runs.join(format!("{}-{}.json", std::process::id(), now - 1_000)),
        record.to_string(),
    )
    .unwrap();
    let st = status_json(&w).await;
    let run = &st["runs"][0];
    assert_eq!(run["batch"], record["batch"], "{st}");
    let table = String::from_utf8(status(&w, &[]).await.stdout).unwrap();
    assert!(
        table.contains("jobs on proj-a: running 2, succeeded 1"),
        "{table}"
    );
    assert!(table.contains("jobs on proj-b: pending 1"), "{table}");
    assert!(
        table.contains(
            "items 12/40 · estimated cost $0.2500 at the batch price ($0.5000 interactive)"
        ),
        "{table}"
    );
}
