//! The documentation names every flag the binary accepts: each `--flag` in every command's
//! `--help` (subcommands included, found by walking the help itself) appears in docs/CLI.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Command;

fn help(path: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{path:?} --help");
    String::from_utf8(o.stdout).unwrap()
}

/// The subcommands a help text lists under `Commands:`.
fn subcommands(text: &str) -> Vec<String> {
    text.split("\nCommands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| *c != "help")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The long flags a help text's options list names.
fn flags(text: &str) -> BTreeSet<String> {
    let Some(options) = text.split("\nOptions:\n").nth(1) else {
        return BTreeSet::new();
    };
    options
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .filter(|_| !l.starts_with("--"))
                .map_or(l, |_| l.split_once(", ").map_or(l, |(_, long)| long));
            l.strip_prefix("--").map(|f| {
                f.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn every_flag_of_every_command_is_documented() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CLI.md")).unwrap();
    let mut missing = Vec::new();
    let mut seen = 0;
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        for f in flags(&text) {
            seen += 1;
            if !docs.contains(&format!("--{f}")) {
                missing.push(format!("keyturn {} --{f}", args.join(" ")));
            }
        }
        for sub in subcommands(&text) {
            // Subcommands are named too (`keys check`, `state prune`, …).
            let name = [args.as_slice(), &[sub.as_str()]].concat().join(" ");
            if !docs.contains(&name) {
                missing.push(format!("command: keyturn {name}"));
            }
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
    }
    assert!(seen > 30, "the walk found the flags ({seen})");
    assert!(
        missing.is_empty(),
        "not in docs/CLI.md:\n{}",
        missing.join("\n")
    );
}
