//! A careless user's key never reaches a configuration error: a key pasted where a variable name,
//! a path or any other field belongs, a TOML line that does not parse, a keys file line, an
//! environment variable. Each message hides the key and names the field that holds it.
//!
//! Keys here are made up and built at run time, so no key-shaped text is committed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use keyturn_services::config::Env;
use keyturn_services::{Config, Overrides, discover};

/// A made-up key in Google's shape: `AIza` and 35 key characters.
fn google_key(n: u8) -> String {
    format!("AIza{}{n:02}", "Sy0made-up_".repeat(3))
}

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The message shows no part of `secret` that could be used (not even its first 12 characters).
fn assert_hidden(msg: &str, secret: &str) {
    assert!(!msg.contains(secret), "the key is shown: {msg}");
    assert!(
        !msg.contains(&secret[..12.min(secret.len())]),
        "part of the key is shown: {msg}"
    );
}

fn load_err(toml: &str, e: &Env) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyturn.toml");
    std::fs::write(&path, toml).unwrap();
    let err = Config::load(Some(&path), e, dir.path(), &Overrides::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("keyturn.toml"), "names the file: {msg}");
    msg
}

#[test]
fn a_key_in_a_keys_entry_is_named_by_field_and_never_shown() {
    let k = google_key(1);
    let cases = [
        (
            format!("[[keys]]\nenv = \"{k}\"\n"),
            "keys[0].env holds what looks like an API key, not a variable name",
        ),
        (
            format!("[[keys]]\nenv = \"WORK\"\n[[keys]]\nfile = \"{k}\"\n"),
            "keys[1].file holds what looks like an API key, not a path",
        ),
        (
            format!("[[keys]]\nenv = \"WORK\"\napi_key = \"{k}\"\n"),
            "keys[0].api_key holds what looks like an API key",
        ),
        (
            format!("api_key = \"{k}\"\n"),
            "api_key holds what looks like an API key",
        ),
        (
            format!("[[keys]]\nenv = \"WORK\"\nlabel = \"{k}\"\n"),
            "keys[0].label holds what looks like an API key",
        ),
        (
            format!("[rotation]\npolicy = \"{k}\"\n"),
            "rotation.policy holds what looks like an API key",
        ),
        (
            format!("[models.\"{k}\"]\nrpm = 5\n"),
            "holds what looks like an API key",
        ),
        // A key cut short by a bad paste is still most of a secret.
        (
            format!("[[keys]]\nenv = \"{}\"\n", &k[..24]),
            "keys[0].env holds what looks like an API key",
        ),
    ];
    for (toml, needle) in cases {
        let msg = load_err(&toml, &env(&[("WORK", "made-up-work-key")]));
        assert!(msg.contains(needle), "{toml:?} → {msg}");
        assert_hidden(&msg, &k);
    }
}

#[test]
fn a_toml_line_that_does_not_parse_is_not_quoted() {
    let k = google_key(2);
    for toml in [
        format!("[[keys]]\nkey = {k}\n"),
        format!("[state]\nnamespace = \"x\"\nkey = {k} # mine\n"),
        format!("[[keys]]\nenv = \"{k}\n"),
    ] {
        let msg = load_err(&toml, &Env::new());
        assert_hidden(&msg, &k);
        assert!(msg.contains("line "), "names the line: {msg}");
        assert!(msg.contains("holds what looks like an API key"), "{msg}");
    }
    // toml's own message for a line without a key still helps (line and column), quoting nothing.
    let msg = load_err("[state]\nnamespace = \n", &Env::new());
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn a_configured_key_pasted_into_the_file_is_recognised_even_when_not_google_shaped() {
    // Not shaped like a Google key: recognised because the environment configures it (in a
    // variable that [[keys]] names, or in a key variable keyturn always reads).
    const WORK: &str = "[[keys]]\nenv = \"WORK\"\n";
    let secret = "made-up-secret-value-77";
    for (toml, field) in [
        (
            format!("[[keys]]\nenv = \"WORK\"\nweight = \"{secret}\"\n"),
            "keys[0].weight",
        ),
        (
            format!("[state]\nnamespace = \"{secret}\"\n{WORK}"),
            "state.namespace",
        ),
        (
            format!("[http]\napi_version = \"{secret}\"\n{WORK}"),
            "http.api_version",
        ),
        (
            format!("[rotation]\nmax_wait = \"{secret}\"\n{WORK}"),
            "rotation.max_wait",
        ),
    ] {
        for e in [
            env(&[("WORK", secret)]),
            env(&[("GEMINI_API_KEY", secret), ("WORK", "made-up-other")]),
            env(&[
                (
                    "GEMINI_API_KEYS",
                    &format!("[\"a-made-up-key\", \"{secret}\"]"),
                ),
                ("WORK", "x-made-up"),
            ]),
        ] {
            let msg = load_err(&toml, &e);
            assert!(!msg.contains(secret), "{toml:?} → {msg}");
            assert!(msg.contains(field), "{toml:?} → {msg}");
        }
    }
}

#[test]
fn a_short_made_up_key_equal_to_an_ordinary_value_is_no_false_alarm() {
    // Real keys are long; a test key "default" must not make namespace = "default" a key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyturn.toml");
    std::fs::write(&path, "[state]\nnamespace = \"default\"\n").unwrap();
    let e = env(&[("GEMINI_API_KEY", "default")]);
    Config::load(Some(&path), &e, dir.path(), &Overrides::default()).unwrap();
}

#[test]
fn a_key_in_a_setting_from_the_environment_is_named_and_hidden() {
    let k = google_key(3);
    let dir = tempfile::tempdir().unwrap();
    for (var, needle) in [
        (
            "KEYTURN_CONFIG",
            "KEYTURN_CONFIG holds what looks like an API key",
        ),
        (
            "GEMINI_BASE_URL",
            "http.base_url holds what looks like an API key",
        ),
        (
            "KEYTURN_STATE_DIR",
            "state.dir holds what looks like an API key",
        ),
        (
            "KEYTURN_REDIS_URL",
            "state.redis_url holds what looks like an API key",
        ),
    ] {
        let msg = Config::load(None, &env(&[(var, &k)]), dir.path(), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(needle), "{var} → {msg}");
        assert_hidden(&msg, &k);
    }
    // A file named by a key-shaped path that does not exist: the path is hidden too.
    let msg = Config::from_file(&dir.path().join(&k))
        .unwrap_err()
        .to_string();
    assert_hidden(&msg, &k);
    // A key in KEYTURN_CLOCK_OFFSET_MS.
    let msg = match keyturn_services::clock(&env(&[("KEYTURN_CLOCK_OFFSET_MS", &k)])) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a key is not a clock offset"),
    };
    assert!(msg.contains("KEYTURN_CLOCK_OFFSET_MS"), "{msg}");
    assert_hidden(&msg, &k);
}

