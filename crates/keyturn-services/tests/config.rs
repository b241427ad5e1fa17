//! Configuration: every key source and their combinations (with an injected environment, never
//! the developer's), precedence, validation messages, the example file, and the factory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use keyturn_core::{Demand, Outcome, Policy};
use keyturn_services::config::Env;
use keyturn_services::{
    Backend, Config, ConfigError, Overrides, ServiceError, create_embeddings_service_only,
    create_gemini_services, create_llm_service_only, discover,
};

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn labels(cfg: &Config, e: &Env, cwd: &Path) -> Vec<String> {
    discover(cfg, e, cwd)
        .unwrap()
        .into_iter()
        .map(|f| f.spec.label.unwrap())
        .collect()
}

#[test]
fn numbered_keys_any_n_with_gaps_in_numeric_order() {
    let e = env(&[
        ("GEMINI_API_KEY_10", "k10"),
        ("GEMINI_API_KEY_2", "k2"),
        ("GEMINI_API_KEY_7", "k7"),
        ("GEMINI_API_KEY_X", "no"),
    ]);
    assert_eq!(
        labels(&Config::default(), &e, Path::new("/")),
        ["GEMINI_API_KEY_2", "GEMINI_API_KEY_7", "GEMINI_API_KEY_10"]
    );
}

#[test]
fn every_source_in_the_documented_order_and_duplicates_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        "# team keys\nkf1 label=alpha project=p1\n\nkf2 weight=3 # spare\nk2\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("one.key"), "kone\n").unwrap();
    let toml = r#"
[[keys]]
env = "WORK_KEY"
label = "work"
project = "acme"
[[keys]]
file = "one.key"
label = "from-file"
"#;
    std::fs::write(dir.path().join("keyturn.toml"), toml).unwrap();
    let e = env(&[
        ("WORK_KEY", "kwork"),
        ("KEYTURN_KEYS_FILE", "keys.txt"),
        ("GEMINI_API_KEY_1", "k1"),
        ("GEMINI_API_KEY_2", "k2"),
        ("GEMINI_API_KEYS", "ka, kb\tkwork"),
        ("GEMINI_API_KEY", "kg"),
        ("GOOGLE_API_KEY", "kgoogle"),
    ]);
    let cfg = Config::load(None, &e, dir.path(), &Overrides::default()).unwrap();
    let found = discover(&cfg, &e, dir.path()).unwrap();
    let got: Vec<(String, Option<String>, u32)> = found
        .iter()
        .map(|f| {
            (
                f.spec.label.clone().unwrap(),
                f.spec.project.clone(),
                f.spec.weight,
            )
        })
        .collect();
    let want = [
        ("work", Some("acme"), 1),
        ("from-file", None, 1),
        ("alpha", Some("p1"), 1),
        ("keys.txt:4", None, 3),
        ("keys.txt:5", None, 1),
        ("GEMINI_API_KEY_1", None, 1),
        ("GEMINI_API_KEYS[1]", None, 1),
        ("GEMINI_API_KEYS[2]", None, 1),
        ("GEMINI_API_KEY", None, 1),
        ("GOOGLE_API_KEY", None, 1),
    ];
    let want: Vec<(String, Option<String>, u32)> = want
        .iter()
        .map(|(l, p, w)| ((*l).to_owned(), p.map(str::to_owned), *w))
        .collect();
    assert_eq!(
        got, want,
        "k2 (GEMINI_API_KEY_2) and kwork (GEMINI_API_KEYS[3]) counted once"
    );
    // Where each came from is shown by label and source, never by value.
    let shown = format!("{found:?}");
    for secret in ["kwork", "kf1", "kone", "kgoogle"] {
        assert!(!shown.contains(&format!("\"{secret}\"")), "{shown}");
    }
}

#[test]
fn single_sources_alone() {
    for (var, label) in [
        ("GEMINI_API_KEY", "GEMINI_API_KEY"),
        ("GOOGLE_API_KEY", "GOOGLE_API_KEY"),
        ("GEMINI_API_KEYS", "GEMINI_API_KEYS[1]"),
        ("GEMINI_API_KEY_9", "GEMINI_API_KEY_9"),
    ] {
        assert_eq!(
            labels(
                &Config::default(),
                &env(&[(var, "made-up")]),
                Path::new("/")
            ),
            [label]
        );
    }
}

