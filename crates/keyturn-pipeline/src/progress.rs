//! What the user sees while seeding: an indicatif bar (episodes, chunks, requests/s, keys usable /
//! cooling / exhausted / disabled) on a terminal; plain lines every few seconds otherwise.

#![allow(clippy::print_stderr)] // this module is the binary's UI

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyturn_core::{BreakerState, Clock, PoolStatus, QuotaLedger, ScopeState};
use keyturn_gemini::GeminiCall;

use crate::term::safe;

/// Keys by state, for one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyStates {
    /// Can take a request.
    pub usable: usize,
    /// Waiting for a window, a server cooldown or a breaker.
    pub cooling: usize,
    /// Out for the day (or the model is off for the project).
    pub exhausted: usize,
    /// Dead until reset.
    pub disabled: usize,
}

/// Counts keys by state for `model`.
pub fn key_states(st: &PoolStatus, model: &str) -> KeyStates {
    let mut k = KeyStates::default();
    for key in &st.keys {
        if key.disabled.is_some() {
            k.disabled += 1;
            continue;
        }
        if matches!(key.breaker, BreakerState::Open { .. }) {
            k.cooling += 1;
            continue;
        }
        match st
            .scopes
            .iter()
            .find(|s| s.project == key.project && s.model == model)
            .map(|s| s.state)
        {
            Some(ScopeState::Exhausted | ScopeState::Off) => k.exhausted += 1,
            Some(ScopeState::Cooling) => k.cooling += 1,
            _ => k.usable += 1,
        }
    }
    k
}

/// The progress display.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    tty: bool,
    chunks: Arc<AtomicUsize>,
    ticker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Progress {
    /// A display; `tty` chooses the bar over plain lines.
    pub fn new(tty: bool) -> Self {
        let bar = if tty {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} episodes {pos}/{len} {bar:24} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            tty,
            chunks: Arc::default(),
            ticker: std::sync::Mutex::new(None),
        }
    }

    /// Starts the display for `total` episodes.
    pub fn start(
        &self,
        total: u64,
        ledger: Arc<dyn QuotaLedger>,
        caller: Arc<dyn GeminiCall>,
        clock: Arc<dyn Clock>,
        model: &str,
    ) {
        self.bar.set_length(total);
        let bar = self.bar.clone();
        let chunks = self.chunks.clone();
        let tty = self.tty;
        let model = model.to_owned();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let t0 = clock.now_ms();
            loop {
                tick.tick().await;
                let requests: u64 = caller.stats().iter().map(|k| k.requests).sum();
                let secs = ((clock.now_ms() - t0) as f64 / 1000.0).max(0.001);
                let keys = match ledger.status().await {
                    Ok(st) => {
                        let k = key_states(&st, &model);
                        format!(
                            "keys {} usable, {} cooling, {} exhausted, {} disabled",
                            k.usable, k.cooling, k.exhausted, k.disabled
                        )
                    }
                    Err(e) => format!("keys unknown ({})", safe(&e.to_string())),
                };
                let msg = format!(
                    "chunks {} · {:.1} req/s · {keys}",
                    chunks.load(Ordering::Relaxed),
                    requests as f64 / secs
                );
                if tty {
                    bar.set_message(msg);
                } else {
                    eprintln!(
                        "progress: episodes {}/{} · {msg}",
                        bar.position(),
                        bar.length().unwrap_or(0)
                    );
                }
            }
        });
        if let Ok(mut t) = self.ticker.lock() {
            *t = Some(handle);
        }
    }

    /// Chunks extracted so far.
    pub fn set_chunks(&self, n: usize) {
        self.chunks.store(n, Ordering::Relaxed);
    }

    /// One more episode out of the queue: `what` says how it ended (`done`, `skipped`,
    /// `failed`); the title came from a file name and is escaped.
    pub fn episode(&self, what: &str, title: &str) {
        self.bar.inc(1);
        if !self.tty {
            eprintln!("episode {what}: {}", safe(title));
        }
    }

    /// A line above the bar. Notes quote paths and upstream messages: the whole line is
    /// escaped, so nothing in it can reach the terminal as a control sequence or a second line.
    pub fn note(&self, msg: &str) {
        let msg = safe(msg);
        if self.tty {
            self.bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    /// Stops the display.
    pub fn finish(&self) {
        if let Ok(mut t) = self.ticker.lock()
            && let Some(h) = t.take()
        {
            h.abort();
        }
        self.bar.finish_and_clear();
    }
}
