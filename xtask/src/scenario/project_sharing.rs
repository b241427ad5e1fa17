//! `project-sharing`: three keys of one project share one quota

use std::path::Path;

use keyturn_sim::{Limits, SimConfig};
use serde_json::Value;

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Report, World, key};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![
        key("s1", "shared"),
        key("s2", "shared"),
        key("s3", "shared"),
        key("solo", "alone"),
    ];
    let w = World::new(
        bin,
        keys,
        &[(FLASH, Limits::new(1000, 10_000_000, 6)), (EMBED, roomy())],
        SimConfig::default(),
        "",
    )
    .await?;
    let o = w.run(&w.seed_args("transcripts", "out", &[])).await;
    r.check(
        o.code == Some(3),
        format!("the day runs out: exit 3 (got {})", code(&o)),
    );
    let (shared, alone) = (w.admitted("shared", FLASH), w.admitted("alone", FLASH));
    r.check(
        shared == 6,
        format!("three keys in one project: {shared} admitted, the project's 6 (not 18)"),
    );
    r.check(
        alone == 6,
        format!("the other project has its own 6: {alone}"),
    );
    r.check(
        w.responses(429) == 0,
        "no 429: keyturn knew the keys share one quota",
    );
    let st = w.status().await;
    let used = st["scopes"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["project"] == "shared" && s["model"] == FLASH)
                .cloned()
        })
        .unwrap_or(Value::Null);
    r.check(
        used["rpd_used"] == 6 && used["keys"].as_array().map_or(0, Vec::len) == 3,
        format!(
            "status: one scope for the three keys, 6/6 used ({})",
            used["rpd_used"]
        ),
    );
    Ok(())
}
