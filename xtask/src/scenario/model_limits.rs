//! `model-limits`: two models on the same keys are limited each on its own; limit: 0 for one
//! project

use std::collections::BTreeMap;
use std::path::Path;

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Limits, SimConfig};

use super::{code, roomy};
use crate::world::{EMBED, FLASH, LITE, Report, World, graph_problems, key, scope_state};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("k1", "p1"), key("k2", "p2"), key("k3", "p3")];
    let mut projects = BTreeMap::new();
    let mut p3 = ProjectConfig::default();
    p3.models.insert(LITE.to_owned(), Limits::new(0, 0, 0));
    projects.insert("p3".to_owned(), p3);
    let w = World::new(
        bin,
        keys,
        &[
            (FLASH, Limits::new(1000, 10_000_000, 2)),
            (LITE, Limits::new(1000, 10_000_000, 100)),
            (EMBED, roomy()),
        ],
        SimConfig {
            projects,
            ..SimConfig::default()
        },
        "",
    )
    .await?;
    // One request at a time, so "refused once" is exact (nothing else in flight meanwhile).
    let one = ["--concurrency", "1", "--requests", "1"];
    let flash = w
        .run(&w.seed_args(
            "transcripts",
            "out",
            &[&one[..], &["--model", FLASH]].concat(),
        ))
        .await;
    r.check(
        flash.code == Some(3),
        format!(
            "{FLASH} (2 a day per project) runs out: exit 3 (got {})",
            code(&flash)
        ),
    );
    let used: Vec<u64> = ["p1", "p2", "p3"]
        .iter()
        .map(|p| w.admitted(p, FLASH))
        .collect();
    r.check(
        used == [2, 2, 2],
        format!("{FLASH}: exactly 2 admitted per project {used:?}"),
    );
    let lite = w
        .run(&w.seed_args(
            "transcripts",
            "out",
            &[&one[..], &["--model", LITE]].concat(),
        ))
        .await;
    r.check(
        lite.code == Some(0),
        format!(
            "{LITE} (100 a day) on the same keys finishes the job (exit {}) {}",
            code(&lite),
            if lite.code == Some(0) {
                String::new()
            } else {
                lite.tail()
            }
        ),
    );
    let lite_used: Vec<u64> = ["p1", "p2", "p3"]
        .iter()
        .map(|p| w.admitted(p, LITE))
        .collect();
    r.check(
        lite_used[0] > 0 && lite_used[1] > 0 && lite_used[2] == 0,
        format!("{LITE} served by p1 and p2, not p3: {lite_used:?}"),
    );
    let refused_p3 = w.key_stats("k3")["by_status"]["429"].as_u64().unwrap_or(0);
    r.check(refused_p3 == 1, format!("p3 has no access to {LITE} (limit: 0): Gemini refused once, keyturn never asked again ({refused_p3})"));
    r.check(
        w.responses(429) == 1,
        format!("that is the only 429 ({})", w.responses(429)),
    );
    let st = w.status().await;
    r.check(
        scope_state(&st, "p3", LITE) == "off",
        format!(
            "status: p3/{LITE} is off ({})",
            scope_state(&st, "p3", LITE)
        ),
    );
    r.check(
        ["p1", "p2", "p3"]
            .iter()
            .all(|p| scope_state(&st, p, FLASH) == "exhausted"),
        format!("status: {FLASH} stays exhausted everywhere, on its own"),
    );
    r.check(
        graph_problems(&w.path("out"), 5).is_none(),
        "the graph is whole",
    );
    Ok(())
}
