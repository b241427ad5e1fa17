//! `cargo xtask bench --only batch`: the generated 1,000-episode set through the simulator,
//! interactively and with `seed --batch` (embeddings as batch jobs too), on two paid projects:
//! the requests each run sent to Gemini (the simulator's own count) and the estimated cost of
//! each (the run report's tokens at the dated price table's interactive and batch prices).
//! Counts, not times: they do not depend on the machine.

use std::path::Path;

use keyturn_sim::{ProjectConfig, SimConfig, Tier};
use serde_json::{Value, json};

use crate::world::{EMBED, FLASH, World, key, synth_transcripts};

/// Episodes in the generated set (`--quick`: fewer).
const EPISODES: usize = 1_000;

/// Requests the simulator answered or refused, all keys.
fn requests(w: &World) -> u64 {
    w.stats()["keys"].as_array().map_or(0, |ks| {
        ks.iter().filter_map(|k| k["requests"].as_u64()).sum()
    })
}

fn report(out: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(out.join("run-report.json")).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Runs the section; `quick` seeds 200 episodes instead of 1,000.
pub(super) async fn run(quick: bool) -> Result<Value, String> {
    let bin = crate::world::build_keyturn(true)?;
    let episodes = if quick { 200 } else { EPISODES };
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
    // Jobs start at once and run one simulated second: the bench counts, it does not wait.
    // 200 requests a job keep an inline body under the simulator's 2 MB request limit (Google
    // takes 20 MB).
    sim.resources.batch_pending_secs = 0;
    sim.resources.batch_running_secs = 1;
    let roomy = keyturn_sim::Limits::new(100_000, 1_000_000_000, 10_000_000);
    let w = World::new(
        &bin,
        vec![key("a1", "proj-a"), key("b1", "proj-b")],
        &[(FLASH, roomy), (EMBED, roomy)],
        sim,
        "[pipeline]\nbatch_embeddings = true\nbatch_max_requests = 200\nbatch_poll = \"200ms\"\nbatch_max_poll = \"1s\"\n",
    )
    .await?;
    synth_transcripts(&w.path("inputs"), episodes, "bench-batch").map_err(|e| e.to_string())?;

    let mut runs = serde_json::Map::new();
    for (name, extra) in [("interactive", &[][..]), ("batch", &["--batch"][..])] {
        eprintln!("xtask bench: seed {name} on {episodes} generated episodes…");
        let before = requests(&w);
        let out = format!("out-{name}");
        let o = w.run(&w.seed_args("inputs", &out, extra)).await;
        if o.code != Some(0) {
            return Err(format!("seed {name} failed: {}", o.tail()));
        }
        let r = report(&w.path(&out))?;
        runs.insert(
            name.to_owned(),
            json!({
                "requests_to_gemini": requests(&w) - before,
                "episodes": r["items"]["processed"],
                "chunks": r["items"]["chunks"],
                "batch": r["batch"],
            }),
        );
    }
    let b = &runs["batch"]["batch"];
    let (batch_usd, inter_usd) = (
        b["estimated_cost_usd"].as_f64(),
        b["interactive_cost_usd"].as_f64(),
    );
    let (ri, rb) = (
        runs["interactive"]["requests_to_gemini"]
            .as_u64()
            .unwrap_or(0),
        runs["batch"]["requests_to_gemini"].as_u64().unwrap_or(0),
    );
    w.sim.shutdown().await;
    Ok(json!({
        "episodes": episodes,
        "model": FLASH,
        "interactive_requests": ri,
        "batch_requests": rb,
        "batch_jobs": b["submitted"],
        // The same answered tokens at each price: the simulator answers both runs alike.
        "interactive_cost_usd": inter_usd,
        "batch_cost_usd": batch_usd,
        "price_table_date": b["price_table_date"],
        "runs": runs,
    }))
}

/// The bench table's row, once the section ran.
pub(super) fn row(r: &Value) -> Option<[String; 4]> {
    let b = r.get("batch")?;
    let usd = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "?".to_owned(), |c| format!("${c:.2}"))
    };
    Some([
        format!(
            "`seed --batch` vs interactive, {} generated episodes: requests to Gemini, estimated cost",
            b["episodes"]
        ),
        format!(
            "{} requests ({} jobs), {}",
            b["batch_requests"],
            b["batch_jobs"],
            usd(&b["batch_cost_usd"])
        ),
        format!(
            "interactive: {} requests, {} (prices of {})",
            b["interactive_requests"],
            usd(&b["interactive_cost_usd"]),
            b["price_table_date"].as_str().unwrap_or("?")
        ),
        "half the cost".into(),
    ])
}
