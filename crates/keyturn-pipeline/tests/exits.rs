//! Exit codes stay on the documented list: a bad environment value is a configuration error (2),
//! and a reader that goes away (`keyturn status | head -1`) ends every command quietly, never
//! with a panic (101).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn keyturn(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYTURN_KEYS_FILE", dir.join("keys.txt"))
        .env("KEYTURN_STATE_DIR", dir.join("state"))
        // Nothing listens there: commands that call out get no answer, quickly.
        .env("GEMINI_BASE_URL", "http://127.0.0.1:9")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn world() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        "made-up-exit-key-1 label=one project=p1\nmade-up-exit-key-2 label=two project=p2\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_bad_clock_offset_is_a_configuration_error() {
    let dir = world();
    for args in [&["status"][..], &["keys", "list"], &["status", "--history"]] {
        let o = keyturn(dir.path(), args)
            .env("KEYTURN_CLOCK_OFFSET_MS", "abc")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("KEYTURN_CLOCK_OFFSET_MS"), "{}", text(&o));
    }
}

#[test]
fn every_command_into_a_closed_pipe_ends_quietly() {
    let dir = world();
    let commands: &[&[&str]] = &[
        &["--help"],
        &["status"],
        &["status", "--json"],
        &["status", "--history"],
        &["keys", "list"],
        &["keys", "check"],
        &["state", "info"],
        &["serve", "token", "new", "--label", "pipe"],
        &["seed", "--help"],
        &["sim", "--help"],
    ];
    for args in commands {
        let normal = keyturn(dir.path(), args).output().unwrap();
        // The read end is closed before the command starts: its first write meets a closed pipe.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed = keyturn(dir.path(), args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&closed.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(closed.status.code(), Some(101), "{args:?}: {err}");
        let code = closed.status.code();
        assert!(
            code == Some(0) || code == normal.status.code(),
            "{args:?}: {code:?} into a closed pipe, {:?} normally: {err}",
            normal.status.code()
        );
    }
}
