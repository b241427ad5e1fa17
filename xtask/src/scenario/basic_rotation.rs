//! `basic-rotation`: requests spread evenly over keys; counts per key agree with the server

use std::path::Path;

use keyturn_sim::SimConfig;

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Report, World, key, scope_field};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = (1..=4)
        .map(|i| key(&format!("k{i}"), &format!("p{i}")))
        .collect();
    let w = World::new(
        bin,
        keys,
        &[(FLASH, roomy()), (EMBED, roomy())],
        SimConfig::default(),
        "",
    )
    .await?;
    let o = w.run(&w.seed_args("transcripts", "out", &[])).await;
    r.check(
        o.code == Some(0),
        format!(
            "seed exits 0 (got {}) {}",
            code(&o),
            if o.code == Some(0) {
                String::new()
            } else {
                o.tail()
            }
        ),
    );
    let stats = w.stats();
    let counts: Vec<(String, u64)> = stats["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    (
                        k["label"].as_str().unwrap_or("").to_owned(),
                        k["requests"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    r.note(format!("requests per key at the server: {counts:?}"));
    let (min, max) = (
        counts.iter().map(|c| c.1).min().unwrap_or(0),
        counts.iter().map(|c| c.1).max().unwrap_or(0),
    );
    // Round-robin per model: keys differ by at most one request per model used (two models).
    r.check(
        min > 0 && max - min <= 2,
        format!("even spread: max {max} − min {min} ≤ 2"),
    );
    r.check(w.responses(429) == 0, "no 429 from the server");
    r.check(stats["query_key_uses"] == 0, "no key ever sent in the URL");
    let status = w.status().await;
    for m in [FLASH, EMBED] {
        let ours: u64 = (1..=4)
            .map(|i| {
                status["scopes"]
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .find(|s| s["project"] == format!("p{i}") && s["model"] == m)
                    })
                    .and_then(|s| s["rpd_used"].as_u64())
                    .unwrap_or(0)
            })
            .sum();
        let theirs: u64 = (1..=4)
            .map(|i| scope_field(&stats, &format!("p{i}"), m, "admitted"))
            .sum();
        r.check(
            ours == theirs && ours > 0,
            format!("{m}: keyturn counted {ours} today, the server admitted {theirs}"),
        );
    }
    Ok(())
}
