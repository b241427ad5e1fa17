//! The threads that serve the proxy's connections: one single-threaded Tokio runtime each, as
//! many as the machine has cores (thread per core). A connection lives on one lane for its
//! whole life — its reads and writes, its handler, the upstream call the handler makes and the
//! tasks it spawns — so a request never waits for a wake-up sent to another thread. On a
//! multi-thread runtime the client's socket, the handler and the upstream connection's task
//! could each wake on a different worker, and an answer read on one was freed on another
//! (glibc's arena lock: 14,129 futex calls in 2 s at 32 connections, 38 on lanes). Measured
//! against the build before: 33–36 % of the direct rate at 32 connections became 36–42 %, and
//! with a single-threaded client (Python's `http.client`) the latency serve adds went from
//! 153–172 µs to 60–98 µs (README, the proxy rows).
//!
//! Each lane's upstream calls go through an HTTP client of its own
//! ([`keyturn_gemini::transport::serve_on_lane`]), so the upstream connections stay on the lane
//! too. The accept loop hands each new connection to the lane with the fewest open. Lanes run until
//! their [`Lanes`] is dropped, so the tasks a request leaves behind (a give-back to Redis, a
//! stream's relay) finish with the proxy, not with its accept loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a lane's runtime waits, when it ends, for blocking work it started (a state write).
const LANE_SHUTDOWN: Duration = Duration::from_secs(5);

/// One serving thread.
#[derive(Debug)]
struct Lane {
    handle: tokio::runtime::Handle,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
    /// Dropped to end the thread.
    _stop: oneshot::Sender<()>,
}

/// The serving threads of one server.
#[derive(Debug)]
pub(crate) struct Lanes {
    first: Lane,
    rest: Vec<Lane>,
}

/// A connection's place on its lane: counted open until dropped.
pub(crate) struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lanes {
    /// `n` lanes (at least one); their logs go where the caller's go.
    pub(crate) fn start(n: usize, name: &str) -> std::io::Result<Self> {
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let mut lanes = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let dispatch = dispatch.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let _logs = tracing::dispatcher::set_default(&dispatch);
                    // Its upstream calls go through a client of its own (lane 0's is every
                    // other thread's).
                    keyturn_gemini::transport::serve_on_lane(i + 1);
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            ready_tx.send(Err(e)).ok();
                            return;
                        }
                    };
                    ready_tx.send(Ok(rt.handle().clone())).ok();
                    rt.block_on(async {
                        stop_rx.await.ok();
                    });
                    rt.shutdown_timeout(LANE_SHUTDOWN);
                })?;
            let handle = ready_rx
                .recv()
                .map_err(|_| std::io::Error::other("a serving thread ended as it started"))??;
            lanes.push(Lane {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop_tx,
            });
        }
        let mut lanes = lanes.into_iter();
        let first = lanes
            .next()
            .ok_or_else(|| std::io::Error::other("no serving thread"))?;
        Ok(Self {
            first,
            rest: lanes.collect(),
        })
    }

    /// As many lanes as the machine has cores: as many as the upstream transports keep
    /// clients for ([`keyturn_gemini::transport::lane_count`]).
    pub(crate) fn per_core(name: &str) -> std::io::Result<Self> {
        Self::start(keyturn_gemini::transport::lane_count(), name)
    }

    /// The lane with the fewest open connections, and a seat on it.
    pub(crate) fn seat(&self) -> (&tokio::runtime::Handle, Seat) {
        let mut lane = &self.first;
        for l in &self.rest {
            if l.open.load(Ordering::Relaxed) < lane.open.load(Ordering::Relaxed) {
                lane = l;
            }
        }
        lane.open.fetch_add(1, Ordering::Relaxed);
        (&lane.handle, Seat(lane.open.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_lane_and_leave_it_when_done() {
        let lanes = Lanes::start(3, "test-lane").unwrap();
        let mut seats: Vec<_> = (0..6).map(|_| lanes.seat().1).collect();
        let open = |l: &Lanes| {
            std::iter::once(&l.first)
                .chain(&l.rest)
                .map(|l| l.open.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        assert_eq!(open(&lanes), [2, 2, 2]);
        seats.truncate(4);
        let after = open(&lanes);
        assert_eq!(after.iter().sum::<usize>(), 4, "{after:?}");
        let (_, s) = lanes.seat();
        assert_eq!(open(&lanes).iter().sum::<usize>(), 5);
        assert!(open(&lanes).iter().all(|&n| n <= 2), "{:?}", open(&lanes));
        drop((s, seats));
        assert_eq!(open(&lanes), [0, 0, 0]);
    }

    #[test]
    fn a_lane_runs_what_it_is_given_on_its_own_thread() {
        let lanes = Lanes::start(2, "test-lane").unwrap();
        let (h, _seat) = lanes.seat();
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        });
        let name = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert!(name.starts_with("test-lane-"), "{name}");
    }

    #[test]
    fn a_lane_logs_where_its_starter_logs() {
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Kept(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Kept {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let kept = Kept::default();
        let k2 = kept.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || k2.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let lanes = Lanes::start(1, "test-lane").unwrap();
        let (h, _seat) = lanes.seat();
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            tracing::warn!("said on the lane");
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let logs = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        assert!(logs.contains("said on the lane"), "{logs:?}");
    }
}