#[test]
fn no_keys_lists_where_keyturn_looked() {
    let e = keyturn_services::key_ring(
        &Config::default(),
        &env(&[("UNRELATED", "x")]),
        Path::new("/"),
    )
    .unwrap_err();
    let msg = e.to_string();
    for var in [
        "GEMINI_API_KEY_<N>",
        "GEMINI_API_KEYS",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "KEYTURN_KEYS_FILE",
        "[[keys]]",
    ] {
        assert!(msg.contains(var), "{msg}");
    }
}

fn parse_err(toml: &str) -> String {
    Config::from_toml(toml, Path::new("/etc/keyturn.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn validation_errors_name_the_field_and_the_file() {
    let cases = [
        ("[state]\nbackend = \"postgres\"\n", "backend"),
        ("[rotation]\npolicy = \"random\"\n", "policy"),
        ("[rotation]\nmax_wait = \"soon\"\n", "max_wait"),
        ("[models.\"gemini-2.5-flash\"]\nrpm = -5\n", "rpm"),
        ("[models.\"gemini-2.5-flash\"]\nrpd = 0\n", "rpd"),
        ("[models.\"gemini-2.5-flash\"]\ntpd = 0\n", "tpd"),
        ("[limits]\ntier = \"tier4\"\n", "tier"),
        ("[projects.\"p\"]\ntier = \"paid\"\n", "tier"),
        ("[limits]\nunknown_model = { rpm = 0 }\n", "unknown_model"),
        ("[models.\"gemini-2.5-flash\"]\nrqm = 5\n", "rqm"),
        ("[stat]\ndir = \"x\"\n", "stat"),
        (
            "[[keys]]\nkey = \"made-up-inline\"\n",
            "never written in keyturn.toml",
        ),
        ("[[keys]]\nlabel = \"x\"\n", "keys[0]"),
        ("[[keys]]\nenv = \"A\"\nfile = \"b\"\n", "not both"),
        ("[embeddings]\nbatch_size = 101\n", "embeddings.batch_size"),
        ("[http]\nbase_url = \"localhost\"\n", "http.base_url"),
    ];
    for (toml, needle) in cases {
        let msg = parse_err(toml);
        assert!(msg.contains(needle), "{toml:?} → {msg}");
        assert!(msg.contains("/etc/keyturn.toml"), "{msg}");
        assert!(
            !msg.contains("made-up-inline"),
            "an inline key is not repeated: {msg}"
        );
    }
}

#[test]
fn precedence_flags_over_env_over_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom.toml");
    std::fs::write(&file, "[state]\ndir = \"from-file\"\n[http]\nbase_url = \"http://file:1\"\n[rotation]\npolicy = \"least-loaded\"\n").unwrap();
    let path = file.to_str().unwrap();
    let cfg = Config::load(
        None,
        &env(&[("KEYTURN_CONFIG", path)]),
        dir.path(),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(cfg.state.dir, dir.path().join("from-file"));
    assert_eq!(cfg.http.base_url, "http://file:1");
    assert_eq!(cfg.rotation.policy, Policy::LeastLoaded);
    assert_eq!(cfg.state.backend, Backend::File);

    let e = env(&[
        ("KEYTURN_CONFIG", path),
        ("KEYTURN_STATE_DIR", "/env/state"),
        ("GEMINI_BASE_URL", "http://env:2"),
        ("KEYTURN_REDIS_URL", "redis://env:3"),
    ]);
    let cfg = Config::load(None, &e, dir.path(), &Overrides::default()).unwrap();
    assert_eq!(
        (cfg.state.dir.to_str().unwrap(), cfg.http.base_url.as_str()),
        ("/env/state", "http://env:2")
    );
    assert_eq!(
        (cfg.state.backend, cfg.state.redis_url.as_str()),
        (Backend::Redis, "redis://env:3")
    );

    let o = Overrides {
        state_dir: Some("/flag".into()),
        base_url: Some("http://flag:4".into()),
        policy: Some(Policy::Weighted),
        no_cache: true,
        ..Overrides::default()
    };
    let cfg = Config::load(None, &e, dir.path(), &o).unwrap();
    assert_eq!(
        (cfg.state.dir.to_str().unwrap(), cfg.http.base_url.as_str()),
        ("/flag", "http://flag:4")
    );
    assert_eq!(cfg.rotation.policy, Policy::Weighted);
    assert!(!cfg.cache.enabled);

    // ./keyturn.toml is read when nothing names a file; defaults otherwise.
    std::fs::write(
        dir.path().join("keyturn.toml"),
        "[state]\nnamespace = \"here\"\n",
    )
    .unwrap();
    assert_eq!(
        Config::load(None, &Env::new(), dir.path(), &Overrides::default())
            .unwrap()
            .state
            .namespace,
        "here"
    );
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        Config::load(None, &Env::new(), empty.path(), &Overrides::default())
            .unwrap()
            .state
            .namespace,
        "default"
    );
}

#[test]
fn the_example_file_loads_and_means_what_it_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keyturn.example.toml");
    let cfg = Config::from_file(&path).unwrap();
    let defaults = Config::default();
    // Every documented default is the real default…
    assert_eq!(cfg.state, defaults.state);
    assert_eq!(cfg.rotation, defaults.rotation);
    assert_eq!(cfg.breaker, defaults.breaker);
    assert_eq!(cfg.retry, defaults.retry);
    assert_eq!(cfg.http, defaults.http);
    assert_eq!(cfg.cache, defaults.cache);
    assert_eq!(cfg.embeddings, defaults.embeddings);
    assert_eq!(cfg.serve, defaults.serve);
    assert_eq!(cfg.notify, defaults.notify);
    assert_eq!(cfg.recheck, defaults.recheck);
    assert_eq!(cfg.metrics, defaults.metrics);
    assert_eq!(cfg.limits, defaults.limits);
    // Copied as it is, the file sets no limit: the built-in table and the free tier apply, so a
    // user who copies it gets exactly what keyturn would do without it.
    assert!(cfg.models.is_empty() && cfg.projects.is_empty() && cfg.keys.is_empty());
    let (ours, theirs) = (cfg.limit_table().unwrap(), defaults.limit_table().unwrap());
    for m in [
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.5-flash-lite",
        "gemini-embedding-001",
        "made-up-model",
    ] {
        assert_eq!(ours.resolve("any", m), theirs.resolve("any", m), "{m}");
    }
    // …and the commented examples, uncommented, parse and take effect.
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("# --- examples").unwrap();
    let end = text.find("# --- end of examples").unwrap();
    let examples: String = text[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with("---"))
        .map(|l| format!("{l}\n"))
        .collect();
    let ex = Config::from_toml(&examples, Path::new("examples.toml")).unwrap();
    let t = ex.limit_table().unwrap();
    let flash = t.resolve("any", "gemini-2.5-flash").0;
    assert_eq!(
        (flash.rpm, flash.tpm, flash.rpd),
        (Some(10), Some(250_000), Some(250))
    );
    assert_eq!(t.resolve("acme-prod", "gemini-2.5-pro").0.rpm, Some(150));
    assert_eq!(t.tier("acme-prod"), keyturn_core::Tier::Tier1);
}

