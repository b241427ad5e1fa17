//! Give-backs of unspent grants are exact. One whose answer is lost (Redis was slow: the call
//! timed out, then ran) is sent again and changes nothing the second time: giving back twice
//! would take other admissions off the counts, and the ledger would admit past the limit. One
//! whose call never ran (the connection dropped) is sent again and returns the room once, by the
//! next status, by `close`, or by the model's timer when the process is idle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{Demand, ManualClock, Outcome, QuotaLedger};
use keyturn_store::testkit::{RedisAdmin, TestRedis};
use keyturn_store::{RedisLedger, TimeSource};

async fn day_used(l: &RedisLedger) -> (u64, u64) {
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    (s.rpm_used, s.rpd_used)
}

async fn ledger(redis: &TestRedis, clock: &Arc<ManualClock>) -> RedisLedger {
    RedisLedger::connect(
        redis.url(),
        "giveback",
        Arc::new(solo_keys(1)),
        config(100, 1_000_000, 1000),
        clock.clone(),
        TimeSource::Clock,
    )
    .await
    .unwrap()
}

/// Another process on the namespace that holds no grant and reads the model's counts.
async fn observer(redis: &TestRedis, clock: &Arc<ManualClock>) -> RedisLedger {
    let mut cfg = config(100, 1_000_000, 1000);
    cfg.models = vec![TIGHT.into()];
    RedisLedger::connect(
        redis.url(),
        "giveback",
        Arc::new(solo_keys(1)),
        cfg,
        clock.clone(),
        TimeSource::Clock,
    )
    .await
    .unwrap()
}

/// A ledger that spent one admission and holds a grant; the admin connection.
async fn one_sent_and_a_grant_held(
    redis: &TestRedis,
    clock: &Arc<ManualClock>,
) -> (RedisLedger, RedisAdmin) {
    let l = ledger(redis, clock).await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    assert!(l.held_in_grants() > 0, "the first acquire takes a grant");
    (l, RedisAdmin::connect(redis.url()).await)
}

/// Fails the give-back that `give_back` sends without Redis running it: scripts are held
/// (CLIENT PAUSE WRITE), the ledger's connection is killed with its call unread, and Redis
/// resumes.
async fn give_back_dropped_unrun<F: std::future::Future<Output = bool>>(
    admin: &mut RedisAdmin,
    give_back: F,
) {
    admin.pause_scripts(20_000).await;
    let killer = async {
        // Once the ledger's call waits in Redis, its connection goes, and the call with it.
        admin.until_a_call_is_held().await;
        admin.kill_other_clients().await;
    };
    let (failed, ()) = tokio::join!(give_back, killer);
    assert!(
        !failed,
        "the give-back's connection was killed before Redis ran it"
    );
    admin.resume().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_give_back_whose_answer_was_lost_is_not_given_back_twice() {
    // A private server: it is paused below, which would stall anyone sharing it.
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;

    // The give-back before status is sent, its answer never comes in time; Redis runs it.
    answer_lost(&mut admin, l.status()).await;

    // One request was sent today and this minute, whatever happened to the give-back's answer:
    // the status below sends the give-back again, and Redis, which ran it, ignores it.
    assert_eq!(day_used(&l).await, (1, 1));
    assert_eq!(day_used(&l).await, (1, 1));
}

/// An acquire call whose answer was lost (Redis stalled past the answer timeout, then ran it)
/// failed for its caller, who sends nothing. Redis recorded what the call admitted (its own
/// admission and the grant it took ahead); the next call voids it all: only what was sent
/// stays counted, however late the stalled call ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn an_acquire_whose_answer_was_lost_leaves_nothing_counted() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    l.close().await.unwrap();
    assert_eq!(day_used(&l).await, (1, 1));

    answer_lost(&mut admin, l.acquire(TIGHT, Demand::tokens(1))).await;
    // Redis ran it once the pause ended: without the void, its admission and the grant it
    // took ahead stayed counted for the minute and the day ((4, 4)).
    assert_eq!(day_used_once_back(&l).await, (1, 1));
    assert_eq!(day_used(&l).await, (1, 1));
}

