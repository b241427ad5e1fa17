//! `cargo xtask scenario <name>|all`: the real `keyturn` binary against the simulator, printing
//! each check and a verdict per scenario. One file per scenario; [`SCENARIOS`] is the one list
//! of them (name, what it shows, how to run it), in the order `all` runs them.

mod basic_rotation;
mod batch;
mod compat;
mod crash;
mod exhaustion;
mod model_limits;
mod multi_process;
mod plan;
mod project_sharing;
mod recovery;
mod secrets;
mod wild_pool;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use keyturn_sim::{Faults, Limits, SimConfig};

use crate::world::{EMBED, FLASH, KeyDef, Out, Report, World};

/// A scenario's run: checks recorded in the report; `Err("SKIP: …")` to skip, `Err(_)` when it
/// could not run.
type Run =
    for<'a> fn(&'a Path, &'a mut Report) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// A scenario: its name on the command line, what it shows, and how to run it.
pub struct Scenario {
    pub name: &'static str,
    pub shows: &'static str,
    run: Run,
}

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "basic-rotation",
        shows: "requests spread evenly over keys; counts per key agree with the server",
        run: |bin, r| Box::pin(basic_rotation::run(bin, r)),
    },
    Scenario {
        name: "exhaustion",
        shows: "every key out for the day → exit 3 → the next Pacific day → resume to the end",
        run: |bin, r| Box::pin(exhaustion::run(bin, r)),
    },
    Scenario {
        name: "recovery",
        shows: "a 503 storm opens breakers; half-open probes close them; a dead key stays out",
        run: |bin, r| Box::pin(recovery::run(bin, r)),
    },
    Scenario {
        name: "model-limits",
        shows: "two models on the same keys are limited each on its own; limit: 0 for one project",
        run: |bin, r| Box::pin(model_limits::run(bin, r)),
    },
    Scenario {
        name: "project-sharing",
        shows: "three keys of one project share one quota",
        run: |bin, r| Box::pin(project_sharing::run(bin, r)),
    },
    Scenario {
        name: "compat",
        shows: "every key variable style, alone and mixed",
        run: |bin, r| Box::pin(compat::run(bin, r)),
    },
    Scenario {
        name: "multi-process",
        shows: "three seed processes on one Redis namespace: no 429 keyturn caused",
        run: |bin, r| Box::pin(multi_process::run(bin, r)),
    },
    Scenario {
        name: "crash",
        shows: "SIGKILL at random points, resume, every episode exactly once",
        run: |bin, r| Box::pin(crash::run(bin, r)),
    },
    Scenario {
        name: "secrets",
        shows: "no key anywhere on disk or in any output",
        run: |bin, r| Box::pin(secrets::run(bin, r)),
    },
    Scenario {
        name: "plan",
        shows: "keyturn plan sends nothing; a seed across rehearsed midnights matches it (requests within 10 %, days exact)",
        run: |bin, r| Box::pin(plan::run(bin, r)),
    },
    Scenario {
        name: "batch",
        shows: "seed --batch over three projects (one free tier), killed between submit and checkpoint and while jobs run, resumed: every chunk in one job, the interactive graph",
        run: |bin, r| Box::pin(batch::run(bin, r)),
    },
    Scenario {
        name: "wild-pool",
        shows: "real error shapes: per-model 403, 402, whole-API limit 0, a leaked key; no healthy key harmed",
        run: |bin, r| Box::pin(wild_pool::run(bin, r)),
    },
];

/// The scenario named `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// What became of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(Vec<String>),
    Skip(String),
}

impl Scenario {
    /// Runs it: a scenario that makes no checks fails instead of passing.
    pub async fn run(&self, bin: &Path) -> Verdict {
        let mut r = Report::default();
        let result = (self.run)(bin, &mut r).await;
        match result {
            Err(e) if e.starts_with("SKIP: ") => Verdict::Skip(e[6..].to_owned()),
            Err(e) => {
                r.failures.push(format!("could not run: {e}"));
                Verdict::Fail(r.failures)
            }
            Ok(()) if r.failures.is_empty() && r.checks > 0 => Verdict::Pass,
            Ok(()) => Verdict::Fail(r.failures),
        }
    }
}

fn roomy() -> Limits {
    Limits::new(1000, 10_000_000, 100_000)
}

/// A world whose limits never bind, with these faults.
async fn roomy_world(bin: &Path, keys: Vec<KeyDef>, faults: Faults) -> Result<World, String> {
    let sim = SimConfig {
        faults,
        ..SimConfig::default()
    };
    World::new(bin, keys, &[(FLASH, roomy()), (EMBED, roomy())], sim, "").await
}

fn code(o: &Out) -> String {
    o.code.map_or_else(|| "killed".into(), |c| c.to_string())
}
