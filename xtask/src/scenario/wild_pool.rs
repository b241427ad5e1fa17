//! `wild-pool`: real error shapes: per-model 403, 402, whole-API limit 0, a leaked key; no healthy
//! key harmed

use std::collections::BTreeMap;
use std::path::Path;

use keyturn_sim::SimConfig;
use keyturn_sim::config::ProjectConfig;

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Report, World, graph_problems, key, scope_state};

/// Six projects with one key each, as a real pool looks: two healthy; one whose LLM model
/// answers the per-model bare 403 (`real-34`, while `GET models` works); one out of prepayment
/// credits (402, `real-16`); one with the older whole-API limit 0 (`api-limit-zero`); one whose
/// key was reported as leaked (bare 403 on every route, `real-24`). The samples must seed to the
/// end with no healthy key harmed.
pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
    use keyturn_sim::KeyState;
    use keyturn_sim::config::ProjectState;
    let keys = vec![
        key("h1", "healthy-1"),
        key("h2", "healthy-2"),
        key("permodel", "per-model"),
        key("credits", "no-credits"),
        key("apizero", "api-zero"),
        key("leaked", "leaked"),
    ];
    let mut projects = BTreeMap::new();
    projects.insert(
        "per-model".to_owned(),
        ProjectConfig {
            models_off: [(FLASH.to_owned(), "real-34".to_owned())].into(),
            ..ProjectConfig::default()
        },
    );
    projects.insert(
        "no-credits".to_owned(),
        ProjectConfig {
            state: ProjectState::CreditsDepleted,
            ..ProjectConfig::default()
        },
    );
    projects.insert(
        "api-zero".to_owned(),
        ProjectConfig {
            state: ProjectState::ApiLimitZero,
            ..ProjectConfig::default()
        },
    );
    let sim = SimConfig {
        projects,
        ..SimConfig::default()
    };
    let w = World::new(bin, keys, &[(FLASH, roomy()), (EMBED, roomy())], sim, "").await?;
    w.sim.state().set_key_state("leaked", KeyState::Leaked);
    // One request at a time, so "after the first refusal" is a matter of order: with requests in
    // flight together, those sent before the first answer came back are not "after" it.
    let o = w
        .run(&w.seed_args(
            "transcripts",
            "out",
            &["--concurrency", "1", "--requests", "1"],
        ))
        .await;
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
    r.check(
        graph_problems(&w.path("out"), 5).is_none(),
        format!(
            "the graph is complete: {:?}",
            graph_problems(&w.path("out"), 5)
        ),
    );
    let status = w.status().await;
    let disabled = |label: &str| {
        status["keys"]
            .as_array()
            .and_then(|a| a.iter().find(|k| k["label"] == label).cloned())
            .map(|k| k["disabled"]["reason"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    for label in ["h1", "h2", "permodel", "credits", "apizero"] {
        let why = disabled(label);
        r.check(why.is_empty(), format!("{label} is not disabled ({why:?})"));
    }
    r.check(
        disabled("leaked") == "leaked",
        format!(
            "the leaked key is disabled as leaked ({:?})",
            disabled("leaked")
        ),
    );
    r.check(
        scope_state(&status, "per-model", FLASH) == "off",
        format!(
            "{FLASH} is off for the per-model project ({})",
            scope_state(&status, "per-model", FLASH)
        ),
    );
    let embeds = w.admitted("per-model", EMBED);
    r.check(
        embeds > 0,
        format!("the per-model project still serves embeddings ({embeds} admitted)"),
    );
    for (label, project) in [("credits", "no-credits"), ("apizero", "api-zero")] {
        let k = w.key_stats(label);
        let calls = k["requests"].as_u64().unwrap_or(0) - k["probes"].as_u64().unwrap_or(0);
        let served = w.admitted(project, FLASH) + w.admitted(project, EMBED);
        r.note(format!(
            "{label}: {calls} calls, by route {}",
            k["by_route"]
        ));
        r.check(
            served == 0 && calls == 1,
            format!(
                "{project} gets nothing after its first refusal ({calls} call, {served} served)"
            ),
        );
    }
    let leaked = w.key_stats("leaked");
    let probes = leaked["probes"].as_u64().unwrap_or(0);
    r.check(
        probes <= 1,
        format!("the leaked key got at most one probe ({probes})"),
    );
    r.check(
        w.key_stats("h1")["probes"].as_u64().unwrap_or(0) == 0,
        "no healthy key was probed",
    );
    Ok(())
}