/// A void whose own call's answer is lost too (Redis stalled again) is sent again, and Redis,
/// which applied it, gives nothing back the second time: giving the stalled call's three
/// admissions back twice would take the one sent off the counts ((0, 0)), and the ledger would
/// admit past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_void_whose_answer_was_lost_is_not_applied_twice() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    l.close().await.unwrap();
    assert_eq!(day_used(&l).await, (1, 1));

    // The acquire call's answer is lost; Redis runs it once the pause ends.
    answer_lost(&mut admin, l.acquire(TIGHT, Demand::tokens(1))).await;
    // The status's give-back carries the void; its answer is lost too, and Redis runs it.
    answer_lost(&mut admin, l.status()).await;
    // The next status sends the void again: applied once, whatever happened to its answers.
    assert_eq!(day_used_once_back(&l).await, (1, 1));
    assert_eq!(day_used(&l).await, (1, 1));
}

/// `call` loses its answer: Redis stalls past the ledger's answer timeout (3 s), so the call
/// fails for its caller, then runs what it was sent; returns once Redis has.
async fn answer_lost<T, E>(
    admin: &mut RedisAdmin,
    call: impl std::future::Future<Output = Result<T, E>>,
) {
    admin.pause_all(4_500).await;
    assert!(call.await.is_err(), "Redis was paused");
    until_it_answers(admin).await;
}

/// Returns once Redis answers a PING (after a pause: what it held has run by then; this
/// connection's own answer timeout may cut a wait short, so it asks again).
async fn until_it_answers(admin: &mut RedisAdmin) {
    while redis::cmd("PING")
        .query_async::<String>(admin.connection())
        .await
        .is_err()
    {}
}

