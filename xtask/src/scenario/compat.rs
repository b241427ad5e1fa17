//! `compat`: every key variable style, alone and mixed

use std::path::Path;

use keyturn_sim::SimConfig;

use super::roomy;
use crate::world::{EMBED, FLASH, Report, World};

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
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
