//! `recovery`: a 503 storm opens breakers; half-open probes close them; a dead key stays out

use std::path::Path;
use std::time::Duration;

use keyturn_sim::Faults;
use serde_json::Value;

use super::{code, roomy_world};
use crate::world::{Out, Report, dead_key, graph_problems, key, synth_transcripts};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("k1", "p1"), key("k2", "p2"), dead_key("revoked", "p3")];
    let storm = Faults {
        p503: 1.0,
        ..Faults::default()
    };
    let w = roomy_world(bin, keys, storm).await?;
    // One request at a time, so "refused once" is exact: nothing else is in flight when the
    // dead key's refusal comes back.
    let child = w
        .command(&w.seed_args(
            "transcripts",
            "out",
            &["--concurrency", "1", "--requests", "1"],
        ))
        .spawn()
        .map_err(|e| e.to_string())?;
    // Wait for the storm to open breakers, as keyturn's own state shows them.
    let mut opened = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = w.status().await;
        if st["keys"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k["breaker"]["state"] == "open"))
        {
            opened = true;
            break;
        }
    }
    r.check(
        opened,
        "during the 503 storm a breaker opens (keyturn status)",
    );
    let during = w.responses(503);
    r.note(format!("503s answered during the storm: {during}"));
    // Keyturn backs off while the breakers are open: the storm is not hammered.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_a_second = w.responses(503) - during;
    r.check(
        after_a_second < 40,
        format!("breakers hold traffic back: {after_a_second} more 503s in the next second"),
    );
    w.sim.state().set_faults(Faults::default());
    let o = match tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await {
        Ok(Ok(o)) => Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        _ => return Err("the seed did not finish within 2 minutes of the storm ending".into()),
    };
    r.check(
        o.code == Some(0),
        format!(
            "the run rides out the storm and finishes (exit {})",
            code(&o)
        ),
    );
    let log = o.stderr.clone();
    r.check(
        log.contains("circuit breaker opened"),
        "log: one INFO line as a breaker opens",
    );
    r.check(
        log.contains("key recovered: circuit breaker closed"),
        "log: a half-open probe succeeds and closes it",
    );
    // Back to normal: more work after the storm is served by both live keys, whose breakers close.
    let ok_before: Vec<u64> = ["k1", "k2"]
        .iter()
        .map(|k| w.key_stats(k)["by_status"]["200"].as_u64().unwrap_or(0))
        .collect();
    synth_transcripts(&w.path("more"), 6, "after the storm").map_err(|e| e.to_string())?;
    // A breaker still cooling from the storm (at most max_cooldown = 2 s) is probed once that
    // has passed; a short first run may end before then.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let more = w
        .run(&w.seed_args(
            "more",
            "out-more",
            &["--concurrency", "1", "--requests", "1"],
        ))
        .await;
    r.check(
        more.code == Some(0),
        format!("a run after the storm finishes (exit {})", code(&more)),
    );
    let ok_after: Vec<u64> = ["k1", "k2"]
        .iter()
        .map(|k| w.key_stats(k)["by_status"]["200"].as_u64().unwrap_or(0))
        .collect();
    r.check(
        ok_after.iter().zip(&ok_before).all(|(a, b)| a > b),
        format!("both live keys serve again: successes {ok_before:?} → {ok_after:?}"),
    );
    let st = w.status().await;
    let states: Vec<(String, String)> = st["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    (
                        k["label"].as_str().unwrap_or("").to_owned(),
                        k["breaker"]["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    r.check(
        states
            .iter()
            .filter(|(l, _)| l != "revoked")
            .all(|(_, s)| s == "closed"),
        format!("back to normal: live keys' breakers closed {states:?}"),
    );
    let revoked = st["keys"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["label"] == "revoked").cloned())
        .unwrap_or(Value::Null);
    r.check(
        revoked["disabled"]["reason"] == "invalid",
        format!("the revoked key is disabled: {}", revoked["disabled"]),
    );
    let ks = w.key_stats("revoked");
    let non_503: u64 = ks["by_status"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(s, _)| *s != "503")
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    r.check(
        non_503 == 1,
        format!("a dead key stays out: it was refused once and never tried again ({non_503})"),
    );
    r.check(
        graph_problems(&w.path("out"), 5).is_none(),
        "the graph is whole",
    );
    Ok(())
}
