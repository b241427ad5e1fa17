//! Each command's `--help` lists only the flags it uses (issue 20 item 10), and the shared flags
//! still work before the command, with the one after the command winning.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn keyturn(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GEMINI_API_KEY", "made-up-cli-flags-key")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const STATE_FLAGS: &[&str] = &[
    "--state-dir",
    "--policy",
    "--redis-url",
    "--base-url",
    "--config <FILE>  Configuration file (default",
];

#[test]
fn sim_help_lists_only_what_the_simulator_reads() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyturn(dir.path(), &["sim", "--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for f in STATE_FLAGS {
        assert!(!help.contains(f), "sim --help lists {f}:\n{help}");
    }
    for f in ["--metrics-addr", "--port", "--key", "--config <FILE>"] {
        assert!(help.contains(f), "sim --help lacks {f}:\n{help}");
    }
}

#[test]
fn commands_that_read_no_configuration_list_no_state_flags() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["demo"][..],
        &["export"],
        &["state", "prune"],
        &["serve", "token", "new"],
    ] {
        let o = keyturn(dir.path(), &[cmd, &["--help"]].concat());
        let help = stdout(&o);
        assert!(o.status.success(), "{cmd:?}");
        for f in STATE_FLAGS {
            assert!(!help.contains(f), "{cmd:?} --help lists {f}:\n{help}");
        }
    }
    for cmd in [&["status"][..], &["keys", "list"], &["state", "info"]] {
        let help = stdout(&keyturn(dir.path(), &[cmd, &["--help"]].concat()));
        assert!(help.contains("--state-dir"), "{cmd:?}:\n{help}");
    }
}

#[test]
fn a_shared_flag_works_before_the_command_and_the_one_after_wins() {
    let dir = tempfile::tempdir().unwrap();
    let before = keyturn(dir.path(), &["--state-dir", "st-before", "status"]);
    assert!(before.status.success(), "{before:?}");
    assert!(stdout(&before).contains("st-before"), "{}", stdout(&before));
    let both = keyturn(
        dir.path(),
        &[
            "--state-dir",
            "st-before",
            "status",
            "--state-dir",
            "st-after",
        ],
    );
    assert!(both.status.success(), "{both:?}");
    assert!(stdout(&both).contains("st-after"), "{}", stdout(&both));
}
