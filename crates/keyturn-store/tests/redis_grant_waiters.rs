//! Acquires that waited behind the calls in flight (four per model at most) are served from the
//! room those calls took ahead, not sent to Redis with that room given back; and one cancelled
//! while it waited, while its own call was out, or after its answer came but before it read it,
//! leaves nothing counted that it did not send (a pinned acquire, whose call is its own, too).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A private Redis server, paused from a second connection; the waits let spawned acquires
// reach the ledger's queue (a slow machine can only make these tests pass without the fix,
// never fail with it).
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{Demand, KeyId, ManualClock, Outcome, QuotaLedger};
use keyturn_store::testkit::{RedisAdmin, TestRedis};
use keyturn_store::{RedisLedger, TimeSource};
use tokio::task::JoinHandle;

async fn ledger(redis: &TestRedis) -> Arc<RedisLedger> {
    ledger_on(redis, &ManualClock::at_ms(T0_MS)).await
}

async fn ledger_on(redis: &TestRedis, clock: &ManualClock) -> Arc<RedisLedger> {
    Arc::new(
        RedisLedger::connect(
            redis.url(),
            "waiters",
            Arc::new(solo_keys(1)),
            config(1_000, 1_000_000, 100_000),
            Arc::new(clock.clone()),
            TimeSource::Clock,
        )
        .await
        .unwrap(),
    )
}

fn acquire(l: &Arc<RedisLedger>) -> JoinHandle<()> {
    let l = l.clone();
    tokio::spawn(async move {
        // Never settled: sent as far as the counts know.
        drop(l.acquire(TIGHT, Demand::tokens(1)).await.unwrap());
    })
}

