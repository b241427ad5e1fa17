//! FileStore: round trip, permissions, the lock, refusing corrupt and newer files, and the
//! write-behind bound (at most one write per flush interval, whatever the request rate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Ledgers here run against real files, processes or Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{TIGHT, config};
use keyturn_core::{
    ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, Outcome, StateStore, StoreError, SystemClock,
};
use keyturn_store::file::{LOCK_FILE, STATE_FILE};
use keyturn_store::{FileStore, Persister};

const SECRET: &str = "made-up-file-store-key-123";

fn ledger() -> Arc<InMemoryLedger> {
    let keys = KeyRing::new(vec![
        KeySpec::new(ApiKey::new(SECRET).unwrap()).label("only"),
    ])
    .unwrap();
    Arc::new(InMemoryLedger::new(
        Arc::new(keys),
        config(1_000_000_000, 1_000_000_000_000, 1_000_000_000),
        Arc::new(SystemClock),
    ))
}

#[tokio::test]
async fn round_trip_with_private_permissions_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = FileStore::open(&state).unwrap();
    assert_eq!(store.load().await.unwrap(), None);
    let l = ledger();
    for _ in 0..5 {
        let lease = l.try_acquire(TIGHT, Demand::tokens(7)).unwrap();
        l.settle_now(lease, Outcome::success(5));
    }
    let snap = l.snapshot_now();
    store.save(&snap).await.unwrap();
    let file = state.join(STATE_FILE);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(SECRET), "no key in the state file");
    assert!(text.contains("\"schema\": 1"));
    drop(store);
    let store = FileStore::open(&state).unwrap();
    assert_eq!(store.load().await.unwrap(), Some(snap));
    assert!(
        state.join("state.json.bak").exists(),
        "a backup of what was found"
    );
}

#[tokio::test]
async fn a_second_owner_is_refused_with_the_pid_and_a_pointer_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FileStore::open(dir.path()).unwrap();
    let err = FileStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::Locked { pid: Some(p), .. } if p == std::process::id()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("state.json") && msg.contains("KEYTURN_REDIS_URL"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(dir.path().join(LOCK_FILE).exists());
}

#[tokio::test]
async fn corrupt_truncated_and_newer_files_are_refused_and_left_untouched() {
    for (content, newer) in [
        (&b"{\"schema\": 1, \"snapshot\": {\"keys\": ["[..], false),
        (&b"\x00\x01binary"[..], false),
        (&b"{\"written_at\": \"x\"}"[..], false),
        (&b"{\"schema\": 99, \"snapshot\": {}}"[..], true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), content).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let err = store.load().await.unwrap_err();
        if newer {
            assert!(
                matches!(err, StoreError::NewerSchema { found: 99, .. }),
                "{err:?}"
            );
        } else {
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("keyturn state reset"), "{err}");
        }
        assert!(err.to_string().contains(STATE_FILE));
        assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), content);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_is_bounded_by_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::open(dir.path()).unwrap());
    let l = ledger();
    let persister = Persister::spawn(l.clone(), store.clone(), Duration::from_millis(200));
    // About one second of heavy traffic (tens of thousands of acquires): at most ~6 writes.
    let ticks = tokio::time::interval(Duration::from_millis(50));
    tokio::pin!(ticks);
    let mut acquires = 0u64;
    for _ in 0..20 {
        ticks.as_mut().tick().await;
        for _ in 0..2_500 {
            let lease = l.try_acquire(TIGHT, Demand::tokens(3)).unwrap();
            l.settle_now(lease, Outcome::success(3));
            acquires += 1;
        }
    }
    let during = persister.writes();
    assert!(during >= 1, "it does write");
    // The 20 bursts span ≥ 950 ms of the test's own schedule: ≤ 1 + 950/200 intervals.
    assert!(during <= 6, "{during} writes for {acquires} acquires");
    // Nothing changes: no more writes (flush first so no save is in flight).
    persister.flush().await.unwrap();
    let before = persister.writes();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(persister.writes(), before, "no write when nothing changed");
    // Flush on demand and on shutdown.
    let lease = l.try_acquire(TIGHT, Demand::tokens(3)).unwrap();
    l.settle_now(lease, Outcome::success(3));
    persister.flush().await.unwrap();
    assert_eq!(persister.writes(), before + 1);
    let lease = l.try_acquire(TIGHT, Demand::tokens(3)).unwrap();
    l.settle_now(lease, Outcome::success(3));
    persister.shutdown().await.unwrap();
    let saved = store.load().await.unwrap().unwrap();
    let day: u64 = saved.scopes.iter().map(|s| s.day_count).sum();
    assert_eq!(day, acquires + 2, "the last state was saved at shutdown");
}

/// A change made before the writer task first runs (a `keyturn keys reset` straight after
/// start-up) is still saved at shutdown. On a current-thread runtime the task cannot run before
/// the change, so this fails for a writer that takes its baseline version inside the task.
#[tokio::test(flavor = "current_thread")]
async fn a_change_before_the_writer_first_runs_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::open(dir.path()).unwrap());
    let l = ledger();
    let persister = Persister::spawn(l.clone(), store.clone(), Duration::from_secs(3600));
    let lease = l.try_acquire(TIGHT, Demand::tokens(3)).unwrap();
    l.settle_now(lease, Outcome::success(3));
    persister.shutdown().await.unwrap();
    let saved = store.load().await.unwrap().expect("the change was saved");
    assert_eq!(saved.scopes.iter().map(|s| s.day_count).sum::<u64>(), 1);
}

#[tokio::test]
async fn a_state_folder_others_can_write_is_made_private_or_refused() {
    // Ours, left world-writable (by a umask, a careless chmod): tightened to 0700.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    for loose in [0o777, 0o770, 0o702] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(loose)).unwrap();
        let store = FileStore::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{loose:o} was left as {mode:o}");
        drop(store);
    }
    // Readable by the group but writable only by us: a choice, left as it is.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    drop(FileStore::open(&dir).unwrap());
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);

    // Someone else's world-writable folder cannot be made private: refused, untouched.
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_err() {
        eprintln!("SKIPPED (part): cannot give a folder to another user without root");
        return;
    }
    let err = FileStore::open(&theirs).unwrap_err().to_string();
    assert!(
        err.contains("writable by other users") && err.contains("KEYTURN_STATE_DIR"),
        "{err}"
    );
    let mode = std::fs::metadata(&theirs).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "someone else's folder is not changed");
    assert!(!theirs.join(LOCK_FILE).exists(), "nothing is created in it");
}
