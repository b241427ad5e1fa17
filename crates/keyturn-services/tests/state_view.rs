//! `keyturn console`'s view of a state folder (`StateView`), over real files: a read-only view
//! follows the file a pool writes without taking its lock; a file that goes missing or turns to
//! garbage keeps the last good view and says why; an owning view takes the lock, so it is
//! refused while a pool holds it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use keyturn_services::view::StateView;

async fn alpha_disabled(view: &StateView) -> bool {
    let st = view.ledger().status().await.unwrap();
    st.keys
        .iter()
        .any(|k| k.label == "alpha" && k.disabled.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_state_file_keeps_its_last_good_view_and_says_why() {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = common::config(dir.path(), &sim, "");
    // Nothing written yet: every key fresh, and the view says there is no file.
    let view = StateView::follow(&cfg, &env, dir.path()).unwrap();
    assert!(view.is_read_only());
    let f = view.refresh();
    assert!(f.error.unwrap().contains("no state file"));
    assert!(!alpha_disabled(&view).await);

    // A pool owns the folder (its lock held) and disables alpha: the view follows it.
    let pool = keyturn_services::create_pool(&cfg, &env, dir.path())
        .await
        .unwrap();
    let alpha = pool.keys.find("alpha").unwrap();
    pool.ledger.disable_by_admin(alpha, true).await.unwrap();
    pool.state.flush().await.unwrap();
    let f = view.refresh();
    assert_eq!(f.error, None, "{f:?}");
    let good_at = f.read_at_ms.unwrap();
    assert!(f.source.contains("(read-only)"), "{f:?}");
    assert!(alpha_disabled(&view).await);
    // An owning view would take the lock the pool holds: refused, as a configuration error.
    let owned = StateView::own(&cfg, &env, dir.path()).await.unwrap_err();
    assert_eq!(
        owned.kind(),
        keyturn_services::ServiceErrorKind::Configuration,
        "{owned}"
    );
    assert!(owned.to_string().contains("locked"), "{owned}");
    pool.state.shutdown().await.unwrap();

    // The file turns to garbage (a writer that is not keyturn's atomic one): the last good view
    // stays, and the view says what is wrong and since when it is good.
    let file = dir.path().join("state").join("state.json");
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let f = view.refresh();
    assert!(f.error.as_deref().unwrap().contains("state.json"), "{f:?}");
    assert_eq!(f.read_at_ms, Some(good_at), "{f:?}");
    assert!(f.age_ms.is_some(), "{f:?}");
    assert!(alpha_disabled(&view).await, "the last good view is kept");
    // Gone (renamed away): the same.
    std::fs::rename(&file, dir.path().join("moved.json")).unwrap();
    let f = view.refresh();
    assert!(
        f.error.as_deref().unwrap().contains("no state file"),
        "{f:?}"
    );
    assert!(alpha_disabled(&view).await, "the last good view is kept");
    // Back: followed again, and the view never wrote the file it follows.
    std::fs::write(&file, &good).unwrap();
    let f = view.refresh();
    assert_eq!(f.error, None, "{f:?}");
    assert!(f.read_at_ms.unwrap() >= good_at);
    assert_eq!(std::fs::read(&file).unwrap(), good);
}
