//! `exhaustion`: every key out for the day → exit 3 → the next Pacific day → resume to the end

use std::path::Path;

use keyturn_sim::{Limits, SimConfig};

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Report, World, graph_problems, key, scope_state};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("a", "pa"), key("b", "pb")];
    let w = World::new(
        bin,
        keys,
        &[(FLASH, Limits::new(1000, 10_000_000, 5)), (EMBED, roomy())],
        SimConfig::default(),
        "",
    )
    .await?;
    let seed = w.seed_args("transcripts", "out", &[]);
    let o = w.run(&seed).await;
    r.check(
        o.code == Some(3),
        format!("every key out for the day: exit 3 (got {})", code(&o)),
    );
    r.check(
        o.text().contains("capacity returns at")
            && (o.text().contains("PST") || o.text().contains("PDT")),
        "the message says when capacity returns, in Pacific time",
    );
    r.check(
        w.admitted("pa", FLASH) == 5 && w.admitted("pb", FLASH) == 5,
        format!(
            "exactly the daily quota was used: {} + {} of 5 + 5",
            w.admitted("pa", FLASH),
            w.admitted("pb", FLASH)
        ),
    );
    r.check(
        w.responses(429) == 0,
        "keyturn stopped before Gemini refused (no 429)",
    );
    let status = w.status().await;
    r.check(
        scope_state(&status, "pa", FLASH) == "exhausted"
            && scope_state(&status, "pb", FLASH) == "exhausted",
        "status shows both scopes exhausted",
    );
    // The next Pacific days: the simulator's clock and keyturn's move together; no reset by hand.
    let mut days = 0;
    let mut last = o;
    while last.code == Some(3) && days < 5 {
        w.sim.state().advance_day();
        days += 1;
        let offset = w.stats()["clock_offset_ms"].as_i64().unwrap_or(0);
        let mut c = w.command(&seed);
        c.env("KEYTURN_CLOCK_OFFSET_MS", offset.to_string());
        last = w.run_cmd(c).await;
    }
    r.check(
        last.code == Some(0),
        format!(
            "resumed on the following day(s) and finished after {days} more day(s) (exit {})",
            code(&last)
        ),
    );
    r.check(days >= 1, "at least one new day was needed");
    r.check(w.responses(429) == 0, "still no 429 over all the days");
    r.check(
        graph_problems(&w.path("out"), 5).is_none(),
        format!(
            "the graph is whole: {}",
            graph_problems(&w.path("out"), 5).unwrap_or_else(|| "yes".into())
        ),
    );
    Ok(())
}
