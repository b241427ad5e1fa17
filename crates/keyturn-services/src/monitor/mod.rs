//! Watching the pool: every `[notify] check_interval` the monitor reads the ledger's status (the
//! same for either backend), refreshes the metrics gauges, and raises warnings — a scope's daily
//! quota crossing a threshold, a key disabled, every key out for a model — each once per scope
//! and Pacific day (the mark is kept in the ledger, so processes sharing a Redis ledger send it
//! once between them). It runs beside the requests and never delays one.
//!
//! It also brings dead keys back: a disabled key is asked again, with a request that costs no
//! quota ([`keyturn_gemini::check_key`]), `[recheck] interval` after it was disabled or last
//! asked; a key that answers is re-enabled, with a log line and a `key_reenabled` event. Processes
//! sharing a Redis ledger take turns (one asks per key and interval).

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::QuotaLedger;
use keyturn_gemini::Transport;
use tokio::sync::oneshot;

use crate::config::NotifySettings;
use crate::notify::{Notifier, Warning};

mod gauges;
mod recheck;
mod warnings;

use recheck::Recheck;

pub use gauges::{BREAKER, KEYS, QUOTA_LIMIT, QUOTA_USED, gauges};
// The one way a warning is built, which `notify`'s tests build theirs with.
#[cfg(test)]
pub(crate) use warnings::warning;
pub use warnings::{Pending, warnings};

/// Counter: warnings raised, by `event`.
pub const WARNINGS: &str = "keyturn_warnings_total";

/// Something else that hears each warning as it is raised (the proxy's console lists them).
pub type WarningSink = Arc<dyn Fn(&Warning) + Send + Sync>;

/// The running monitor.
#[derive(Debug)]
pub struct Monitor {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Starts watching `ledger`. `notifier` receives warnings (they are logged either way).
    /// With `recheck`, disabled keys are asked again through that transport at that interval.
    /// `sink` hears every warning too.
    pub fn spawn(
        ledger: Arc<dyn QuotaLedger>,
        settings: NotifySettings,
        notifier: Option<Notifier>,
        recheck: Option<(Transport, Duration)>,
        sink: Option<WarningSink>,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut watch = Watch {
                ledger,
                settings,
                outlets: Outlets { notifier, sink },
                failing: false,
                recheck: recheck.map(|(transport, interval)| Recheck::new(transport, interval)),
            };
            let mut tick = tokio::time::interval(watch.settings.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => watch.check().await,
                    _ = &mut stopped => break,
                }
            }
            // The last state of the run counts too (a short run that crossed 80 %).
            watch.check().await;
            if let Some(n) = watch.outlets.notifier.take() {
                let bound = watch.settings.timeout * watch.settings.max_attempts.min(3);
                n.shutdown(bound.max(Duration::from_secs(1))).await;
            }
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Checks a last time, delivers queued warnings (bounded), and stops.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
        (&mut self.task).await.ok();
    }
}

/// The monitor's task: what it reads, what it remembers between checks, where warnings go.
struct Watch {
    ledger: Arc<dyn QuotaLedger>,
    settings: NotifySettings,
    outlets: Outlets,
    failing: bool,
    recheck: Option<Recheck>,
}

/// Where a raised warning goes besides the log and the metrics counter.
struct Outlets {
    notifier: Option<Notifier>,
    sink: Option<WarningSink>,
}

impl Outlets {
    /// Counts and logs a warning (an `info` one at info level), then hands it to the sink and
    /// the webhook.
    fn raise(&self, w: Warning) {
        metrics::counter!(WARNINGS, "event" => w.event).increment(1);
        if w.severity == "info" {
            tracing::info!(event = w.event, "{}", w.message);
        } else {
            tracing::warn!(event = w.event, day = %w.day, "{}", w.message);
        }
        if let Some(f) = &self.sink {
            f(&w);
        }
        if let Some(n) = &self.notifier {
            n.send(w);
        }
    }
}

impl Watch {
    async fn check(&mut self) {
        let st = match self.ledger.status().await {
            Ok(s) => {
                if self.failing {
                    tracing::info!("quota state readable again; monitoring resumed");
                    self.failing = false;
                }
                s
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "cannot read the quota state to monitor it");
                    self.failing = true;
                }
                return;
            }
        };
        gauges(&st);
        self.recheck_disabled(&st).await;
        for p in warnings(&st, &self.settings) {
            match self.ledger.claim_notice(&p.id, p.until_ms).await {
                Ok(true) => {
                    // Lower thresholds crossed in the same step are covered by this warning.
                    for id in &p.covers {
                        self.ledger.claim_notice(id, p.until_ms).await.ok();
                    }
                    self.outlets.raise(p.warning);
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "could not record a warning as sent"),
            }
        }
    }
}