/// With Redis held, four acquires fill the model's calls (each asks for two admissions ahead)
/// and four more wait behind them; returns the waiters.
async fn four_out_and_four_waiting(
    l: &Arc<RedisLedger>,
    admin: &mut RedisAdmin,
) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
    admin.pause_scripts(20_000).await;
    let out: Vec<_> = (0..4).map(|_| acquire(l)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting: Vec<_> = (0..4).map(|_| acquire(l)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (out, waiting)
}

async fn rpd_used(l: &RedisLedger) -> u64 {
    let st = l.status().await.unwrap();
    st.scopes
        .iter()
        .filter(|s| s.model == TIGHT)
        .map(|s| s.rpd_used)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn acquires_waiting_behind_calls_are_served_from_the_room_those_calls_took_ahead() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    let (out, waiting) = four_out_and_four_waiting(&l, &mut admin).await;
    admin.resume().await;
    for t in out.into_iter().chain(waiting) {
        t.await.unwrap();
    }
    // Without it, the first waiter to lead sent every waiter to Redis and gave back the two
    // admissions the first call had just taken ahead for them: none served locally.
    assert!(
        l.spent_from_grants() >= 2,
        "waiters served from grants: {}",
        l.spent_from_grants()
    );
    assert_eq!(rpd_used(&l).await, 8, "eight acquires, eight counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn an_acquire_cancelled_while_it_waited_is_not_counted_as_sent() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    let (out, mut waiting) = four_out_and_four_waiting(&l, &mut admin).await;
    // The second waiter's caller stops waiting; the first leads the next batch with it in.
    let gone = waiting.remove(1);
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    admin.resume().await;
    for t in out.into_iter().chain(waiting) {
        t.await.unwrap();
    }
    l.close().await.unwrap();
    // Without the give-back, its admission stayed counted: 8.
    assert_eq!(
        rpd_used(&l).await,
        7,
        "seven acquires returned, seven counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn an_acquire_cancelled_mid_call_leaves_nothing_counted() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    // One acquire first: Redis holds the script from then on (a first call's EVALSHA is
    // refused, NOSCRIPT, and sent again after SCRIPT LOAD: cancelled in between, it never ran).
    drop(l.acquire(TIGHT, Demand::tokens(1)).await.unwrap());
    l.close().await.unwrap();
    assert_eq!(rpd_used(&l).await, 1);
    admin.pause_scripts(20_000).await;
    // It leads a call (one admission and two taken ahead), held in Redis; its caller hangs up.
    let leader = acquire(&l);
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    admin.resume().await;
    // The call ran once Redis resumed. Without its own task, its answer was dropped with the
    // acquire: its admission and the two taken ahead stayed counted for the day (4 in all).
    // (close waits for the call's task, which answers after Redis does.)
    l.close().await.unwrap();
    assert_eq!(
        rpd_used(&l).await,
        1,
        "nothing more was sent, nothing more stays counted"
    );
}

/// Polls `f` once: an acquire taken that far and no further, as a task that is woken later and
/// cancelled before it runs again.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}

/// One acquire made and closed, so that Redis holds the acquire script from then on (a first
/// call's EVALSHA is refused, NOSCRIPT, and sent again after SCRIPT LOAD).
async fn one_sent(l: &RedisLedger) {
    drop(l.acquire(TIGHT, Demand::tokens(1)).await.unwrap());
    l.close().await.unwrap();
    assert_eq!(rpd_used(l).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_waiter_cancelled_after_its_answer_came_is_not_counted_as_sent() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    one_sent(&l).await;
    let (out, waiting) = four_out_and_four_waiting(&l, &mut admin).await;
    // A ninth waits behind the four waiting: whichever of them leads first takes it in its batch
    // (the four calls out hand on four turns at most, all to those before it).
    let mut last = l.acquire(TIGHT, Demand::tokens(1));
    assert!(poll_once(&mut last).await.is_pending(), "Redis is paused");
    admin.resume().await;
    for t in out.into_iter().chain(waiting) {
        t.await.unwrap();
    }
    // Its answer came (close waits for the calls' tasks, which answer it); its task is
    // cancelled before it wakes to read it.
    l.close().await.unwrap();
    drop(last);
    l.close().await.unwrap();
    // Without the give-back, its admission stayed in its channel, counted: 10.
    assert_eq!(
        rpd_used(&l).await,
        9,
        "nine acquires returned, nine counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_leader_cancelled_after_its_answer_came_is_not_counted_as_sent() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    one_sent(&l).await;
    admin.pause_scripts(20_000).await;
    // It leads a call, held in Redis.
    let mut leader = l.acquire(TIGHT, Demand::tokens(1));
    assert!(poll_once(&mut leader).await.is_pending(), "Redis is paused");
    admin.resume().await;
    // Its call's task answers it (close waits for that); it is cancelled before it reads it.
    l.close().await.unwrap();
    drop(leader);
    l.close().await.unwrap();
    // Without the give-back, its admission stayed in its channel, counted: 2.
    assert_eq!(rpd_used(&l).await, 1, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_pinned_acquire_cancelled_mid_call_leaves_nothing_counted() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    one_sent(&l).await;
    admin.pause_scripts(20_000).await;
    // A request for a resource key 0's project owns: its call is its own, held in Redis; its
    // caller hangs up.
    let pinned = {
        let l = l.clone();
        tokio::spawn(async move {
            let demand = Demand::tokens(1).within_project_of(KeyId(0));
            drop(l.acquire(TIGHT, demand).await.unwrap());
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    pinned.abort();
    assert!(pinned.await.unwrap_err().is_cancelled());
    admin.resume().await;
    // The call ran once Redis resumed. Inline in the acquire, its answer went with it and its
    // admission stayed counted for the day (2). (close waits for the call's task.)
    l.close().await.unwrap();
    assert_eq!(rpd_used(&l).await, 1, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_waiter_cancelled_before_its_batch_went_does_not_take_the_breaker_probe() {
    let redis = TestRedis::private();
    let clock = ManualClock::at_ms(T0_MS);
    let l = ledger_on(&redis, &clock).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    // The only key's breaker opens (two transient failures): a probe may go at T0 + 10 s.
    for _ in 0..2 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::Transient).await.unwrap();
    }
    let ask = |demand: Demand| {
        let l = l.clone();
        tokio::spawn(async move { l.acquire(TIGHT, demand).await })
    };
    admin.pause_scripts(20_000).await;
    // Four calls out (refused at T0: the breaker is open), then four waiting whose demands no
    // key can ever take (they take no probe): the four calls hand on their turns to those only.
    let out: Vec<_> = (0..4).map(|_| ask(Demand::tokens(1))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let too_large: Vec<_> = (0..4).map(|_| ask(Demand::tokens(2_000_000))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Then one whose caller hangs up while it waits, and one that stays.
    let gone = ask(Demand::tokens(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    let stays = ask(Demand::tokens(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    clock.advance(Duration::from_secs(11));
    admin.resume().await;
    for t in out.into_iter().chain(too_large) {
        assert!(t.await.unwrap().is_err());
    }
    // Without skipping the waiter gone, its demand went in the batch before this one's and took
    // the probe, which nobody sent and which held the key for the probe's timeout (30 s).
    let lease = stays
        .await
        .unwrap()
        .expect("the waiter that stayed takes the probe");
    assert!(lease.is_probe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_call_whose_task_never_ran_keeps_the_give_backs_it_was_to_carry() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    // One sent (settled, so the counts know it) and a grant held (two taken ahead).
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    assert!(l.held_in_grants() > 0, "the first acquire takes a grant");
    // An acquire the grant does not fit (more tokens) leads a call that carries the grant's
    // give-back; its task is spawned on a runtime that shuts down before it runs it.
    let on_its_own = l.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut acquire = on_its_own.acquire(TIGHT, Demand::tokens(5));
            assert!(poll_once(&mut acquire).await.is_pending());
        });
    })
    .join()
    .unwrap();
    assert_eq!(
        l.held_in_grants(),
        0,
        "the call took the grant to give back"
    );
    // Without keeping them, the give-back went with the task: 3 counted (1 and the grant's 2).
    l.close().await.unwrap();
    assert_eq!(rpd_used(&l).await, 1, "one sent, one counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_grant_its_call_brought_after_a_disable_is_not_spent_on_the_disabled_key() {
    let redis = TestRedis::private();
    let l = ledger(&redis).await;
    let mut admin = RedisAdmin::connect(redis.url()).await;
    one_sent(&l).await;
    admin.pause_scripts(20_000).await;
    // An acquire's call (one admission and two taken ahead) is held in Redis; meanwhile the
    // process disables its only key (the disable's write waits behind the call).
    let first = acquire(&l);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let disable = {
        let l = l.clone();
        tokio::spawn(async move { l.disable_by_admin(KeyId(0), true).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin.resume().await;
    first.await.unwrap();
    disable.await.unwrap().unwrap();
    // The disable has returned: this process admits nothing more on that key. Without it, the
    // grant the call brought back (decided before the disable) served this one.
    let after = l.acquire(TIGHT, Demand::tokens(1)).await;
    assert!(after.is_err(), "admitted on a disabled key: {after:?}");
}