#[test]
fn every_tier_and_tpd_read_from_the_file() {
    let cfg = Config::from_toml(
        "[limits]\ntier = \"tier2\"\n[projects.\"big\"]\ntier = \"tier3\"\n\
         [models.\"gemini-3.1-pro-preview\"]\ntpd = 5000000\n",
        Path::new("/etc/keyturn.toml"),
    )
    .unwrap();
    let t = cfg.limit_table().unwrap();
    assert_eq!(t.tier("other"), keyturn_core::Tier::Tier2);
    assert_eq!(t.tier("big"), keyturn_core::Tier::Tier3);
    let (l, _) = t.resolve("big", "gemini-3.1-pro-preview");
    assert_eq!((l.rpm, l.rpd, l.tpd), (Some(10_000), None, Some(5_000_000)));
    assert_eq!(t.resolve("other", "gemini-2.5-flash").0.rpd, Some(100_000));
}

async fn sim() -> keyturn_sim::Simulator {
    keyturn_sim::Simulator::start(keyturn_sim::SimConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_share_one_pool_and_the_file_backend_persists() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let e = env(&[
        ("GEMINI_API_KEY_1", "made-up-factory-1"),
        ("GEMINI_API_KEY_2", "made-up-factory-2"),
        ("GEMINI_BASE_URL", &sim.base_url()),
    ]);
    let cfg = Config::load(None, &e, dir.path(), &Overrides::default()).unwrap();
    let s = create_gemini_services(&cfg, &e, dir.path()).await.unwrap();
    let g = s
        .llm
        .generate(&keyturn_llm::GenerateRequest::new(
            "gemini-2.5-flash",
            "hello",
        ))
        .await
        .unwrap();
    assert!(!g.text.is_empty());
    s.embeddings
        .embed(
            "hello",
            &keyturn_embeddings::EmbedOptions::new("gemini-embedding-001").dimensions(8),
        )
        .await
        .unwrap();
    // One ledger sees both.
    let st = s.ledger.status().await.unwrap();
    let used: Vec<(String, u64)> = st
        .scopes
        .iter()
        .filter(|x| x.rpd_used > 0)
        .map(|x| (x.model.clone(), x.rpd_used))
        .collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(s.state.describe().starts_with("file "));
    let file = s.state.file().unwrap().to_owned();
    s.state.shutdown().await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("gemini-embedding-001") && !text.contains("made-up-factory"));

    // Once the first owner has shut down, the next one can take the state folder.
    let again = create_llm_service_only(&cfg, &e, dir.path())
        .await
        .map(|_| ());
    assert!(
        again.is_ok(),
        "the first owner shut down and released the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_state_file_and_missing_keys_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(&[("GEMINI_API_KEY", "made-up-lock")]);
    let cfg = Config::load(None, &e, dir.path(), &Overrides::default()).unwrap();
    let (_emb, _state) = create_embeddings_service_only(&cfg, &e, dir.path())
        .await
        .unwrap();
    let err = create_llm_service_only(&cfg, &e, dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::State(keyturn_core::StoreError::Locked { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("KEYTURN_REDIS_URL"));
    let err = create_llm_service_only(&cfg, &Env::new(), dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::Config(ConfigError::NoKeys { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn the_redis_backend_is_selected_by_configuration() {
    let redis = keyturn_store::testkit::TestRedis::get();
    let dir = tempfile::tempdir().unwrap();
    let ns = keyturn_store::testkit::unique_namespace("factory");
    let e = env(&[
        ("GEMINI_API_KEY", "made-up-redis-factory"),
        ("KEYTURN_REDIS_URL", redis.url()),
    ]);
    let mut cfg = Config::load(None, &e, dir.path(), &Overrides::default()).unwrap();
    cfg.state.namespace = ns.clone();
    let s = create_gemini_services(&cfg, &e, dir.path()).await.unwrap();
    assert!(s.state.describe().starts_with("redis ") && s.state.describe().contains(&ns));
    let lease = s
        .ledger
        .acquire("gemini-2.5-flash", Demand::tokens(1))
        .await
        .unwrap();
    s.ledger.settle(lease, Outcome::success(1)).await.unwrap();
    // A second process-like factory on the same namespace sees the same counts.
    let s2 = create_gemini_services(&cfg, &e, dir.path()).await.unwrap();
    let lease = s2
        .ledger
        .acquire("gemini-2.5-flash", Demand::tokens(1))
        .await
        .unwrap();
    s2.ledger.settle(lease, Outcome::success(1)).await.unwrap();
    let st = s.ledger.status().await.unwrap();
    assert_eq!(st.scopes.iter().map(|x| x.rpd_used).sum::<u64>(), 2);
    assert!(
        !dir.path().join(".keyturn/state.json").exists(),
        "no state file with Redis"
    );
}
