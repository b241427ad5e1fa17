//! The state seen from outside a run (`keyturn_services::state`): read while a running pool holds
//! it, located without being created, reset only through the pool, and cleared when it cannot be
//! read. What `keyturn status`, `state info`, `keys reset` and `state reset` rely on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{FLASH, config, sim, spend};
use keyturn_core::StoreError;
use keyturn_services::state::{Location, Reset, ResetDone, StateError, inspect, locate, reset};
use keyturn_services::{ServiceError, create_pool};

fn used_today(i: &keyturn_services::state::Inspection) -> u64 {
    i.status
        .scopes
        .iter()
        .filter(|s| s.model == FLASH)
        .map(|s| s.rpd_used)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_is_read_beside_a_running_pool_and_reset_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim().await;
    let (cfg, env) = config(dir.path(), &sim, "");
    let here = dir.path();

    // Nothing yet: looking creates nothing.
    assert!(inspect(&cfg, &env, here, &[FLASH]).await.unwrap().is_none());
    let Location::File(f) = locate(&cfg) else {
        panic!("file backend")
    };
    assert!(f.written.is_none() && f.lock.is_none());
    assert!(
        !here.join("state").exists(),
        "looking created the state folder"
    );

    let pool = create_pool(&cfg, &env, here).await.unwrap();
    assert_eq!(spend(pool.caller.as_ref(), 3).await, 3);
    pool.state.flush().await.unwrap();

    // The pool runs and holds the lock: inspection reads beside it, a reset is refused.
    let seen = inspect(&cfg, &env, here, &[FLASH]).await.unwrap().unwrap();
    // Three served, and what the dead key was sent before it was found dead.
    let used = used_today(&seen);
    assert!(used >= 3, "{used}");
    let Location::File(f) = locate(&cfg) else {
        panic!("file backend")
    };
    assert!(f.lock.unwrap().held);
    assert!(matches!(
        reset(&cfg, &env, here, Reset::All).await,
        Err(StateError::Service(ServiceError::State(
            StoreError::Locked { .. }
        )))
    ));
    pool.state.shutdown().await.unwrap();
    drop((pool.caller, pool.ledger));

    assert!(matches!(
        reset(&cfg, &env, here, Reset::Key("nobody")).await,
        Err(StateError::UnknownKey(k)) if k == "nobody"
    ));
    reset(&cfg, &env, here, Reset::Key("alpha")).await.unwrap();
    assert_eq!(
        used_today(&inspect(&cfg, &env, here, &[FLASH]).await.unwrap().unwrap()),
        used,
        "a key's reset leaves the counters"
    );
    reset(&cfg, &env, here, Reset::All).await.unwrap();
    let after = inspect(&cfg, &env, here, &[FLASH]).await.unwrap().unwrap();
    assert_eq!(used_today(&after), 0);
    assert!(!after.snapshot.usage.is_empty(), "usage history is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_deletes_a_state_file_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim().await;
    let (cfg, env) = config(dir.path(), &sim, "");
    let here = dir.path();
    let state = here.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("state.json"), "{not json").unwrap();

    assert!(matches!(
        inspect(&cfg, &env, here, &[FLASH]).await,
        Err(StateError::Service(ServiceError::State(
            StoreError::Corrupt { .. }
        )))
    ));
    assert!(matches!(
        reset(&cfg, &env, here, Reset::All).await,
        Err(StateError::Service(ServiceError::State(
            StoreError::Corrupt { .. }
        )))
    ));
    match keyturn_services::state::reset_or_delete(&cfg, &env, here)
        .await
        .unwrap()
    {
        ResetDone::Deleted { path, why } => {
            assert_eq!(path, state.join("state.json"));
            assert!(matches!(why, StoreError::Corrupt { .. }));
        }
        ResetDone::Reset => panic!("an unreadable file cannot be reset"),
    }
    assert!(!state.join("state.json").exists());
    assert!(inspect(&cfg, &env, here, &[FLASH]).await.unwrap().is_none());
}
