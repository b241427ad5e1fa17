//! `multi-process`: three seed processes on one Redis namespace: no 429 keyturn caused

use std::path::Path;
use std::time::Duration;

use keyturn_sim::{Limits, SimConfig};
use serde_json::Value;

use super::roomy;
use crate::world::{
    EMBED, FLASH, Report, World, graph_problems, key, scope_field, synth_transcripts,
};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let redis = keyturn_store::testkit::TestRedis::try_get().map_err(|why| {
        format!(
            "SKIP: no Redis ({why}; set KEYTURN_TEST_REDIS_URL, run one on 6379, or install redis-server)"
        )
    })?;
    let namespace = keyturn_store::testkit::unique_namespace("scenario-multi");
    let rpm = 30;
    let keys = vec![key("k1", "p1"), key("k2", "p2")];
    let mut w = World::new(
        bin,
        keys,
        &[
            (FLASH, Limits::new(rpm, 10_000_000, 100_000)),
            (EMBED, roomy()),
        ],
        SimConfig::default(),
        &format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nnamespace = \"{namespace}\"\n",
            redis.url()
        ),
    )
    .await?;
    // A failed attempt's kind (debug) tells a request that never reached the server from
    // room taken ahead and never given back, should the accounting check below fail.
    w.env
        .insert("RUST_LOG".into(), "warn,keyturn_gemini=debug".into());
    for i in 0..3 {
        synth_transcripts(&w.path(&format!("inputs-{i}")), 8, &format!("worker {i}"))
            .map_err(|e| e.to_string())?;
    }
    let mut children = Vec::new();
    for i in 0..3 {
        let args = w.seed_args(
            &format!("inputs-{i}"),
            &format!("out-{i}"),
            &["--chunk-tokens", "60"],
        );
        children.push(w.command(&args).spawn().map_err(|e| e.to_string())?);
    }
    let mut codes = Vec::new();
    let mut logs = Vec::new();
    for c in children {
        let o = tokio::time::timeout(Duration::from_secs(600), c.wait_with_output())
            .await
            .map_err(|_| "a seed process did not finish in 10 minutes".to_owned())?
            .map_err(|e| e.to_string())?;
        codes.push(o.status.code());
        logs.push(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    r.check(
        codes.iter().all(|c| *c == Some(0)),
        format!("three processes finish: exits {codes:?}"),
    );
    let stats = w.stats();
    r.check(
        w.responses(429) == 0,
        format!(
            "the server answered no 429 ({} responses in all)",
            stats["responses"]
        ),
    );
    for p in ["p1", "p2"] {
        let peak = scope_field(&stats, p, FLASH, "peak_rpm");
        let admitted = scope_field(&stats, p, FLASH, "admitted");
        r.check(peak <= rpm && admitted > 0, format!("{p}/{FLASH}: {admitted} admitted, peak {peak} in a minute ≤ {rpm} between three processes"));
    }
    let hist = w.run(&["status", "--history", "--json"]).await;
    let rows: Value = serde_json::from_str(&hist.stdout).unwrap_or(Value::Null);
    let ours: u64 = rows
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|r| r["requests"].as_u64()).sum());
    let theirs: u64 = stats["scopes"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|s| s["admitted"].as_u64()).sum());
    if !r.check(
        ours == theirs,
        format!("the shared usage history counts what the server admitted: {ours} = {theirs}"),
    ) {
        explain_history(r, &rows, &stats, &logs);
    }
    for i in 0..3 {
        let problem = graph_problems(&w.path(&format!("out-{i}")), 8);
        r.check(
            problem.is_none(),
            format!(
                "worker {i}'s graph is whole: {}",
                problem.unwrap_or_else(|| "yes".into())
            ),
        );
    }
    drop(redis);
    Ok(())
}

/// What tells an accounting flake's cause: the history per key and model (sent, served,
/// refused) beside the server's count per scope, and every warning the workers logged.
fn explain_history(r: &Report, rows: &Value, stats: &Value, logs: &[String]) {
    for row in rows.as_array().into_iter().flatten() {
        r.note(format!(
            "history {} {}: sent {}, served {}, refused {}",
            row["key"], row["model"], row["requests"], row["served"], row["refused"]
        ));
    }
    for s in stats["scopes"].as_array().into_iter().flatten() {
        r.note(format!(
            "server {} {}: admitted {}",
            s["project"], s["model"], s["admitted"]
        ));
    }
    for (i, log) in logs.iter().enumerate() {
        for line in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("attempt failed"))
        {
            r.note(format!("worker {i}: {line}"));
        }
    }
}
