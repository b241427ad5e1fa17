//! The real `keyturn` binary given a careless configuration: a key pasted where a name belongs
//! (in keyturn.toml, a keys file or a variable) exits 2 naming the field and never printing the
//! key; a Redis that refuses keyturn's password exits 2 and says it is a configuration error.
//!
//! Keys and passwords are made up and built at run time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use keyturn_store::testkit::{TestRedis, unique_namespace};

fn google_key(n: u8) -> String {
    format!("AIza{}{n:02}", "Sy0made-up_".repeat(3))
}

fn keyturn(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEYTURN_STATE_DIR", dir.join("state"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// keyturn.toml, extra variables, what the error says.
type Case = (String, Vec<(&'static str, String)>, &'static str);

#[test]
fn a_key_in_the_configuration_exits_2_naming_the_field_never_the_key() {
    let k = google_key(7);
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = vec![
        (
            format!("[[keys]]\nenv = \"{k}\"\n"),
            vec![],
            "keys[0].env holds what looks like an API key, not a variable name",
        ),
        (
            format!("[[keys]]\nfile = \"{k}\"\n"),
            vec![],
            "keys[0].file holds what looks like an API key, not a path",
        ),
        (
            format!("[[keys]]\nenv = \"WORK\"\napi_key = \"{k}\"\n"),
            vec![("WORK", "made-up-work-key".to_owned())],
            "keys[0].api_key holds what looks like an API key",
        ),
        (
            format!("[[keys]]\nenv = \"WORK\"\nkey = {k}\n"),
            vec![("WORK", "made-up-work-key".to_owned())],
            "holds what looks like an API key",
        ),
        (
            String::new(),
            vec![("KEYTURN_KEYS_FILE", k.clone())],
            "KEYTURN_KEYS_FILE holds what looks like an API key",
        ),
        (
            String::new(),
            vec![("GEMINI_API_KEYS", format!("[\"{k}\", {k}]"))],
            "GEMINI_API_KEYS",
        ),
    ];
    for (toml, envs, needle) in cases {
        std::fs::write(dir.path().join("keyturn.toml"), &toml).unwrap();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let out = keyturn(dir.path(), &envs, &["keys", "list"]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{toml:?} {envs:?}: {all}");
        assert!(all.contains(needle), "{toml:?} {envs:?}: {all}");
        assert!(!all.contains(&k[..12]), "the key is printed: {all}");
    }
}

#[test]
#[ignore = "needs Redis"]
fn a_redis_that_refuses_the_password_exits_2_and_says_it_is_configuration() {
    let password = format!("made-up-right-{}", std::process::id());
    let redis = TestRedis::private_with(&["--requirepass", &password]);
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("made-up-wrong-{}", std::process::id());
    for (url, says) in [
        (
            format!("redis://:{wrong}@127.0.0.1:{}", port),
            "wrong user or password",
        ),
        (format!("redis://127.0.0.1:{}", port), "NOAUTH"),
    ] {
        let out = keyturn(
            dir.path(),
            &[
                ("GEMINI_API_KEY", "made-up-redis-auth-key"),
                ("KEYTURN_REDIS_URL", url.as_str()),
            ],
            &["keys", "reset", "--all"],
        );
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {all}");
        assert!(
            all.contains(says) && all.contains("configuration error"),
            "{all}"
        );
        assert!(!all.contains("retries when Redis is back"), "{all}");
        assert!(!all.contains(&wrong) && !all.contains(&password), "{all}");
    }
    // With the right password the same command works.
    let url = format!("redis://:{password}@127.0.0.1:{}", port);
    let out = keyturn(
        dir.path(),
        &[
            ("GEMINI_API_KEY", "made-up-redis-auth-key"),
            ("KEYTURN_REDIS_URL", url.as_str()),
        ],
        &["keys", "reset", "--all"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(&password));
}

/// A ledger holding `keys` (key, project or none) that has admitted `n` requests.
// Another process spending on shared Redis, as a real worker would: on the real clock.
#[allow(clippy::disallowed_types)]
async fn spend(
    url: &str,
    ns: &str,
    keys: &[(&str, Option<&str>)],
    n: usize,
) -> keyturn_store::RedisLedger {
    use keyturn_core::{ApiKey, Demand, KeyRing, KeySpec, Outcome, QuotaLedger, SystemClock};
    let ring = KeyRing::new(
        keys.iter()
            .map(|(k, p)| {
                let spec = KeySpec::new(ApiKey::new(*k).unwrap());
                match p {
                    Some(p) => spec.project(*p),
                    None => spec,
                }
            })
            .collect(),
    )
    .unwrap();
    let l = keyturn_store::RedisLedger::connect(
        url,
        ns,
        std::sync::Arc::new(ring),
        keyturn_core::LedgerConfig::default(),
        std::sync::Arc::new(SystemClock),
        keyturn_store::TimeSource::Redis,
    )
    .await
    .unwrap();
    for _ in 0..n {
        let lease = l
            .acquire("gemini-2.5-flash", Demand::tokens(5))
            .await
            .unwrap();
        l.settle(lease, Outcome::success(5)).await.unwrap();
    }
    l
}

async fn used_today(l: &keyturn_store::RedisLedger) -> u64 {
    use keyturn_core::QuotaLedger;
    l.status()
        .await
        .unwrap()
        .scopes
        .iter()
        .map(|s| s.rpd_used)
        .sum()
}

#[allow(clippy::disallowed_methods)] // a namespace no other run uses: the time makes it unique
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn keys_reset_all_on_a_shared_namespace_leaves_other_key_sets_alone() {
    let redis = TestRedis::get();
    let url = redis.url().to_owned();
    let ns = unique_namespace("config-trust");
    // Set A (the binary's configuration) and set B (another team's worker) on one namespace.
    // A's key has no project, as in the binary's configuration below.
    let a = spend(&url, &ns, &[("made-up-bin-a1", None)], 2).await;
    let b = spend(
        &url,
        &ns,
        &[
            ("made-up-bin-b1", Some("pb")),
            ("made-up-bin-b2", Some("pb")),
        ],
        3,
    )
    .await;
    assert_eq!((used_today(&a).await, used_today(&b).await), (2, 3));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyturn.toml");
    std::fs::write(
        &config,
        format!("[state]\nbackend = \"redis\"\nredis_url = \"{url}\"\nnamespace = \"{ns}\"\n"),
    )
    .unwrap();
    let out = keyturn(
        dir.path(),
        &[
            ("GEMINI_API_KEY", "made-up-bin-a1"),
            ("KEYTURN_CONFIG", config.to_str().unwrap()),
        ],
        &["keys", "reset", "--all"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    assert_eq!(used_today(&a).await, 0, "A's own counters are reset");
    assert_eq!(used_today(&b).await, 3, "B's counters are not A's to reset");
}
