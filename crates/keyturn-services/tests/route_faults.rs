//! A failing egress route is named as the cause (#17), and checks go through the key's route,
//! over real sockets: a proxy that is not there, one that answers 407, one that answers
//! garbage — each leaves its key cooling (never disabled) with the route (no credentials), the
//! kind of failure and since when on the pool's route board; a re-check and a `keys check`
//! arrive through the key's own proxy, and with the route dead they say the route failed and
//! call no key dead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::KEYS;
use common::forward::ForwardProxy;
use keyturn_core::ApiKey;
use keyturn_gemini::{KeyCheck, ModelCheck, RouteFault, check_key, check_key_for_model};
use keyturn_services::config::Env;
use keyturn_services::{Config, Overrides};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A proxy that reads a request's head and answers `reply`, whatever was asked.
async fn answering(reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                s.write_all(reply).await.ok();
                s.shutdown().await.ok();
            });
        }
    });
    addr.to_string()
}

/// An address nothing listens on any more.
async fn dead() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

/// alpha through `alpha` (a URL), beta through `http://user:hunter2secret@{beta}`.
fn config(dir: &std::path::Path, sim: &keyturn_sim::Simulator, alpha: &str, beta: &str) -> Config {
    let toml = format!(
        "[state]\ndir = \"{}\"\n[rotation]\nmax_wait = \"0s\"\n[retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 4\n\
         [breaker]\nbase_cooldown = \"1h\"\nmax_cooldown = \"2h\"\n\
         [models.\"{}\"]\nrpm = 1000\ntpm = 10000000\nrpd = {}\n\
         [[keys]]\nenv = \"KEY_ALPHA\"\nlabel = \"alpha\"\nproject = \"proj-a\"\nproxy = \"{alpha}\"\n\
         [[keys]]\nenv = \"KEY_BETA\"\nlabel = \"beta\"\nproject = \"proj-b\"\nproxy = \"http://user:hunter2secret@{beta}\"\n",
        dir.join("state").display(),
        common::FLASH,
        common::RPD,
    );
    std::fs::write(dir.join("keyturn.toml"), toml).unwrap();
    Config::load(
        Some(&dir.join("keyturn.toml")),
        &env(sim),
        dir,
        &Overrides::default(),
    )
    .unwrap()
}

fn env(sim: &keyturn_sim::Simulator) -> Env {
    [
        ("KEY_ALPHA".to_owned(), KEYS[0].0.to_owned()),
        ("KEY_BETA".to_owned(), KEYS[1].0.to_owned()),
        ("GEMINI_BASE_URL".to_owned(), sim.base_url()),
    ]
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_route_is_named_with_its_kind_and_since_when_and_the_key_only_cools() {
    let forward = ForwardProxy::start().await;
    let cases = [
        (dead().await, RouteFault::Unreachable),
        (
            answering(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n").await,
            RouteFault::Refused,
        ),
        (
            answering(b"SSH-2.0-OpenSSH_9.2 this is no HTTP proxy\r\n\r\n").await,
            RouteFault::BadAnswer,
        ),
    ];
    for (beta_route, fault) in cases {
        // A simulator per case: its daily quota is small.
        let sim = common::sim().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &sim, &forward.url, &beta_route);
        let pool = keyturn_services::create_pool(&cfg, &env(&sim), dir.path())
            .await
            .unwrap();
        // Every call is served by alpha; beta's attempts fail on its route.
        assert_eq!(common::spend(&*pool.caller, 4).await, 4, "{fault:?}");
        let board = pool.route_board();
        let alpha = ApiKey::new(KEYS[0].0).unwrap().fingerprint();
        let beta = ApiKey::new(KEYS[1].0).unwrap().fingerprint();
        assert_eq!(board.failing(&alpha), None, "alpha's route works");
        let failing = board
            .failing(&beta)
            .unwrap_or_else(|| panic!("beta's failing route is not on the board ({fault:?})"));
        assert_eq!(failing.fault, fault, "{failing:?}");
        assert_eq!(failing.route, format!("http://{beta_route}"));
        assert!(failing.since_ms > 0 && failing.failures >= 1, "{failing:?}");
        let shown = serde_json::to_string(&failing).unwrap();
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(!shown.contains(KEYS[1].0), "{shown}");
        let st = pool.ledger.status().await.unwrap();
        let b = st.keys.iter().find(|k| k.label == "beta").unwrap();
        assert!(
            b.disabled.is_none(),
            "a failing route is not a dead key: {b:?}"
        );
        assert!(
            matches!(b.breaker, keyturn_core::BreakerState::Open { .. }) || b.failures > 0,
            "beta cools: {b:?}"
        );
        pool.state.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_go_through_the_keys_route_and_a_dead_route_kills_no_key() {
    let sim = common::sim().await;
    let forward = ForwardProxy::start().await;
    let beta_route = dead().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, &forward.url, &beta_route);
    let (ring, found) = keyturn_services::key_ring(&cfg, &env(&sim), dir.path()).unwrap();
    let key = |label: &str| {
        ring.iter()
            .find(|(_, e)| e.label == label)
            .map(|(_, e)| e.key.clone())
            .unwrap()
    };

    // `keyturn keys check`'s transport: alpha's check arrives through alpha's proxy.
    let t = keyturn_services::key_transport(&cfg, &found).unwrap();
    let alpha = check_key_for_model(&t, &key("alpha"), common::FLASH)
        .await
        .unwrap();
    assert_eq!(alpha, ModelCheck::Alive);
    assert!(
        forward.saw(&format!("/models/{}", common::FLASH)),
        "the check went around the route"
    );
    assert!(forward.saw(KEYS[0].0));
    // Beta's route is dead: no answer, naming the route, and no verdict on the key.
    match check_key_for_model(&t, &key("beta"), common::FLASH)
        .await
        .unwrap()
    {
        ModelCheck::NoAnswer(detail) => {
            assert!(
                detail.contains(&format!("egress route http://{beta_route} unreachable")),
                "{detail}"
            );
            assert!(detail.contains("not of the key"), "{detail}");
            assert!(!detail.contains("hunter2secret"), "{detail}");
        }
        other => panic!("a dead route judged the key: {other:?}"),
    }
    assert!(
        !forward.saw(KEYS[1].0),
        "beta's check left through alpha's proxy"
    );

    // The monitor's and the console's re-check transport, on the pool: the same, recorded.
    let pool = keyturn_services::create_pool(&cfg, &env(&sim), dir.path())
        .await
        .unwrap();
    let t = pool.check_transport(&cfg).unwrap();
    assert_eq!(check_key(&t, &key("alpha")).await, KeyCheck::Alive);
    match check_key(&t, &key("beta")).await {
        KeyCheck::Unknown(detail) => assert!(detail.contains("egress route"), "{detail}"),
        other => panic!("a dead route judged the key: {other:?}"),
    }
    let failing = pool
        .route_board()
        .failing(&key("beta").fingerprint())
        .unwrap();
    assert_eq!(failing.fault, RouteFault::Unreachable);
    pool.state.shutdown().await.unwrap();
}
