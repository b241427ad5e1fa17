//! Redis ledger throughput next to raw EVALSHA of a trivial script (same run, same server), and
//! FileStore writes per second under a 50,000 acquires/s load.
//! Run: `cargo bench -p keyturn-store` (uses KEYTURN_TEST_REDIS_URL or 127.0.0.1:6379).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // a benchmark times itself with the real clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use keyturn_core::testkit::{TIGHT, config, solo_keys};
use keyturn_core::{Demand, InMemoryLedger, Outcome, QuotaLedger, SystemClock};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{FileStore, Persister, RedisLedger, TimeSource};

fn big() -> keyturn_core::LedgerConfig {
    config(1_000_000_000, 1_000_000_000_000, 1_000_000_000)
}

fn in_flight<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        let start = Instant::now();
        let per = iters.div_ceil(64);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let op = op.clone();
                tokio::spawn(async move {
                    for _ in 0..per {
                        op().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed().mul_f64(iters as f64 / (per * 64) as f64)
    })
}

fn redis_benches(c: &mut Criterion) {
    let redis = match TestRedis::try_get() {
        Ok(r) => r,
        Err(why) => {
            println!("SKIPPED redis benchmarks: {why}");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = rt
        .block_on(redis::aio::ConnectionManager::new(client))
        .unwrap();
    let trivial = Arc::new(redis::Script::new("return 1"));
    let ledger = Arc::new(
        rt.block_on(RedisLedger::connect(
            redis.url(),
            &unique_namespace("bench"),
            Arc::new(solo_keys(3)),
            big(),
            Arc::new(SystemClock),
            TimeSource::Redis,
        ))
        .unwrap(),
    );

    let mut g = c.benchmark_group("redis");
    g.measurement_time(Duration::from_secs(5));
    {
        let (s, conn) = (trivial.clone(), conn.clone());
        g.bench_function("evalsha_trivial/serial", |b| {
            b.to_async(&rt).iter(|| {
                let (s, mut conn) = (s.clone(), conn.clone());
                async move {
                    let _: i64 = s.invoke_async(&mut conn).await.unwrap();
                }
            })
        });
    }
    {
        let l = ledger.clone();
        g.bench_function("acquire/serial", |b| {
            b.to_async(&rt).iter(|| {
                let l = l.clone();
                async move {
                    drop(l.acquire(TIGHT, Demand::tokens(10)).await.unwrap());
                }
            })
        });
    }
    {
        let l = ledger.clone();
        g.bench_function("acquire_settle/serial", |b| {
            b.to_async(&rt).iter(|| {
                let l = l.clone();
                async move {
                    let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
                    l.settle(lease, Outcome::success(8)).await.unwrap();
                }
            })
        });
    }
    {
        let (s, conn) = (trivial.clone(), conn.clone());
        g.bench_function("evalsha_trivial/64-in-flight", |b| {
            b.iter_custom(|iters| {
                let (s, conn) = (s.clone(), conn.clone());
                in_flight(&rt, iters, move || {
                    let (s, mut conn) = (s.clone(), conn.clone());
                    async move {
                        let _: i64 = s.invoke_async(&mut conn).await.unwrap();
                    }
                })
            })
        });
    }
    {
        let l = ledger.clone();
        g.bench_function("acquire/64-in-flight", |b| {
            b.iter_custom(|iters| {
                let l = l.clone();
                in_flight(&rt, iters, move || {
                    let l = l.clone();
                    async move {
                        drop(l.acquire(TIGHT, Demand::tokens(10)).await.unwrap());
                    }
                })
            })
        });
    }
    {
        let l = ledger.clone();
        g.bench_function("acquire_settle/64-in-flight", |b| {
            b.iter_custom(|iters| {
                let l = l.clone();
                in_flight(&rt, iters, move || {
                    let l = l.clone();
                    async move {
                        let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
                        l.settle(lease, Outcome::success(8)).await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

/// FileStore writes per second while the ledger takes 50,000 acquires per second for 5 s.
fn file_store_writes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStore::open(dir.path()).unwrap());
        let ledger = Arc::new(InMemoryLedger::new(Arc::new(solo_keys(100)), big(), Arc::new(SystemClock)));
        let persister = Persister::spawn(ledger.clone(), store, Duration::from_secs(1));
        let start = Instant::now();
        let mut done = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while start.elapsed() < Duration::from_secs(5) {
            tick.tick().await;
            // 500 per 10 ms = 50,000/s.
            for _ in 0..500 {
                let lease = ledger.try_acquire(TIGHT, Demand::tokens(10)).unwrap();
                ledger.settle_now(lease, Outcome::success(9));
                done += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let writes = persister.writes();
        println!(
            "filestore: {done} acquires in {secs:.2} s ({:.0}/s), {writes} snapshot writes ({:.2}/s; flush interval 1 s)",
            done as f64 / secs,
            writes as f64 / secs
        );
        persister.shutdown().await.unwrap();
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    redis_benches(&mut c);
    c.final_summary();
    file_store_writes();
}
