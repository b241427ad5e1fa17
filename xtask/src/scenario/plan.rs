//! `plan`: `keyturn plan` against reality. Plan first (nothing sent), then seed against small
//! daily limits across rehearsed Pacific midnights, and compare: the requests each model really
//! took are within 10 % of the plan, and the number of Pacific days used is the plan's, exactly.

use std::path::Path;

use keyturn_sim::{Limits, SimConfig};
use serde_json::Value;

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Report, World, graph_problems, key, scope_field};

/// Extraction requests each project may send a day: small, so the samples span days.
const FLASH_RPD: u64 = 4;

fn planned(plan: &Value, model: &str) -> Option<(u64, u64)> {
    let m = plan["plan"]["models"]
        .as_array()?
        .iter()
        .find(|m| m["model"] == model)?;
    Some((m["requests"].as_u64()?, m["days"].as_u64()?))
}

fn admitted(w: &World, model: &str) -> u64 {
    let stats = w.stats();
    ["pa", "pb"]
        .iter()
        .map(|p| scope_field(&stats, p, model, "admitted"))
        .sum()
}

fn within_10_percent(real: u64, plan: u64) -> bool {
    plan > 0 && real.abs_diff(plan) * 10 <= plan
}

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("a", "pa"), key("b", "pb")];
    // Answers kept on disk: an episode cut off by the day's end is redone from the cache the
    // next day, as a real user's would be, so its requests are not paid twice.
    let w = World::new(
        bin,
        keys,
        &[
            (FLASH, Limits::new(1000, 10_000_000, FLASH_RPD)),
            (EMBED, roomy()),
        ],
        SimConfig::default(),
        "[cache]\ndisk = true\n",
    )
    .await?;
    let transcripts = w.path("transcripts").display().to_string();
    let out = w.path("out").display().to_string();
    let p = w
        .run(&[
            "plan",
            transcripts.as_str(),
            "--out",
            out.as_str(),
            "--chunk-tokens",
            "90",
            "--json",
        ])
        .await;
    r.check(
        p.code == Some(0),
        format!("plan: exit 0 (got {})", code(&p)),
    );
    let plan: Value = serde_json::from_str(&p.stdout).map_err(|e| format!("plan JSON: {e}"))?;
    r.check(
        w.stats()["responses"].as_u64() == Some(0),
        "plan sent nothing to the simulator",
    );
    let (flash_plan, flash_days) =
        planned(&plan, FLASH).ok_or("no extraction model in the plan")?;
    let (embed_plan, _) = planned(&plan, EMBED).ok_or("no embedding model in the plan")?;
    let days_plan = plan["plan"]["days"].as_u64().ok_or("no days in the plan")?;
    r.note(format!(
        "plan: {flash_plan} extraction requests over {flash_days} day(s), {embed_plan} embedding requests; {days_plan} day(s) in all"
    ));
    r.check(
        days_plan >= 2,
        format!("the job spans a Pacific midnight in the plan ({days_plan} days)"),
    );

    // Seed day by day: each run spends the day's quota (exit 3); the simulator's clock and
    // keyturn's then move to the next Pacific midnight together.
    let seed = w.seed_args("transcripts", "out", &[]);
    let mut days_used = 1;
    let mut last = w.run(&seed).await;
    while last.code == Some(3) && days_used < 10 {
        w.sim.state().advance_day();
        days_used += 1;
        let offset = w.stats()["clock_offset_ms"].as_i64().unwrap_or(0);
        let mut c = w.command(&seed);
        c.env("KEYTURN_CLOCK_OFFSET_MS", offset.to_string());
        last = w.run_cmd(c).await;
    }
    r.check(
        last.code == Some(0),
        format!("the seed finished (exit {})", code(&last)),
    );
    r.check(
        days_used == days_plan,
        format!("Pacific days used: {days_used}, planned {days_plan}"),
    );
    let flash_real = admitted(&w, FLASH);
    let embed_real = admitted(&w, EMBED);
    r.check(
        within_10_percent(flash_real, flash_plan),
        format!("extraction requests: {flash_real} sent, {flash_plan} planned (within 10 %)"),
    );
    r.check(
        within_10_percent(embed_real, embed_plan),
        format!("embedding requests: {embed_real} sent, {embed_plan} planned (within 10 %)"),
    );
    r.check(w.responses(429) == 0, "no 429 over all the days");
    r.check(
        graph_problems(&w.path("out"), 5).is_none(),
        format!(
            "the graph is whole: {}",
            graph_problems(&w.path("out"), 5).unwrap_or_else(|| "yes".into())
        ),
    );
    Ok(())
}
