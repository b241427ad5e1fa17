//! The real `keyturn` binary rehearsing a quota day turning over (`KEYTURN_CLOCK_OFFSET_MS`):
//! a model the server switched off for one project stays off for the rest of the day, gets
//! exactly one re-probe after the next Pacific midnight, and comes back once the server serves it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::{EMBED, FLASH, Setup, run_cmd, text};
use keyturn_sim::{Faults, Limits};
use serde_json::Value;

/// (key, label, project): "one" is the only key of project "off-a", whose FLASH the server
/// refuses with a limit of 0 until the test says otherwise.
const KEYS: &[common::Key] = &[
    ("made-up-relearn-key-one", "one", "off-a"),
    ("made-up-relearn-key-two", "two", "on-b"),
];

struct World(common::World);

impl World {
    async fn start() -> Self {
        let mut models = BTreeMap::new();
        models.insert(FLASH.to_owned(), Limits::new(1000, 10_000_000, 100_000));
        models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
        let w = Self(
            common::World::start(Setup {
                keys: KEYS.to_vec(),
                invalid: Vec::new(),
                toml: format!(
                    "[rotation]\nmax_wait = \"1m\"\n[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 30\n\
                     [models.\"{FLASH}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n[models.\"{EMBED}\"]\nrpm = 1000\ntpm = 10000000\nrpd = 100000\n"
                ),
                models,
                faults: Faults::default(),
            })
            .await,
        );
        w.set_flash_limits("off-a", 0).await;
        w
    }

    /// Sets a project's FLASH limits on the server (`rpd = 0`: no quota at all, limit 0).
    async fn set_flash_limits(&self, project: &str, rpd: u64) {
        reqwest::Client::new()
            .put(format!("{}/admin/limits", self.0.sim.base_url()))
            .json(&serde_json::json!({
                "project": project, "model": FLASH, "rpm": 1000, "tpm": 10_000_000, "rpd": rpd
            }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// `keyturn` with the clock shifted by `offset_ms`.
    fn command(&self, offset_ms: i64, args: &[&str]) -> Command {
        let mut c = self.0.command(args);
        c.env("KEYTURN_CLOCK_OFFSET_MS", offset_ms.to_string());
        c
    }

    /// A whole seed into a fresh output folder (so every chunk is sent again).
    async fn seed(&self, offset_ms: i64, run: &str) -> Output {
        let mut c = self.0.seed_cmd(&format!("out-{run}"));
        c.env("KEYTURN_CLOCK_OFFSET_MS", offset_ms.to_string());
        run_cmd(c).await
    }

    async fn status(&self, offset_ms: i64) -> Value {
        let o = run_cmd(self.command(offset_ms, &["status", "--json"])).await;
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// FLASH requests of project off-a the server refused (its limit-0 answers are 429s on
    /// key "one", whose other requests, embeddings, succeed).
    fn refused(&self) -> u64 {
        let stats = self.0.sim.state().stats();
        let one = stats["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == "one")
            .unwrap()
            .clone();
        one["by_status"]["429"].as_u64().unwrap_or(0)
    }

    /// FLASH requests of project off-a the server served.
    fn served(&self) -> u64 {
        let stats = self.0.sim.state().stats();
        stats["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["project"] == "off-a" && s["model"] == FLASH)
            .map_or(0, |s| s["admitted"].as_u64().unwrap_or(0))
    }
}

fn flash_scope<'a>(status: &'a Value, project: &str) -> &'a Value {
    status["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == project && s["model"] == FLASH)
        .unwrap_or_else(|| panic!("no {project}/{FLASH} scope in {status}"))
}

// The binary's clock is the system's plus the offset this test picks from it.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> i64 {
    std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_switched_off_is_reprobed_once_after_pacific_midnight_and_comes_back() {
    let w = World::start().await;

    // Day one: off-a's FLASH is refused (limit 0) and switched off; on-b does the work.
    let o = w.seed(0, "1").await;
    assert!(o.status.success(), "{}", text(&o));
    let first = w.refused();
    assert!(first >= 1, "off-a was tried and refused");
    assert_eq!(w.served(), 0);
    let st = w.status(0).await;
    let midnight = keyturn_core::next_pacific_midnight(now_ms());
    let s = flash_scope(&st, "off-a");
    assert_eq!(s["state"], "off", "{s}");
    // The status may be read just after a midnight the run did not see; allow either day.
    let off_until = s["off_until_ms"].as_i64().unwrap();
    assert!(
        off_until == midnight || off_until == keyturn_core::next_pacific_midnight(midnight - 1),
        "{s}"
    );
    assert_eq!(flash_scope(&st, "on-b")["state"], "ready");

    // The same day, a whole new run: off-a is not asked again.
    let o = w.seed(0, "2").await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.refused(), first, "still off the same day: no request");

    // Past the Pacific midnight: exactly one re-probe; refused again, off until the next one.
    let offset = off_until + 60_000 - now_ms();
    let o = w.seed(offset, "3").await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.refused(), first + 1, "one re-probe, no more");
    let st = w.status(offset).await;
    let s = flash_scope(&st, "off-a");
    assert_eq!(s["state"], "off", "{s}");
    let next = s["off_until_ms"].as_i64().unwrap();
    assert_eq!(
        next,
        keyturn_core::next_pacific_midnight(off_until + 60_000)
    );

    // The server lets off-a use FLASH again (a tier change); after the following midnight the
    // re-probe is served, and the project carries its share of the work again.
    w.set_flash_limits("off-a", 100_000).await;
    let offset = next + 60_000 - now_ms();
    let o = w.seed(offset, "4").await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.refused(), first + 1);
    // The re-probe was served. Whether this run also gave off-a more work depends on how fast
    // key two finished the rest while the re-probe was out (under load, all of it): the next
    // run tells, deterministically.
    let after_probe = w.served();
    assert!(after_probe >= 1, "the re-probe was served");
    let st = w.status(offset).await;
    let s = flash_scope(&st, "off-a");
    assert_eq!(s["state"], "ready", "{s}");
    assert!(s.get("off_until_ms").is_none_or(Value::is_null), "{s}");
    let o = w.seed(offset, "5").await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.refused(), first + 1);
    assert!(
        w.served() > after_probe,
        "back after the re-probe, not just the re-probe: {} then {}",
        after_probe,
        w.served()
    );
}
