//! An egress route per key (#17 item 4), over real sockets: each key's requests leave through
//! the forward proxy its `[[keys]]` entry names and no other, and a proxy that cannot be
//! reached is a transient fault of that key's path — the key cools, it is not disabled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::KEYS;
use common::forward::ForwardProxy;
use keyturn_services::config::Env;
use keyturn_services::{Config, Overrides};
use tokio::net::TcpListener;

/// alpha and beta from the env, each with `proxy` as its route.
fn config(
    dir: &std::path::Path,
    sim: &keyturn_sim::Simulator,
    alpha: &str,
    beta: &str,
) -> (Config, Env) {
    let toml = format!(
        "[state]\ndir = \"{}\"\n[rotation]\nmax_wait = \"0s\"\n[retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 4\n\
         [breaker]\nbase_cooldown = \"1h\"\nmax_cooldown = \"2h\"\n\
         [models.\"{}\"]\nrpm = 1000\ntpm = 10000000\nrpd = {}\n\
         [[keys]]\nenv = \"KEY_ALPHA\"\nlabel = \"alpha\"\nproject = \"proj-a\"\nproxy = \"{alpha}\"\n\
         [[keys]]\nenv = \"KEY_BETA\"\nlabel = \"beta\"\nproject = \"proj-b\"\nproxy = \"{beta}\"\n",
        dir.join("state").display(),
        common::FLASH,
        common::RPD,
    );
    std::fs::write(dir.join("keyturn.toml"), toml).unwrap();
    let env: Env = [
        ("KEY_ALPHA".to_owned(), KEYS[0].0.to_owned()),
        ("KEY_BETA".to_owned(), KEYS[1].0.to_owned()),
        ("GEMINI_BASE_URL".to_owned(), sim.base_url()),
    ]
    .into_iter()
    .collect();
    let cfg = Config::load(
        Some(&dir.join("keyturn.toml")),
        &env,
        dir,
        &Overrides::default(),
    )
    .unwrap();
    (cfg, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_requests_leave_through_its_own_proxy_and_no_other() {
    let sim = common::sim().await;
    let (pa, pb) = (ForwardProxy::start().await, ForwardProxy::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = config(dir.path(), &sim, &pa.url, &pb.url);
    let pool = keyturn_services::create_pool(&cfg, &env, dir.path())
        .await
        .unwrap();
    assert_eq!(common::spend(&*pool.caller, 4).await, 4);
    let (alpha, beta) = (KEYS[0].0, KEYS[1].0);
    assert!(
        pa.saw(alpha) && !pa.saw(beta),
        "alpha's proxy carried beta's key, or not alpha's"
    );
    assert!(
        pb.saw(beta) && !pb.saw(alpha),
        "beta's proxy carried alpha's key, or not beta's"
    );
    // Both keys were served, and only through their proxies: the simulator's counts match.
    let stats = sim.state().stats();
    for label in ["alpha", "beta"] {
        let k = stats["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == label)
            .unwrap();
        assert_eq!(k["by_route"]["generateContent"], 2, "{label}: {k}");
    }
    pool.state.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_proxy_cools_its_key_and_kills_nothing() {
    let sim = common::sim().await;
    let pa = ForwardProxy::start().await;
    // A port nobody listens on any more.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = config(dir.path(), &sim, &pa.url, &dead);
    let pool = keyturn_services::create_pool(&cfg, &env, dir.path())
        .await
        .unwrap();
    // Every call is served: beta's attempts fail to connect, and alpha takes them.
    assert_eq!(common::spend(&*pool.caller, 4).await, 4);
    let st = pool.ledger.status().await.unwrap();
    let beta = st.keys.iter().find(|k| k.label == "beta").unwrap();
    assert!(
        beta.disabled.is_none(),
        "a dead route is not a dead key: {beta:?}"
    );
    assert!(
        matches!(beta.breaker, keyturn_core::BreakerState::Open { .. }) || beta.failures > 0,
        "beta cools: {beta:?}"
    );
    let stats = sim.state().stats();
    let served = |label: &str| {
        stats["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == label)
            .unwrap()["by_route"]["generateContent"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(served("beta"), 0);
    assert_eq!(served("alpha"), 4);
    pool.state.shutdown().await.unwrap();
}

#[test]
fn a_route_is_checked_and_its_password_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    for (route, ok) in [
        ("http://127.0.0.1:3128", true),
        ("socks5://user:hunter2secret@10.0.0.1:1080", true),
        ("socks5h://proxy.example:1080", true),
        ("ftp://127.0.0.1:21", false),
        ("file:///etc/passwd", false),
        ("http://user:hunter2secret@host:1/path?x=1", false),
        ("not a url hunter2secret", false),
    ] {
        let toml = format!("[[keys]]\nenv = \"K\"\nproxy = \"{route}\"\n");
        std::fs::write(dir.path().join("keyturn.toml"), toml).unwrap();
        let r = Config::load(
            Some(&dir.path().join("keyturn.toml")),
            &Env::new(),
            dir.path(),
            &Overrides::default(),
        );
        assert_eq!(r.is_ok(), ok, "{route}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains("keys[0].proxy"), "{e}");
            assert!(!e.to_string().contains("hunter2secret"), "{e}");
        } else {
            assert!(!format!("{:?}", r.unwrap()).contains("hunter2secret"));
        }
    }
    let route = keyturn_gemini::EgressRoute::parse("socks5://u:hunter2secret@h:1080").unwrap();
    assert_eq!(
        format!("{route} {route:?}"),
        "socks5://h:1080 EgressRoute(socks5://h:1080)"
    );
}
