//! `keyturn plan`: the inputs read as seed reads them, the pool's capacity read as `keyturn
//! status` reads it, and `keyturn_core::plan`'s answer as a table or JSON. Nothing is sent.

use std::path::Path;
use std::process::ExitCode;

use keyturn_core::plan::{ModelPlan, Plan, plan};
use keyturn_core::prices::PRICE_TABLE_DATE;
use keyturn_services::{Env, key_ring, ledger_config};
use serde::Serialize;

use super::args::PlanArgs;
use super::{Global, fail, load};
use crate::plan::{
    Demand, ENTITIES_PER_CHUNK, ENTITY_TEXT_BYTES, EXTRACTION_OUTPUT_TOKENS, capacity, demand,
};
use crate::report::Outcome;
use crate::run::SeedOptions;
use crate::term::safe;

fn in_zone(ms: i64, tz: Option<jiff::tz::TimeZone>) -> String {
    let ts = keyturn_core::clock::ms_to_timestamp(ms);
    match tz {
        Some(tz) => ts
            .to_zoned_datetime(tz)
            .strftime("%a %Y-%m-%d %H:%M %Z")
            .to_string(),
        None => ts.to_string(),
    }
}

fn pacific(ms: i64) -> String {
    in_zone(
        ms,
        jiff::tz::db()
            .get(keyturn_core::pacific::QUOTA_TIME_ZONE)
            .ok(),
    )
}

fn local(ms: i64) -> String {
    in_zone(ms, jiff::tz::TimeZone::try_system().ok())
}

/// What `--json` prints.
#[derive(Serialize)]
struct PlanOut<'a> {
    /// What the inputs ask.
    inputs: &'a Demand,
    /// The assumptions behind the counts and the cost.
    assumptions: Assumptions,
    /// Whether the headline cost is the Batch API's.
    batch: bool,
    /// The headline cost (USD): interactive, or batch with `--batch`.
    cost_usd: f64,
    /// The date of the price table.
    price_table_date: &'static str,
    /// Finish time in Pacific and local time, if the job can finish.
    finish_pacific: Option<String>,
    finish_local: Option<String>,
    /// The planner's answer.
    plan: &'a Plan,
}

#[derive(Serialize)]
struct Assumptions {
    entities_per_chunk: u64,
    entity_text_bytes: u64,
    extraction_output_tokens: u64,
    embedding_batch_size: usize,
}

