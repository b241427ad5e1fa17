//! Redis refusing keyturn (a wrong password, none where one is required, an ACL that denies its
//! commands) is a configuration error that says so — not "Redis did not answer, keyturn retries"
//! — and never shows the password. Against a throwaway `redis-server` with `--requirepass`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_services::config::Env;
use keyturn_services::{Config, ConfigError, Overrides, ServiceError, create_pool};
use keyturn_store::testkit::TestRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_refused_password_or_acl_is_a_configuration_error_without_the_password() {
    let password = format!("made-up-pw-{}", std::process::id());
    let limited = format!("made-up-limited-{}", std::process::id());
    let acl_pass = format!(">{limited}");
    let redis = TestRedis::private_with(&[
        "--requirepass",
        &password,
        "--user",
        "limited",
        "on",
        &acl_pass,
        "~elsewhere:*",
        "+@all",
    ]);
    let hostport = redis.url().trim_start_matches("redis://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let pool_err = |url: String| {
        let dir = dir.path().to_owned();
        async move {
            let mut e = Env::new();
            e.insert("GEMINI_API_KEY".into(), "made-up-redis-access".into());
            e.insert("KEYTURN_REDIS_URL".into(), url);
            let cfg = Config::load(None, &e, &dir, &Overrides::default()).unwrap();
            create_pool(&cfg, &e, &dir).await.err()
        }
    };
    for (url, says, secret) in [
        (
            format!("redis://:made-up-wrong-{}@{hostport}", std::process::id()),
            "wrong user or password",
            "made-up-wrong",
        ),
        (redis.url().to_owned(), "NOAUTH", password.as_str()),
        (
            format!("redis://limited:{limited}@{hostport}"),
            "NOPERM",
            limited.as_str(),
        ),
    ] {
        let err = pool_err(url.clone()).await.expect("Redis refuses this URL");
        assert!(
            matches!(err, ServiceError::Config(ConfigError::RedisAccess { .. })),
            "{url}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(says), "{msg}");
        assert!(msg.contains("configuration error"), "{msg}");
        assert!(!msg.contains("retries when Redis is back"), "{msg}");
        assert!(!msg.contains(secret), "the password is shown: {msg}");
        assert!(msg.contains(&hostport), "names the server: {msg}");
    }
    // The right password works.
    let ok = pool_err(format!("redis://:{password}@{hostport}")).await;
    assert!(ok.is_none(), "{ok:?}");
}
