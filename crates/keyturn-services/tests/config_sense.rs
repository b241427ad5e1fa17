//! Settings that make no sense are refused with the field and the file named: zero where zero
//! means nothing, a minimum above its maximum, an enum-like string with an unknown value; and
//! `GEMINI_API_KEYS` in the forms people actually write it never yields a bogus key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use keyturn_services::config::Env;
use keyturn_services::{Config, discover};

fn err(toml: &str) -> String {
    Config::from_toml(toml, Path::new("/etc/keyturn.toml"))
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_redis_cluster_url_is_a_redis_url() {
    for url in [
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        "rediss+cluster://u:p@h1:7000,h2:7000",
    ] {
        let toml = format!("[state]\nbackend = \"redis\"\nredis_url = \"{url}\"\n");
        let cfg = Config::from_toml(&toml, Path::new("/etc/keyturn.toml")).unwrap();
        assert_eq!(cfg.state.redis_url, url);
    }
}

#[test]
fn share_resources_is_a_yes_or_no_and_off_by_default() {
    let parse = |toml: &str| Config::from_toml(toml, Path::new("/etc/keyturn.toml"));
    assert!(!parse("").unwrap().serve.share_resources);
    assert!(
        parse("[serve]\nshare_resources = true\n")
            .unwrap()
            .serve
            .share_resources
    );
    for bad in ["\"yes\"", "1", "\"true\""] {
        let e = err(&format!("[serve]\nshare_resources = {bad}\n"));
        assert!(
            e.contains("share_resources") && e.contains("/etc/keyturn.toml"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn nonsense_settings_are_refused_naming_field_and_file() {
    let cases = [
        ("[serve]\nmax_body_bytes = 0\n", "serve.max_body_bytes"),
        ("[serve]\nmax_upload_bytes = 0\n", "serve.max_upload_bytes"),
        ("[serve]\nmax_in_flight = 0\n", "serve.max_in_flight"),
        ("[state]\nflush_interval = \"0s\"\n", "state.flush_interval"),
        ("[state]\nnamespace = \"a*\"\n", "state.namespace"),
        ("[state]\nnamespace = \"a:b\"\n", "state.namespace"),
        (
            "[state]\nredis_url = \"http://x:6379\"\n",
            "state.redis_url",
        ),
        ("[http]\napi_version = \"v9\"\n", "http.api_version"),
        ("[http]\nbase_url = \"ftp://x\"\n", "http.base_url"),
        (
            "[http]\nbase_url = \"https://generativelanguage.googleapis.com/v1beta\"\n",
            "http.base_url",
        ),
        ("[http]\nbase_url = \"https://x/?a=1\"\n", "http.base_url"),
        ("[http]\nconnect_timeout = \"0s\"\n", "http.connect_timeout"),
        ("[http]\nrequest_timeout = \"0s\"\n", "http.request_timeout"),
        (
            "[retry]\nbase_backoff = \"1m\"\nmax_backoff = \"30s\"\n",
            "retry.base_backoff",
        ),
        ("[retry]\nbase_backoff = \"0s\"\n", "retry.base_backoff"),
        ("[retry]\nmax_elapsed = \"0s\"\n", "retry.max_elapsed"),
        ("[retry]\nmax_attempts = 0\n", "retry.max_attempts"),
        (
            "[breaker]\nbase_cooldown = \"10m\"\nmax_cooldown = \"5m\"\n",
            "breaker.base_cooldown",
        ),
        (
            "[breaker]\nbase_cooldown = \"0s\"\n",
            "breaker.base_cooldown",
        ),
        (
            "[breaker]\nprobe_timeout = \"0s\"\n",
            "breaker.probe_timeout",
        ),
        (
            "[breaker]\nfailure_threshold = 0\n",
            "breaker.failure_threshold",
        ),
        (
            "[rotation]\ndefault_throttle_cooldown = \"0s\"\n",
            "rotation.default_throttle_cooldown",
        ),
        ("[cache]\nttl = \"0s\"\n", "cache.ttl"),
        ("[cache]\nmax_entries = 0\n", "cache.max_entries"),
        ("[embeddings]\nconcurrency = 0\n", "embeddings.concurrency"),
        ("[notify]\nqueue = 0\n", "notify.queue"),
        ("[notify]\nmax_attempts = 0\n", "notify.max_attempts"),
        ("[notify]\ntimeout = \"0s\"\n", "notify.timeout"),
        (
            "[notify]\nwebhook_url = \"http://\"\n",
            "notify.webhook_url",
        ),
        (
            "[[keys]]\nenv = \"A\"\nproject = \"a|b\"\n",
            "keys[0].project",
        ),
        ("[[keys]]\nenv = \"A\"\nlabel = \"\"\n", "keys[0].label"),
        (
            "[[keys]]\nenv = \"A\"\nlabel = \"a\\u001b[2J\"\n",
            "keys[0].label",
        ),
        ("[[keys]]\nenv = \"1A\"\n", "keys[0].env"),
        ("[projects.\"a|b\"]\ntier = \"tier1\"\n", "projects"),
        ("[models.\"gemini 2.5\"]\nrpm = 5\n", "models"),
    ];
    for (toml, field) in cases {
        let msg = err(toml);
        assert!(msg.contains(field), "{toml:?} → {msg}");
        assert!(msg.contains("/etc/keyturn.toml"), "{toml:?} → {msg}");
    }
    // A webhook URL's path is often its secret: a bad one is named, not repeated.
    let msg = err("[notify]\nwebhook_url = \"hooks.example.com/services/made-up-secret-path\"\n");
    assert!(msg.contains("notify.webhook_url"), "{msg}");
    assert!(!msg.contains("made-up-secret-path"), "{msg}");
    // What is meaningful stays accepted: no waiting at all, equal bounds, the two versions.
    for ok in [
        "[rotation]\nmax_wait = \"0s\"\n",
        "[retry]\nbase_backoff = \"30s\"\nmax_backoff = \"30s\"\n",
        "[http]\napi_version = \"v1\"\n",
        "[http]\nbase_url = \"http://127.0.0.1:8088/proxy/\"\n",
        "[state]\nnamespace = \"team-a.prod_2\"\nredis_url = \"rediss://:pw@h:6380/2\"\n",
    ] {
        Config::from_toml(ok, Path::new("/etc/keyturn.toml")).unwrap();
    }
}

fn keys_from(list: &str) -> Result<Vec<String>, String> {
    let mut e = Env::new();
    e.insert("GEMINI_API_KEYS".into(), list.into());
    discover(&Config::default(), &e, Path::new("/"))
        .map(|found| {
            found
                .iter()
                .map(|f| f.spec.key.expose().to_owned())
                .collect()
        })
        .map_err(|e| e.to_string())
}

#[test]
fn gemini_api_keys_in_every_form_people_write_it() {
    let want = ["made-up-k1", "made-up-k2"];
    for list in [
        "made-up-k1,made-up-k2",
        "made-up-k1, made-up-k2",
        "made-up-k1 made-up-k2\n",
        "made-up-k1;made-up-k2",
        "made-up-k1; made-up-k2;",
        "[\"made-up-k1\",\"made-up-k2\"]",
        " [ \"made-up-k1\" , \"made-up-k2\" ] ",
        "\"made-up-k1\",\"made-up-k2\"",
        "'made-up-k1' 'made-up-k2'",
        "'made-up-k1';\"made-up-k2\"",
    ] {
        assert_eq!(keys_from(list).unwrap(), want, "{list:?}");
    }
    assert_eq!(keys_from("'made-up-k1'").unwrap(), ["made-up-k1"]);
    // What cannot be read as keys is refused, naming the variable, never producing a key with
    // a bracket, quote or separator in it.
    for list in [
        "[\"made-up-k1\", made-up-k2]",
        "[\"made-up-k1\"",
        "made-up-k1\",made-up-k2",
        "\"made-up-k1,made-up-k2",
        "made-up-k1]",
    ] {
        let msg = keys_from(list).unwrap_err();
        assert!(msg.contains("GEMINI_API_KEYS"), "{list:?} → {msg}");
        assert!(!msg.contains("made-up-k1"), "{list:?} → {msg}");
    }
    // A list in a single-key variable is refused with the way to give several.
    let mut e = Env::new();
    e.insert("GEMINI_API_KEY".into(), "made-up-k1,made-up-k2".into());
    let msg = discover(&Config::default(), &e, Path::new("/"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("GEMINI_API_KEY") && msg.contains("for several keys"),
        "{msg}"
    );
    assert!(!msg.contains("made-up-k1"), "{msg}");
    // Single-value variables lose one pair of quotes a .env loader left there.
    let mut e = Env::new();
    e.insert("GEMINI_API_KEY".into(), "\"made-up-single\"\n".into());
    let found = discover(&Config::default(), &e, Path::new("/")).unwrap();
    assert_eq!(found[0].spec.key.expose(), "made-up-single");
}

#[test]
fn a_keys_or_configuration_file_that_cannot_be_one_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    // Far larger than any keys file: refused by size, not parsed line by line.
    let big = dir.path().join("big.keys");
    std::fs::write(&big, "made-up-big-key\n".repeat(100_000)).unwrap();
    // Not a regular file: a device would never end; a FIFO would not even open until someone
    // writes to it (a keys file swapped for one would hang the reload).
    let fifo = dir.path().join("fifo.keys");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, says) in [
        (big.to_str().unwrap(), "bytes"),
        ("/dev/zero", "not a regular file"),
        (fifo.to_str().unwrap(), "not a regular file"),
    ] {
        let mut e = Env::new();
        e.insert("KEYTURN_KEYS_FILE".into(), path.into());
        let msg = discover(&Config::default(), &e, Path::new("/"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(says), "{path}: {msg}");
        let msg = Config::from_file(Path::new(path)).unwrap_err().to_string();
        assert!(msg.contains(says), "{path}: {msg}");
    }
}

#[test]
fn an_admin_token_must_be_its_own_and_a_digest() {
    let d = "ab".repeat(32);
    let both = format!(
        "[[serve.tokens]]\nlabel = \"team\"\nsha256 = \"{d}\"\n[[serve.admin_tokens]]\nlabel = \"ops\"\nsha256 = \"{}\"\n",
        d.to_uppercase()
    );
    let e = err(&both);
    assert!(
        e.contains("serve.admin_tokens") && e.contains("client token"),
        "{e}"
    );
    let e = err("[[serve.admin_tokens]]\nlabel = \"ops\"\nsha256 = \"kt_not-a-digest\"\n");
    assert!(e.contains("serve.admin_tokens[0].sha256"), "{e}");
    let ok = format!("[[serve.admin_tokens]]\nlabel = \"ops\"\nsha256 = \"{d}\"\n");
    let cfg = Config::from_toml(&ok, Path::new("k.toml")).unwrap();
    assert_eq!(cfg.serve.admin_tokens[0].label, "ops");
}
