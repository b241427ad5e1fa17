//! `secrets`: no key anywhere on disk or in any output

use std::path::Path;

use keyturn_sim::{Faults, Limits, SimConfig};
use rand::Rng;

use super::{code, roomy};
use crate::world::{EMBED, FLASH, Out, Report, World, walk};

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

pub(super) async fn run(bin: &Path, r: &mut Report) -> Result<(), String> {
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