pub(super) async fn cmd_plan(g: &Global, env: &Env, cwd: &Path, a: PlanArgs) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let keys = match key_ring(&cfg, env, cwd) {
        Ok((r, _)) => r,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let limits = match ledger_config(&cfg) {
        Ok(l) => l.limits,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let clock = match keyturn_services::clock(env) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    for input in &a.inputs {
        if !input.exists() {
            return fail(
                Outcome::Usage,
                format!(
                    "input {} does not exist",
                    safe(&input.display().to_string())
                ),
            );
        }
    }
    let opts = SeedOptions {
        inputs: a.inputs.clone(),
        // Without --out nothing is done yet: a folder that cannot hold a checkpoint.
        out: a.out.clone().unwrap_or_default(),
        model: a.model.clone(),
        embedding_model: a.embedding_model.clone(),
        chunk_tokens: a.chunk_tokens.max(50),
        follow_links: a.follow_links,
        ..SeedOptions::default()
    };
    let batch_size = cfg.embeddings.batch_size;
    let d = match demand(&opts, batch_size) {
        Ok(d) => d,
        Err(e) => return fail(Outcome::from(&e), e),
    };
    let models = [a.model.as_str(), a.embedding_model.as_str()];
    let status = match keyturn_services::state::inspect(&cfg, env, cwd, &models).await {
        Ok(found) => found.map(|i| i.status),
        Err(e) => return fail(e.kind(), e),
    };
    let caps = capacity(&models, &keys, &limits, status.as_ref());
    let p = plan(&d.work, &caps, clock.now_ms());
    let cost = if a.batch {
        p.batch_cost_usd
    } else {
        p.cost_usd
    };
    if a.json {
        let out = PlanOut {
            inputs: &d,
            assumptions: Assumptions {
                entities_per_chunk: ENTITIES_PER_CHUNK,
                entity_text_bytes: ENTITY_TEXT_BYTES,
                extraction_output_tokens: EXTRACTION_OUTPUT_TOKENS,
                embedding_batch_size: batch_size,
            },
            batch: a.batch,
            cost_usd: cost,
            price_table_date: PRICE_TABLE_DATE,
            finish_pacific: p.finish_ms.map(pacific),
            finish_local: p.finish_ms.map(local),
            plan: &p,
        };
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    print_plan(&d, &p, a.batch, cost, batch_size);
    ExitCode::SUCCESS
}

/// Dollars: cents, or four places below a dollar so a small job does not read as free.
fn usd(x: f64) -> String {
    if x > 0.0 && x < 1.0 {
        format!("${x:.4}")
    } else {
        format!("${x:.2}")
    }
}

fn print_model(m: &ModelPlan) {
    let finish = match (&m.blocked, m.finish_ms) {
        (Some(why), _) => format!("never: {}", safe(why)),
        (None, Some(f)) => format!("{} · local {}", pacific(f), local(f)),
        (None, None) => "-".into(),
    };
    println!(
        "{}: {} requests, ~{} input tokens · {} Pacific day(s) · done {}",
        safe(&m.model),
        m.requests,
        m.input_tokens,
        m.days,
        finish
    );
    println!(
        "  {:<24} {:>9} {:>10} {:>9} {:<6} {:<26} COST (INTERACTIVE / BATCH)",
        "PROJECT", "REQUESTS", "PACE/MIN", "PER DAY", "BINDS", "RUNS OUT TODAY"
    );
    for s in &m.scopes {
        let binds = if s.off {
            "off".to_owned()
        } else {
            s.binds.map_or("-".to_owned(), |l| l.name().to_owned())
        };
        println!(
            "  {:<24} {:>9} {:>10} {:>9} {:<6} {:<26} {} / {}{}",
            safe(&s.project),
            s.requests,
            s.per_minute.map_or("∞".into(), |r| format!("{r:.1}")),
            s.per_day.map_or("∞".into(), |r| r.to_string()),
            binds,
            s.runs_out_today_ms.map_or("-".into(), pacific),
            usd(s.cost_usd),
            usd(s.batch_cost_usd),
            if s.tier == keyturn_core::Tier::Free {
                " (free tier)"
            } else {
                ""
            }
        );
    }
    for p in &m.pauses {
        println!(
            "  pauses at {}, resumes {}",
            pacific(p.from_ms),
            pacific(p.until_ms)
        );
    }
}

fn print_plan(d: &Demand, p: &Plan, batch: bool, cost: f64, batch_size: usize) {
    println!(
        "inputs: {} transcripts found, {} already done, {} unreadable, {} to do · {} chunks · {} embedding calls",
        d.found, d.already_done, d.skipped, d.pending, d.chunks, d.embedding_calls
    );
    println!();
    for m in &p.models {
        print_model(m);
        println!();
    }
    match p.finish_ms {
        Some(f) => println!(
            "the job: done {} (local {}), {} Pacific day(s) · cost {} ({}; price table {PRICE_TABLE_DATE})",
            pacific(f),
            local(f),
            p.days,
            usd(cost),
            if batch {
                "Batch API, half price"
            } else {
                "interactive"
            },
        ),
        None => println!(
            "the job cannot finish on this pool: a model is off everywhere (see above) · cost of the rest {}",
            usd(cost)
        ),
    }
    println!(
        "assumed: {ENTITIES_PER_CHUNK} entities a chunk ({ENTITY_TEXT_BYTES} bytes each) to embed, \
         {EXTRACTION_OUTPUT_TOKENS} output tokens an extraction, embedding batches of {batch_size}; \
         the pace is the quota's (latency and --concurrency can make a seed slower); \
         free-tier projects cost nothing. Nothing was sent."
    );
}