#[test]
fn key_sources_in_the_environment_and_keys_files_never_echo_a_key() {
    let k = google_key(4);
    let other = google_key(5);
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::default();
    let disc = |e: &Env| {
        discover(&cfg, e, dir.path())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    // KEYTURN_KEYS_FILE given the key itself instead of a path.
    let msg = disc(&env(&[("KEYTURN_KEYS_FILE", &k)]));
    assert!(
        msg.contains("KEYTURN_KEYS_FILE holds what looks like an API key, not a path"),
        "{msg}"
    );
    assert_hidden(&msg, &k);

    // Keys file lines a careless user writes.
    for (line, needle) in [
        (format!("label=work {k}\n"), "the key comes first"),
        (format!("GEMINI_API_KEY={k}\n"), "variable assignment"),
        (
            format!("{k} label={other}\n"),
            "label holds what looks like an API key",
        ),
        (
            format!("{k} project={other}\n"),
            "project holds what looks like an API key",
        ),
        (format!("{k} weight={other}\n"), "weight"),
        (format!("{k} {other}\n"), "only label="),
        (format!("\"{k}\",\n"), "which no API key has"),
    ] {
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, &line).unwrap();
        let msg = disc(&env(&[("KEYTURN_KEYS_FILE", path.to_str().unwrap())]));
        assert!(msg.contains(needle), "{line:?} → {msg}");
        assert!(msg.contains("line 1"), "{msg}");
        assert_hidden(&msg, &k);
        assert_hidden(&msg, &other);
    }

    // A label that is another source's key.
    let toml = dir.path().join("k.toml");
    std::fs::write(
        &toml,
        "[[keys]]\nenv = \"WORK\"\nlabel = \"made-up-label-secret\"\n",
    )
    .unwrap();
    let e = env(&[
        ("WORK", "made-up-work"),
        ("GEMINI_API_KEY", "made-up-label-secret"),
    ]);
    let c = Config::load(Some(&toml), &Env::new(), dir.path(), &Overrides::default()).unwrap();
    let msg = discover(&c, &e, dir.path())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("label is one of the configured API keys"),
        "{msg}"
    );
    assert!(!msg.contains("made-up-label-secret"), "{msg}");
}

#[test]
fn discovery_errors_hide_every_configured_key() {
    let dir = tempfile::tempdir().unwrap();
    // [[keys]] env names a variable that is not set: the name is shown (it is a name)…
    let toml = dir.path().join("k.toml");
    std::fs::write(&toml, "[[keys]]\nenv = \"WORK_KEY\"\n").unwrap();
    let cfg = Config::load(Some(&toml), &Env::new(), dir.path(), &Overrides::default()).unwrap();
    let msg = discover(&cfg, &Env::new(), Path::new("/"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("WORK_KEY"), "{msg}");
    // …and a variable name that is not one is refused before anything reads it.
    std::fs::write(&toml, "[[keys]]\nenv = \"WORK KEY\"\n").unwrap();
    let msg = Config::load(Some(&toml), &Env::new(), dir.path(), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("keys[0].env") && msg.contains("not a variable name"),
        "{msg}"
    );
}
