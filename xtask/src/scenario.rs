//! `cargo xtask scenario <name>|all`: the real `keyturn` binary against the simulator, printing
//! each check and a verdict per scenario.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Faults, Limits, SimConfig};
use rand::Rng;
use serde_json::Value;

use crate::world::{
    EMBED, FLASH, KeyDef, LITE, Out, Report, World, dead_key, graph_problems, key, scope_field,
    scope_state, synth_transcripts, walk,
};

/// Every scenario, in the order `all` runs them, with what it shows.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "basic-rotation",
        "requests spread evenly over keys; counts per key agree with the server",
    ),
    (
        "exhaustion",
        "every key out for the day → exit 3 → the next Pacific day → resume to the end",
    ),
    (
        "recovery",
        "a 503 storm opens breakers; half-open probes close them; a dead key stays out",
    ),
    (
        "model-limits",
        "two models on the same keys are limited each on its own; limit: 0 for one project",
    ),
    (
        "project-sharing",
        "three keys of one project share one quota",
    ),
    ("compat", "every key variable style, alone and mixed"),
    (
        "multi-process",
        "three seed processes on one Redis namespace: no 429 keyturn caused",
    ),
    (
        "crash",
        "SIGKILL at random points, resume, every episode exactly once",
    ),
    ("secrets", "no key anywhere on disk or in any output"),
    (
        "wild-pool",
        "real error shapes: per-model 403, 402, whole-API limit 0, a leaked key; no healthy key harmed",
    ),
];

/// What became of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(Vec<String>),
    Skip(String),
}

pub async fn run(name: &str, bin: &Path) -> Verdict {
    let mut r = Report::default();
    let result = match name {
        "basic-rotation" => basic_rotation(bin, &mut r).await,
        "exhaustion" => exhaustion(bin, &mut r).await,
        "recovery" => recovery(bin, &mut r).await,
        "model-limits" => model_limits(bin, &mut r).await,
        "project-sharing" => project_sharing(bin, &mut r).await,
        "compat" => compat(bin, &mut r).await,
        "multi-process" => multi_process(bin, &mut r).await,
        "crash" => crash(bin, &mut r).await,
        "secrets" => secrets(bin, &mut r).await,
        "wild-pool" => wild_pool(bin, &mut r).await,
        other => Err(format!("no scenario named {other}")),
    };
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

async fn basic_rotation(bin: &Path, r: &mut Report) -> Result<(), String> {
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

async fn exhaustion(bin: &Path, r: &mut Report) -> Result<(), String> {
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

async fn recovery(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("k1", "p1"), key("k2", "p2"), dead_key("revoked", "p3")];
    let storm = Faults {
        p503: 1.0,
        ..Faults::default()
    };
    let w = roomy_world(bin, keys, storm).await?;
    // One request at a time, so "refused once" is exact: nothing else is in flight when the
    // dead key's refusal comes back.
    let child = w
        .command(&w.seed_args(
            "transcripts",
            "out",
            &["--concurrency", "1", "--requests", "1"],
        ))
        .spawn()
        .map_err(|e| e.to_string())?;
    // Wait for the storm to open breakers, as keyturn's own state shows them.
    let mut opened = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = w.status().await;
        if st["keys"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k["breaker"]["state"] == "open"))
        {
            opened = true;
            break;
        }
    }
    r.check(
        opened,
        "during the 503 storm a breaker opens (keyturn status)",
    );
    let during = w.responses(503);
    r.note(format!("503s answered during the storm: {during}"));
    // Keyturn backs off while the breakers are open: the storm is not hammered.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_a_second = w.responses(503) - during;
    r.check(
        after_a_second < 40,
        format!("breakers hold traffic back: {after_a_second} more 503s in the next second"),
    );
    w.sim.state().set_faults(Faults::default());
    let o = match tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await {
        Ok(Ok(o)) => Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        _ => return Err("the seed did not finish within 2 minutes of the storm ending".into()),
    };
    r.check(
        o.code == Some(0),
        format!(
            "the run rides out the storm and finishes (exit {})",
            code(&o)
        ),
    );
    let log = o.stderr.clone();
    r.check(
        log.contains("circuit breaker opened"),
        "log: one INFO line as a breaker opens",
    );
    r.check(
        log.contains("key recovered: circuit breaker closed"),
        "log: a half-open probe succeeds and closes it",
    );
    // Back to normal: more work after the storm is served by both live keys, whose breakers close.
    let ok_before: Vec<u64> = ["k1", "k2"]
        .iter()
        .map(|k| w.key_stats(k)["by_status"]["200"].as_u64().unwrap_or(0))
        .collect();
    synth_transcripts(&w.path("more"), 6, "after the storm").map_err(|e| e.to_string())?;
    // A breaker still cooling from the storm (at most max_cooldown = 2 s) is probed once that
    // has passed; a short first run may end before then.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let more = w
        .run(&w.seed_args(
            "more",
            "out-more",
            &["--concurrency", "1", "--requests", "1"],
        ))
        .await;
    r.check(
        more.code == Some(0),
        format!("a run after the storm finishes (exit {})", code(&more)),
    );
    let ok_after: Vec<u64> = ["k1", "k2"]
        .iter()
        .map(|k| w.key_stats(k)["by_status"]["200"].as_u64().unwrap_or(0))
        .collect();
    r.check(
        ok_after.iter().zip(&ok_before).all(|(a, b)| a > b),
        format!("both live keys serve again: successes {ok_before:?} → {ok_after:?}"),
    );
    let st = w.status().await;
    let states: Vec<(String, String)> = st["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    (
                        k["label"].as_str().unwrap_or("").to_owned(),
                        k["breaker"]["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    r.check(
        states
            .iter()
            .filter(|(l, _)| l != "revoked")
            .all(|(_, s)| s == "closed"),
        format!("back to normal: live keys' breakers closed {states:?}"),
    );
    let revoked = st["keys"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["label"] == "revoked").cloned())
        .unwrap_or(Value::Null);
    r.check(
        revoked["disabled"]["reason"] == "invalid",
        format!("the revoked key is disabled: {}", revoked["disabled"]),
    );
    let ks = w.key_stats("revoked");
    let non_503: u64 = ks["by_status"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(s, _)| *s != "503")
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    r.check(
        non_503 == 1,
        format!("a dead key stays out: it was refused once and never tried again ({non_503})"),
    );
    r.check(
        graph_problems(&w.path("out"), 5).is_none(),
        "the graph is whole",
    );
    Ok(())
}

