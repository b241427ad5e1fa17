//! Injected time. Every window, cooldown and Pacific-midnight reset reads time through a
//! [`Clock`], so tests drive time with a [`ManualClock`] instead of sleeping. This file holds the
//! one real clock; clippy's `disallowed-methods` bans reading the system clock anywhere else.

// SystemClock is defined here; clippy.toml bans naming it outside this file and the factory
// that builds the one clock a pool uses (keyturn_services::clock).
#![allow(clippy::disallowed_types)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// A boxed future, for the one `Clock` method that waits.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Wall-clock time in milliseconds since the Unix epoch, plus a way to wait for a moment.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in milliseconds since the Unix epoch (UTC).
    fn now_ms(&self) -> i64;

    /// Completes once `now_ms() >= deadline_ms`.
    fn sleep_until(&self, deadline_ms: i64) -> Sleep;

    /// Now as a timestamp.
    fn now(&self) -> Timestamp {
        ms_to_timestamp(self.now_ms())
    }
}

/// Converts milliseconds since the epoch to a timestamp, saturating at jiff's range.
pub fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// The system's real-time clock; waiting uses tokio's timer.
///
/// On Linux it reads `CLOCK_REALTIME_COARSE`: the wall clock at the kernel tick's resolution
/// (1–4 ms), several times cheaper than the precise clock. Quota windows count whole seconds, so
/// a reading a few milliseconds old only ever makes the ledger more careful, never less; it still
/// follows NTP steps like the precise clock does.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    #[allow(clippy::disallowed_methods)] // the one real clock
    #[cfg(any(test, not(target_os = "linux")))] // on Linux, only the test comparing the two
    fn precise_ms() -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }
    }
}

impl Clock for SystemClock {
    #[cfg(target_os = "linux")]
    fn now_ms(&self) -> i64 {
        // rustix calls the vDSO itself: no libc wrapper and no error path (the coarse clock
        // cannot fail), a third of what the pick spent reading the time through nix and libc.
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }

    #[cfg(not(target_os = "linux"))]
    fn now_ms(&self) -> i64 {
        Self::precise_ms()
    }

    fn sleep_until(&self, deadline_ms: i64) -> Sleep {
        let wait = deadline_ms.saturating_sub(self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// The system clock shifted by a fixed offset: rehearsing a day change against `keyturn sim`
/// (whose `/admin/advance` shifts its own clock the same way) without waiting for midnight.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffsetClock {
    offset_ms: i64,
}

impl OffsetClock {
    /// The system clock plus `offset_ms` (negative: minus).
    pub fn new(offset_ms: i64) -> Self {
        Self { offset_ms }
    }

    /// The offset.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms().saturating_add(self.offset_ms)
    }

    fn sleep_until(&self, deadline_ms: i64) -> Sleep {
        SystemClock.sleep_until(deadline_ms.saturating_sub(self.offset_ms))
    }
}

/// A clock that moves only when told to. Sleepers wake when [`ManualClock::advance`] or
/// [`ManualClock::set`] carries time past their deadline.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<i64>>,
    /// The deadline of every sleep in progress (one entry per sleep; equal deadlines repeat).
    sleeping: Arc<parking_lot::Mutex<Vec<i64>>>,
}

/// Takes a sleep's deadline off the list when the sleep ends or is dropped.
struct Asleep {
    sleeping: Arc<parking_lot::Mutex<Vec<i64>>>,
    deadline_ms: i64,
}

impl Drop for Asleep {
    fn drop(&mut self) {
        let mut s = self.sleeping.lock();
        if let Some(i) = s.iter().position(|d| *d == self.deadline_ms) {
            s.swap_remove(i);
        }
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({})", self.now())
    }
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self::at_ms(start.as_millisecond())
    }

    /// A clock stopped at `ms` since the epoch.
    pub fn at_ms(ms: i64) -> Self {
        let (tx, _rx) = watch::channel(ms);
        Self {
            now: Arc::new(tx),
            sleeping: Arc::default(),
        }
    }

    /// How many sleeps are waiting for a moment still ahead: a task counted here is parked on
    /// this clock. Tests wait for this before asserting that a task is still waiting, so the
    /// assertion cannot pass merely because the task never ran.
    pub fn sleepers_ahead(&self) -> usize {
        let now = self.now_ms();
        self.sleeping.lock().iter().filter(|d| **d > now).count()
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = by.as_millis() as i64;
        self.now.send_modify(|t| *t = t.saturating_add(by));
    }

    /// Sets time (it may go backwards, as a wall clock can).
    pub fn set(&self, to: Timestamp) {
        self.now.send_replace(to.as_millisecond());
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_ms: i64) -> Sleep {
        let mut rx = self.now.subscribe();
        self.sleeping.lock().push(deadline_ms);
        let asleep = Asleep {
            sleeping: self.sleeping.clone(),
            deadline_ms,
        };
        Box::pin(async move {
            let _asleep = asleep;
            loop {
                if *rx.borrow_and_update() >= deadline_ms {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock is gone: nothing will ever move time again.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_only_when_time_passes_the_deadline() {
        let clock = ManualClock::at_ms(1_000);
        let c2 = clock.clone();
        let task = tokio::spawn(async move { c2.sleep_until(5_000).await });
        for _ in 0..1_000 {
            if clock.sleepers_ahead() > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(clock.sleepers_ahead(), 1, "the task went to sleep");
        clock.advance(Duration::from_millis(3_000));
        tokio::task::yield_now().await;
        // Still asleep, for a moment still ahead: parked, not merely never polled.
        assert_eq!(clock.sleepers_ahead(), 1);
        assert!(!task.is_finished());
        clock.advance(Duration::from_millis(1_000));
        assert_eq!(clock.sleepers_ahead(), 0, "its deadline has come");
        task.await.unwrap();
        assert_eq!(clock.now_ms(), 5_000);
        assert!(
            clock.sleeping.lock().is_empty(),
            "a finished sleep leaves no entry"
        );
    }

    #[test]
    fn system_clock_agrees_with_the_precise_clock() {
        let coarse = SystemClock.now_ms();
        let precise = SystemClock::precise_ms();
        assert!(coarse > 1_577_836_800_000);
        // The coarse clock lags by at most a few kernel ticks, never leads.
        assert!(
            (precise - coarse) < 50 && coarse - precise <= 1,
            "{coarse} vs {precise}"
        );
    }
}