/// The status until Redis answers again (the first calls after a dropped connection may fail
/// while it reconnects).
async fn day_used_once_back(l: &RedisLedger) -> (u64, u64) {
    for _ in 0..50 {
        if let Ok(st) = l.status().await {
            let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
            return (s.rpm_used, s.rpd_used);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Redis did not answer again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_give_back_that_never_ran_is_sent_again_and_returns_the_room_once() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    give_back_dropped_unrun(&mut admin, async { l.status().await.is_ok() }).await;
    // The status sends the lost give-back again: the grant's room is back, once.
    assert_eq!(day_used_once_back(&l).await, (1, 1));
    assert_eq!(day_used(&l).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn close_sends_a_failed_give_back_again() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    give_back_dropped_unrun(&mut admin, async { l.status().await.is_ok() }).await;
    let mut closed = false;
    for _ in 0..50 {
        if l.close().await.is_ok() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "close gives back once Redis answers");
    assert_eq!(l.held_in_grants(), 0);
    // Another process (holding no grant) sees what was sent: one request.
    let other = observer(&redis, &clock).await;
    assert_eq!(day_used(&other).await, (1, 1));
    // The marks of answered give-backs went with close: none is left to expire.
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("kt:{giveback}:b:*")
        .query_async(admin.connection())
        .await
        .unwrap();
    assert_eq!(
        marks.len(),
        1,
        "only the resent batch's mark stays, until it expires: {marks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn an_idle_process_sends_a_failed_give_back_again_by_its_timer() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    // The give-back before a reset fails unrun; the process then stays idle.
    give_back_dropped_unrun(&mut admin, async {
        l.reset(keyturn_core::ResetTarget::All).await.is_ok()
    })
    .await;
    let other = observer(&redis, &clock).await;
    let mut used = day_used(&other).await;
    // The timer backs off from 1 s on the process's clock: move it on until the room is back.
    for _ in 0..100 {
        if used == (1, 1) {
            break;
        }
        clock.advance(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(50)).await;
        used = day_used(&other).await;
    }
    assert_eq!(used, (1, 1));
    drop(l);
}

/// Runs `call` until its Redis call is held (scripts paused), then drops it (its caller stops
/// waiting, as a request handler does when its client goes) and drops the connection with the
/// call unread, so it never runs; then Redis resumes.
async fn cancelled_unrun<F: std::future::Future>(admin: &mut RedisAdmin, call: F) {
    admin.pause_scripts(20_000).await;
    tokio::select! {
        _ = call => panic!("Redis is paused: the call cannot be answered"),
        () = admin.until_a_call_is_held() => {}
    }
    admin.kill_other_clients().await;
    admin.resume().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_give_back_whose_caller_stopped_waiting_is_sent_again() {
    // A status (and the give-back before it) cancelled mid-call: what it was to give back must
    // not go with the future.
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    cancelled_unrun(&mut admin, l.status()).await;
    // The next status sends the give-back again: the grant's room is back, once.
    assert_eq!(day_used_once_back(&l).await, (1, 1));
    let other = observer(&redis, &clock).await;
    assert_eq!(day_used(&other).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_give_back_carried_by_a_cancelled_acquire_is_sent_again() {
    // An acquire the grant does not fit (more tokens) goes to Redis carrying the grant's
    // give-back, and is cancelled mid-call.
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    cancelled_unrun(&mut admin, l.acquire(TIGHT, Demand::tokens(5))).await;
    // The call goes on in its own task until the dropped connection fails it, and only then are
    // its give-backs kept to be sent again: close waits for that (and sends them, or leaves them
    // to the status below while Redis is not back). A status before it could still see them
    // out, counted.
    let _ = l.close().await;
    assert_eq!(day_used_once_back(&l).await, (1, 1));
    let other = observer(&redis, &clock).await;
    assert_eq!(day_used(&other).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn close_waits_for_a_give_back_its_timer_has_out() {
    // The grant expires while the process is idle; its timer's give-back call is held in Redis
    // when a clean shutdown closes the ledger. Once close returns the process may exit (and the
    // timer's call go with it): the room must be back by then.
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, mut admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    admin.pause_scripts(1_500).await;
    // The grant's second ends: its timer gives it back.
    clock.advance(Duration::from_secs(1));
    admin.until_a_call_is_held().await;
    l.close().await.unwrap();
    // Read directly (a read, which the pause does not hold): the day's count is what was sent.
    let dc = admin.scope_field("giveback", "dc").await.unwrap();
    assert_eq!(dc, 1);
}

/// The records of what each acquire call admitted (kept in case its answer is lost) are deleted
/// once answered: a process that admitted, was refused, settled and closed leaves none behind,
/// so Redis does not grow by one key per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn answered_calls_leave_no_record_behind() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let mut cfg = config(100, 1_000_000, 1000);
    // Refused at once rather than waiting on the test clock.
    cfg.max_wait = Duration::ZERO;
    let l = RedisLedger::connect(
        redis.url(),
        "giveback",
        Arc::new(solo_keys(1)),
        cfg,
        clock.clone(),
        TimeSource::Clock,
    )
    .await
    .unwrap();
    // 100 a minute: the last acquires are refused (their calls admit nothing).
    let mut admitted = 0;
    for _ in 0..120 {
        if let Ok(lease) = l.acquire(TIGHT, Demand::tokens(1)).await {
            l.settle(lease, Outcome::success(1)).await.unwrap();
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100);
    l.close().await.unwrap();
    let mut admin = RedisAdmin::connect(redis.url()).await;
    let records: Vec<String> = redis::cmd("KEYS")
        .arg("kt:{giveback}:c:*")
        .query_async(admin.connection())
        .await
        .unwrap();
    assert!(records.is_empty(), "{} records left", records.len());
}

/// A ledger dropped where no runtime runs (a thread of its own, or after the runtime of the
/// code that held it ended: a proxy's serving thread) still gives its unspent grants back, on
/// the runtime it connected on; they stayed counted for the minute and the day before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_ledger_dropped_off_any_runtime_still_gives_its_grants_back() {
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let (l, _admin) = one_sent_and_a_grant_held(&redis, &clock).await;
    let watch = observer(&redis, &clock).await;
    let held = day_used(&watch).await;
    assert!(held.0 > 1, "the grant shows as used: {held:?}");
    std::thread::spawn(move || drop(l)).join().unwrap();
    let mut last = held;
    for _ in 0..50 {
        last = day_used(&watch).await;
        if last == (1, 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dropped ledger's grant was never given back: {last:?} for 1 request sent");
}
