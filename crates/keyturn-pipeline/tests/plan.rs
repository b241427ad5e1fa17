//! `keyturn plan` through the real binary against a simulator that counts every request: the
//! plan sends nothing, counts the extraction requests a seed then really sends, leaves out what
//! a checkpoint says is done, and subtracts what today has already spent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Output;

use common::{EMBED, FLASH, Setup, text};
use keyturn_sim::{Faults, Limits};
use serde_json::Value;

const KEYS: &[common::Key] = &[
    ("made-up-plan-key-one", "one", "pa"),
    ("made-up-plan-key-two", "two", "pb"),
];
/// Each project's extraction requests per day, here and on the server.
const FLASH_RPD: u64 = 6;

struct World(common::World);

impl std::ops::Deref for World {
    type Target = common::World;
    fn deref(&self) -> &common::World {
        &self.0
    }
}

impl World {
    async fn start() -> Self {
        let mut models = BTreeMap::new();
        models.insert(FLASH.to_owned(), Limits::new(1000, 10_000_000, FLASH_RPD));
        models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
        Self(
            common::World::start(Setup {
                keys: KEYS.to_vec(),
                invalid: Vec::new(),
                toml: format!(
                    "[rotation]\nmax_wait = \"1m\"\n[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 30\n\
                     [cache]\ndisk = true\n\
                     [models.\"{FLASH}\"]\nrpm = 1000\ntpm = 10000000\nrpd = {FLASH_RPD}\n[models.\"{EMBED}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n"
                ),
                models,
                faults: Faults::default(),
            })
            .await,
        )
    }

    fn path(&self, p: &str) -> String {
        self.0.path(p).display().to_string()
    }

    async fn plan(&self, extra: &[&str]) -> Value {
        let t = self.path("transcripts");
        let mut args = vec!["plan", t.as_str(), "--chunk-tokens", "90", "--json"];
        args.extend_from_slice(extra);
        let o = common::run_cmd(self.command(&args)).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    }

    async fn seed(&self) -> Output {
        common::run_cmd(self.seed_cmd("out")).await
    }
}

fn model<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["plan"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == name)
        .unwrap_or_else(|| panic!("no {name} in {plan}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_sends_nothing_and_counts_what_the_seed_then_sends() {
    let w = World::start().await;
    let plan = w.plan(&[]).await;
    assert_eq!(
        w.stats()["responses"].as_u64(),
        Some(0),
        "the simulator saw a request from keyturn plan"
    );
    let flash = model(&plan, FLASH);
    let planned = flash["requests"].as_u64().unwrap();
    assert!(
        planned > 2 * FLASH_RPD,
        "the samples outlast one day: {planned}"
    );
    assert_eq!(plan["inputs"]["pending"], 5);
    // Two projects of FLASH_RPD a day: the day binds, and the job spans that many days.
    let days = planned.div_ceil(2 * FLASH_RPD);
    assert_eq!(flash["days"].as_u64(), Some(days), "{flash}");
    assert!(
        flash["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["binds"] == "rpd"),
        "{flash}"
    );
    assert_eq!(flash["pauses"].as_array().unwrap().len() as u64, days - 1);

    // The seed spends exactly the day's quota and stops (exit 3).
    let o = w.seed().await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(w.admitted(FLASH), 2 * FLASH_RPD);
    // Its progress lines carry the planner's ETA.
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(" · ETA: "),
        "{}",
        text(&o)
    );

    // What today spent is not there again: the rest waits for midnight, one day fewer.
    let stats_before = w.stats()["responses"].as_u64();
    let again = w.plan(&["--out", &w.path("out")]).await;
    assert_eq!(
        w.stats()["responses"].as_u64(),
        stats_before,
        "plan sent something"
    );
    let flash2 = model(&again, FLASH);
    assert_eq!(flash2["pauses"][0]["from_ms"], again["plan"]["at_ms"]);
    for s in flash2["scopes"].as_array().unwrap() {
        assert_eq!(s["runs_out_today_ms"], again["plan"]["at_ms"], "{s}");
    }
    // Today sends nothing more: the days counted start at midnight.
    assert_eq!(flash2["starts_ms"], flash2["pauses"][0]["until_ms"]);
    let left = flash2["requests"].as_u64().unwrap();
    assert_eq!(
        flash2["days"].as_u64(),
        Some(left.div_ceil(2 * FLASH_RPD)),
        "{flash2}"
    );
    // Finished episodes (those with an episode file the checkpoint vouches for) are left out.
    let files = std::fs::read_dir(w.dir.path().join("out/episodes"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count() as u64;
    assert!(files >= 1, "the first day finished an episode");
    let done = again["inputs"]["already_done"].as_u64().unwrap();
    assert_eq!(done, files, "{again}");
    assert_eq!(again["inputs"]["pending"].as_u64().unwrap(), 5 - files);
    assert!(flash2["requests"].as_u64().unwrap() < planned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_no_quota_on_any_project_is_reported_blocked() {
    let w = World::start().await;
    // Both projects are on the free tier, where the built-in table gives gemini-2.5-pro no
    // quota at all (limit 0).
    let plan = w.plan(&["--model", "gemini-2.5-pro"]).await;
    let pro = model(&plan, "gemini-2.5-pro");
    assert!(
        pro["blocked"].as_str().unwrap().contains("switched off"),
        "{pro}"
    );
    assert!(pro["finish_ms"].is_null());
    assert!(plan["plan"]["finish_ms"].is_null());
    assert!(
        pro["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["off"] == true),
        "{pro}"
    );
    assert_eq!(w.stats()["responses"].as_u64(), Some(0));
}