async fn model_limits(bin: &Path, r: &mut Report) -> Result<(), String> {
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

async fn project_sharing(bin: &Path, r: &mut Report) -> Result<(), String> {
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

async fn compat(bin: &Path, r: &mut Report) -> Result<(), String> {
    // The simulator in open mode: every key is valid and its own project.
    let w = World::new(
        bin,
        vec![],
        &[(FLASH, roomy()), (EMBED, roomy())],
        SimConfig::default(),
        "",
    )
    .await?;
    let k = |s: &str| format!("made-up-compat-{s}");
    std::fs::write(
        w.path("file.keys"),
        format!(
            "# keys file\n{} label=filed project=pf\n{}\n",
            k("f1"),
            k("f2")
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(w.path("one.key"), format!("{}\n", k("t2"))).map_err(|e| e.to_string())?;
    let toml_keys = format!(
        "{}\n[[keys]]\nenv = \"MY_WORK_KEY\"\nlabel = \"work\"\n[[keys]]\nfile = \"one.key\"\nlabel = \"from-file\"\n",
        std::fs::read_to_string(w.path("keyturn.toml")).map_err(|e| e.to_string())?
    );
    type Style = (&'static str, Vec<(String, String)>, bool, usize);
    let styles: Vec<Style> = vec![
        (
            "GEMINI_API_KEY_<N> with gaps",
            vec![
                ("GEMINI_API_KEY_1".into(), k("n1")),
                ("GEMINI_API_KEY_4".into(), k("n4")),
                ("GEMINI_API_KEY_10".into(), k("n10")),
            ],
            false,
            3,
        ),
        (
            "GEMINI_API_KEYS, commas and spaces",
            vec![(
                "GEMINI_API_KEYS".into(),
                format!("{}, {} {}", k("l1"), k("l2"), k("l3")),
            )],
            false,
            3,
        ),
        (
            "GEMINI_API_KEY",
            vec![("GEMINI_API_KEY".into(), k("g"))],
            false,
            1,
        ),
        (
            "GOOGLE_API_KEY",
            vec![("GOOGLE_API_KEY".into(), k("google"))],
            false,
            1,
        ),
        (
            "KEYTURN_KEYS_FILE",
            vec![(
                "KEYTURN_KEYS_FILE".into(),
                w.path("file.keys").display().to_string(),
            )],
            false,
            2,
        ),
        (
            "[[keys]] naming an env var and a file",
            vec![("MY_WORK_KEY".into(), k("t1"))],
            true,
            2,
        ),
        (
            "all of them at once, one key twice",
            vec![
                ("GEMINI_API_KEY_1".into(), k("n1")),
                ("GEMINI_API_KEY_4".into(), k("n4")),
                ("GEMINI_API_KEYS".into(), format!("{},{}", k("l1"), k("n1"))),
                ("GEMINI_API_KEY".into(), k("g")),
                ("GOOGLE_API_KEY".into(), k("google")),
                (
                    "KEYTURN_KEYS_FILE".into(),
                    w.path("file.keys").display().to_string(),
                ),
                ("MY_WORK_KEY".into(), k("t1")),
            ],
            true,
            9,
        ),
    ];
    let base_env = w.env.clone();
    let mut seen_before = 0u64;
    for (name, vars, with_toml, expected) in styles {
        let dir = w.path(&format!("style-{}", name.len()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("keyturn.toml");
        let base_toml =
            std::fs::read_to_string(w.path("keyturn.toml")).map_err(|e| e.to_string())?;
        std::fs::write(
            &config,
            if with_toml {
                toml_keys.clone()
            } else {
                base_toml
            },
        )
        .map_err(|e| e.to_string())?;
        std::fs::copy(w.path("one.key"), dir.join("one.key")).map_err(|e| e.to_string())?;
        let prepare = |args: &[&str]| {
            let mut c = w.command(args);
            c.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("GEMINI_BASE_URL", &base_env["GEMINI_BASE_URL"])
                .env("KEYTURN_CONFIG", &config)
                .env("KEYTURN_STATE_DIR", dir.join("state"))
                .current_dir(&dir);
            for (k, v) in &vars {
                c.env(k, v);
            }
            c
        };
        let list = w.run_cmd(prepare(&["keys", "list"])).await;
        let rows = list
            .stdout
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count();
        r.check(
            list.code == Some(0) && rows == expected,
            format!("{name}: keys list finds {rows} (expected {expected})"),
        );
        let check = w.run_cmd(prepare(&["keys", "check"])).await;
        let valid = check.stdout.matches(" valid").count();
        r.check(
            check.code == Some(0) && valid == expected,
            format!("{name}: keys check — {valid} valid at the server"),
        );
        let text = format!("{}{}", list.text(), check.text());
        r.check(
            !text.contains("made-up-compat-"),
            format!("{name}: no key value printed"),
        );
        let now = w.stats()["keys"].as_array().map_or(0, Vec::len) as u64;
        r.note(format!("distinct keys the server has seen so far: {now}"));
        seen_before = seen_before.max(now);
    }
    r.check(
        seen_before == 12,
        format!("the server saw every distinct key ({seen_before} of 12)"),
    );
    r.check(
        w.stats()["query_key_uses"] == 0,
        "no key ever sent in the URL",
    );
    Ok(())
}

async fn multi_process(bin: &Path, r: &mut Report) -> Result<(), String> {
    let redis = keyturn_store::testkit::TestRedis::try_get().map_err(|why| {
        format!(
            "SKIP: no Redis ({why}; set KEYTURN_TEST_REDIS_URL, run one on 6379, or install redis-server)"
        )
    })?;
    let namespace = keyturn_store::testkit::unique_namespace("scenario-multi");
    let rpm = 30;
    let keys = vec![key("k1", "p1"), key("k2", "p2")];
    let w = World::new(
        bin,
        keys,
        &[
            (FLASH, Limits::new(rpm, 10_000_000, 100_000)),
            (EMBED, roomy()),
        ],
        SimConfig::default(),
        &format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nnamespace = \"{namespace}\"\n",
            redis.url()
        ),
    )
    .await?;
    for i in 0..3 {
        synth_transcripts(&w.path(&format!("inputs-{i}")), 8, &format!("worker {i}"))
            .map_err(|e| e.to_string())?;
    }
    let mut children = Vec::new();
    for i in 0..3 {
        let args = w.seed_args(
            &format!("inputs-{i}"),
            &format!("out-{i}"),
            &["--chunk-tokens", "60"],
        );
        children.push(w.command(&args).spawn().map_err(|e| e.to_string())?);
    }
    let mut codes = Vec::new();
    for c in children {
        let o = tokio::time::timeout(Duration::from_secs(600), c.wait_with_output())
            .await
            .map_err(|_| "a seed process did not finish in 10 minutes".to_owned())?
            .map_err(|e| e.to_string())?;
        codes.push(o.status.code());
    }
    r.check(
        codes.iter().all(|c| *c == Some(0)),
        format!("three processes finish: exits {codes:?}"),
    );
    let stats = w.stats();
    r.check(
        w.responses(429) == 0,
        format!(
            "the server answered no 429 ({} responses in all)",
            stats["responses"]
        ),
    );
    for p in ["p1", "p2"] {
        let peak = scope_field(&stats, p, FLASH, "peak_rpm");
        let admitted = scope_field(&stats, p, FLASH, "admitted");
        r.check(peak <= rpm && admitted > 0, format!("{p}/{FLASH}: {admitted} admitted, peak {peak} in a minute ≤ {rpm} between three processes"));
    }
    let hist = w.run(&["status", "--history", "--json"]).await;
    let rows: Value = serde_json::from_str(&hist.stdout).unwrap_or(Value::Null);
    let ours: u64 = rows
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|r| r["requests"].as_u64()).sum());
    let theirs: u64 = stats["scopes"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|s| s["admitted"].as_u64()).sum());
    r.check(
        ours == theirs,
        format!("the shared usage history counts what the server admitted: {ours} = {theirs}"),
    );
    for i in 0..3 {
        let problem = graph_problems(&w.path(&format!("out-{i}")), 8);
        r.check(
            problem.is_none(),
            format!(
                "worker {i}'s graph is whole: {}",
                problem.unwrap_or_else(|| "yes".into())
            ),
        );
    }
    drop(redis);
    Ok(())
}

async fn crash(bin: &Path, r: &mut Report) -> Result<(), String> {
    let keys = vec![key("k1", "p1"), key("k2", "p2")];
    let slow = Faults {
        latency_ms: 120,
        jitter_ms: 60,
        ..Faults::default()
    };
    let w = roomy_world(bin, keys, slow).await?;
    let episodes = 24;
    synth_transcripts(&w.path("inputs"), episodes, "crash").map_err(|e| e.to_string())?;
    // Four requests in flight against a slow server: a run takes seconds, so kills land mid-run.
    let args = w.seed_args(
        "inputs",
        "out",
        &[
            "--chunk-tokens",
            "60",
            "--concurrency",
            "2",
            "--requests",
            "2",
        ],
    );
    let mut kills = 0;
    for round in 0..6 {
        let child = w.command(&args).spawn().map_err(|e| e.to_string())?;
        let after = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(after)).await;
        let pid = child.id();
        if let Some(pid) = pid {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .ok();
            kills += 1;
        }
        let o = child.wait_with_output().await.map_err(|e| e.to_string())?;
        let done = std::fs::read_dir(w.path("out/episodes"))
            .map(|d| d.count())
            .unwrap_or(0);
        r.note(format!(
            "round {round}: SIGKILL after {after} ms ({}), {done} episode files so far",
            if o.status.code().is_none() {
                "killed"
            } else {
                "had already finished"
            }
        ));
        let st = w.run(&["status", "--json"]).await;
        let parsed: Value = serde_json::from_str(&st.stdout).unwrap_or(Value::Bool(false));
        r.check(
            st.code == Some(0) && (parsed.is_object() || parsed.is_null()),
            format!(
                "round {round}: the state reads back after the kill (status exit {})",
                code(&st)
            ),
        );
    }
    let o = w.run(&args).await;
    r.check(
        o.code == Some(0),
        format!(
            "after {kills} SIGKILLs a last run finishes (exit {})",
            code(&o)
        ),
    );
    let problem = graph_problems(&w.path("out"), episodes);
    r.check(
        problem.is_none(),
        format!(
            "every episode exactly once, graph whole: {}",
            problem.unwrap_or_else(|| "yes".into())
        ),
    );
    // The same inputs in one uninterrupted run give the same graph.
    let clean_args = w.seed_args(
        "inputs",
        "out-clean",
        &["--chunk-tokens", "60", "--concurrency", "4"],
    );
    let clean = w.run(&clean_args).await;
    let (a, b) = (
        graph_shape(&w.path("out")),
        graph_shape(&w.path("out-clean")),
    );
    r.check(
        clean.code == Some(0) && a == b,
        format!(
            "the graph equals an uninterrupted run's: {} nodes / {} edges vs {} / {}",
            a.0.len(),
            a.1.len(),
            b.0.len(),
            b.1.len()
        ),
    );
    let again = w.run(&args).await;
    r.check(
        again.code == Some(0)
            && again
                .text()
                .contains(&format!("0 processed, {episodes} already done")),
        format!(
            "a rerun redoes nothing: {}",
            again
                .text()
                .lines()
                .find(|l| l.contains("episodes:"))
                .unwrap_or("?")
        ),
    );
    Ok(())
}

/// Node ids and (source, type, target) of edges, sorted.
fn graph_shape(out: &Path) -> (Vec<String>, Vec<String>) {
    let lines = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(out.join("graph").join(f))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mut nodes: Vec<String> = lines("nodes.jsonl")
        .iter()
        .map(|n| n["id"].to_string())
        .collect();
    let mut edges: Vec<String> = lines("edges.jsonl")
        .iter()
        .map(|e| format!("{} {} {}", e["source"], e["type"], e["target"]))
        .collect();
    nodes.sort();
    edges.sort();
    (nodes, edges)
}

/// A key shaped like a real one ("AIza" and 35 more), made up now so none is ever committed.
fn key_shaped() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let tail: String = (0..35)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("AIza{tail}")
}

fn looks_like_a_key(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let ok = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let mut i = 0;
    while let Some(p) = text[i..].find("AIza") {
        let s = i + p;
        let e = s + 39;
        if e <= b.len() && b[s + 4..e].iter().all(|c| ok(*c)) {
            return Some(format!("{}…", &text[s..s + 8]));
        }
        i = s + 4;
    }
    None
}

async fn secrets(bin: &Path, r: &mut Report) -> Result<(), String> {
    let made: Vec<String> = (0..4).map(|_| key_shaped()).collect();
    let keys = vec![
        (made[0].clone(), "one".to_owned(), "pa".to_owned(), true),
        (made[1].clone(), "two".to_owned(), "pa".to_owned(), true),
        (made[2].clone(), "three".to_owned(), "pb".to_owned(), true),
        (
            made[3].clone(),
            "revoked".to_owned(),
            "pc".to_owned(),
            false,
        ),
    ];
    let faults = Faults {
        p503: 0.1,
        p429_bare: 0.05,
        ..Faults::default()
    };
    let w = World::new(
        bin,
        keys,
        &[(FLASH, Limits::new(1000, 10_000_000, 5)), (EMBED, roomy())],
        SimConfig {
            faults,
            ..SimConfig::default()
        },
        "",
    )
    .await?;
    let out = w.path("out").display().to_string();
    let mut outputs: Vec<(String, Out)> = Vec::new();
    let mut seed = w.seed_args("transcripts", "out", &[]);
    seed.insert(0, "-vv".into());
    outputs.push(("seed -vv (runs out of quota)".into(), w.run(&seed).await));
    let mut json = w.seed_args("transcripts", "out", &[]);
    json.insert(0, "--json-log".into());
    outputs.push(("seed --json-log".into(), w.run(&json).await));
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["status", "--history"],
        vec!["keys", "list"],
        vec!["keys", "check"],
        vec!["state", "info", "--out", &out],
        vec!["export", "--out", &out, "--format", "neo4j-csv"],
        vec!["export", "--out", &out, "--format", "jsonl"],
        vec!["keys", "reset", "revoked"],
    ] {
        outputs.push((args.join(" "), w.run(&args).await));
    }
    r.check(
        outputs[0].1.code == Some(3),
        format!(
            "the run used its keys and ran out of quota (exit {})",
            code(&outputs[0].1)
        ),
    );
    for (name, o) in &outputs {
        let text = o.text();
        let leaked = made
            .iter()
            .any(|k| text.contains(k.as_str()) || text.contains(&k[..20]));
        r.check(
            !leaked && looks_like_a_key(&text).is_none(),
            format!(
                "`keyturn {name}`: no key in stdout/stderr ({} bytes)",
                text.len()
            ),
        );
    }
    let files = walk(w.dir.path());
    let mut scanned = 0;
    let mut bad = Vec::new();
    for f in &files {
        if f.ends_with("keys.txt") {
            continue; // the user's own key file
        }
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        scanned += 1;
        let text = String::from_utf8_lossy(&bytes);
        if made.iter().any(|k| text.contains(k.as_str())) || looks_like_a_key(&text).is_some() {
            bad.push(f.display().to_string());
        }
    }
    r.check(bad.is_empty() && scanned > 10, format!("no key in any of {scanned} files written (state, checkpoints, outputs, exports, cache) {bad:?}"));
    Ok(())
}

/// Six projects with one key each, as a real pool looks: two healthy; one whose LLM model
/// answers the per-model bare 403 (`real-34`, while `GET models` works); one out of prepayment
/// credits (402, `real-16`); one with the older whole-API limit 0 (`api-limit-zero`); one whose
/// key was reported as leaked (bare 403 on every route, `real-24`). The samples must seed to the
/// end with no healthy key harmed.
async fn wild_pool(bin: &Path, r: &mut Report) -> Result<(), String> {
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
