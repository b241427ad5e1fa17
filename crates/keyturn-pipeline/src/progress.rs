//! What the user sees while seeding: an indicatif bar (episodes, chunks, requests/s, keys usable /
//! cooling / exhausted / disabled, and an ETA from `keyturn plan`'s planner that knows about
//! quota days) on a terminal; plain lines every few seconds otherwise.

#![allow(clippy::print_stderr)] // this module is the binary's UI

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyturn_core::plan::{Plan, Work, plan};
use keyturn_core::{BreakerState, Clock, LimitTable, PoolStatus, QuotaLedger, ScopeState};
use keyturn_gemini::GeminiCall;
use keyturn_store::runs::{BatchView, RunBoard, RunRecord};

use crate::term::safe;

/// How often a run refreshes its record for `keyturn status`.
const ANNOUNCE_EVERY_MS: i64 = 5_000;

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

fn pacific_time(ms: i64, format: &str) -> String {
    let ts = keyturn_core::clock::ms_to_timestamp(ms);
    jiff::tz::db()
        .get(keyturn_core::pacific::QUOTA_TIME_ZONE)
        .map(|tz| ts.to_zoned_datetime(tz).strftime(format).to_string())
        .unwrap_or_else(|_| ts.to_string())
}

/// The ETA a plan gives, in Pacific time, saying when the run will pause for the day: "done
/// ~15:10 PT", or "pauses at ~14:20 PT, resumes 00:00 PT, done ~Thu 03:10 PT".
pub fn eta(p: &Plan) -> String {
    if let Some(why) = p.models.iter().find_map(|m| m.blocked.as_deref()) {
        return format!("ETA: cannot finish ({why})");
    }
    let Some(finish) = p.finish_ms else {
        return "ETA: unknown".into();
    };
    let last = p
        .models
        .iter()
        .filter(|m| m.finish_ms == Some(finish))
        .max_by_key(|m| m.pauses.len());
    let today = keyturn_core::QuotaDay::containing(p.at_ms);
    let done = if !today.contains(finish) {
        pacific_time(finish, "%a %H:%M PT")
    } else {
        pacific_time(finish, "%H:%M PT")
    };
    match last.and_then(|m| m.pauses.first()) {
        Some(pause) if pause.from_ms <= p.at_ms => format!(
            "ETA: out of quota for today, resumes {}, done ~{done}",
            pacific_time(pause.until_ms, "%H:%M PT")
        ),
        Some(pause) => {
            let more = match p.days {
                0..=2 => String::new(),
                d => format!(" ({d} Pacific days)"),
            };
            format!(
                "ETA: pauses at ~{}, resumes {}, done ~{done}{more}",
                pacific_time(pause.from_ms, "%H:%M PT"),
                pacific_time(pause.until_ms, "%H:%M PT")
            )
        }
        None => format!("ETA: done ~{done}"),
    }
}

/// What is left of the run's work: extraction requests less the chunks done, embeddings in
/// proportion to the episodes left; input tokens per request from today's real counts of each
/// model where the ledger has them, else the estimate.
pub fn remaining(
    work: &[Work],
    chunks_done: u64,
    episodes_left: u64,
    episodes: u64,
    st: &PoolStatus,
) -> Vec<Work> {
    work.iter()
        .enumerate()
        .map(|(i, w)| {
            let requests = if i == 0 {
                w.requests.saturating_sub(chunks_done)
            } else {
                (w.requests * episodes_left)
                    .checked_div(episodes)
                    .unwrap_or(0)
            };
            let (sent, tokens) = st
                .scopes
                .iter()
                .filter(|s| s.model == w.model)
                .fold((0, 0), |(r, t), s| (r + s.rpd_used, t + s.tpd_used));
            let per = if sent > 0 && tokens > 0 {
                tokens as f64 / sent as f64
            } else if w.requests > 0 {
                w.input_tokens as f64 / w.requests as f64
            } else {
                0.0
            };
            Work {
                model: w.model.clone(),
                requests,
                input_tokens: (per * requests as f64).round() as u64,
                output_tokens: 0,
            }
        })
        .collect()
}

/// The progress display.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    tty: bool,
    chunks: Arc<AtomicUsize>,
    work: Arc<std::sync::Mutex<Vec<Work>>>,
    ticker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the run announces itself to `keyturn status`, and the record it keeps there.
    board: std::sync::Mutex<Option<(RunBoard, RunRecord)>>,
    /// A batch run's jobs, as last told ([`Progress::batch`]).
    jobs: Arc<std::sync::Mutex<Option<BatchView>>>,
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
            work: Arc::default(),
            ticker: std::sync::Mutex::new(None),
            board: std::sync::Mutex::new(None),
            jobs: Arc::default(),
        }
    }

    /// Has the run keep a record on `board` while it runs (refreshed every few seconds with
    /// the work it has left, removed at [`Progress::finish`]), so `keyturn status` can show it
    /// with an ETA. `out` is the output folder it names. Call before [`Progress::start`].
    pub fn announce(&self, board: RunBoard, out: std::path::PathBuf) {
        let record = RunRecord {
            pid: std::process::id(),
            out,
            started_ms: 0,
            updated_ms: 0,
            episodes_done: 0,
            episodes_total: 0,
            left: Vec::new(),
            batch: None,
        };
        if let Ok(mut b) = self.board.lock() {
            *b = Some((board, record));
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
        let work = self.work.clone();
        let jobs = self.jobs.clone();
        let tty = self.tty;
        let model = model.to_owned();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        let t0 = clock.now_ms();
        let mut board = self.board.lock().ok().and_then(|mut b| {
            let (board, record) = b.as_mut()?;
            record.started_ms = t0;
            record.episodes_total = total;
            Some((board.clone(), record.clone()))
        });
        let mut announced: Option<i64> = None;
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let requests: u64 = caller.stats().iter().map(|k| k.requests).sum();
                let secs = ((clock.now_ms() - t0) as f64 / 1000.0).max(0.001);
                let keys = match ledger.status().await {
                    Ok(st) => {
                        let k = key_states(&st, &model);
                        let mut line = format!(
                            "keys {} usable, {} cooling, {} exhausted, {} disabled",
                            k.usable, k.cooling, k.exhausted, k.disabled
                        );
                        let work = work.lock().map(|w| w.clone()).unwrap_or_default();
                        if !work.is_empty() {
                            let total = bar.length().unwrap_or(0);
                            let left = remaining(
                                &work,
                                chunks.load(Ordering::Relaxed) as u64,
                                total.saturating_sub(bar.position()),
                                total,
                                &st,
                            );
                            let now = clock.now_ms();
                            if let Some((board, record)) = board.as_mut()
                                && announced.is_none_or(|at| now - at >= ANNOUNCE_EVERY_MS)
                            {
                                announced = Some(now);
                                record.updated_ms = now;
                                record.episodes_done = bar.position();
                                record.left = left.clone();
                                record.batch = jobs.lock().ok().and_then(|j| j.clone());
                                let (board, record) = (board.clone(), record.clone());
                                // A lost record only hides the run from `keyturn status`.
                                tokio::task::spawn_blocking(move || board.publish(&record));
                            }
                            // A model's scopes, with its configured limits, are in the status
                            // once the run has sent to it: the ETA counts the models seen so far.
                            let left: Vec<Work> = left
                                .into_iter()
                                .filter(|w| st.scopes.iter().any(|s| s.model == w.model))
                                .collect();
                            line.push_str(" · ");
                            if left.is_empty() {
                                line.push_str("ETA: after the first requests");
                            } else {
                                let models: Vec<&str> =
                                    left.iter().map(|w| w.model.as_str()).collect();
                                let caps = crate::plan::capacity(
                                    &models,
                                    &ledger.keys(),
                                    &LimitTable::builtin(),
                                    Some(&st),
                                );
                                line.push_str(&eta(&plan(&left, &caps, clock.now_ms())));
                            }
                        }
                        line
                    }
                    Err(e) => format!("keys unknown ({})", safe(&e.to_string())),
                };
                let batch = jobs
                    .lock()
                    .ok()
                    .and_then(|j| j.as_ref().map(jobs_segment))
                    .unwrap_or_default();
                let msg = format!(
                    "chunks {}{batch} · {:.1} req/s · {keys}",
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

    /// The work the run has ahead of it ([`crate::plan::work_of`] its pending episodes), for
    /// the ETA.
    pub fn expect(&self, work: Vec<Work>) {
        if let Ok(mut w) = self.work.lock() {
            *w = work;
        }
    }

    /// A batch run's jobs now: shown in the progress line and in the run's record for
    /// `keyturn status`, and kept as the last batch run's record when the run ends.
    pub fn batch(&self, view: BatchView) {
        if let Ok(mut j) = self.jobs.lock() {
            *j = Some(view);
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

    /// Stops the display and removes the run's record.
    pub fn finish(&self) {
        if let Ok(mut t) = self.ticker.lock()
            && let Some(h) = t.take()
        {
            h.abort();
        }
        self.bar.finish_and_clear();
        if let Ok(mut b) = self.board.lock()
            && let Some((board, mut record)) = b.take()
        {
            if let Err(e) = board.remove(&record) {
                tracing::debug!(error = %e, "could not remove the run's record");
            }
            record.batch = self.jobs.lock().ok().and_then(|j| j.clone());
            if let Some(view) = &record.batch {
                record.updated_ms = view.at_ms;
                record.episodes_done = self.bar.position();
                record.episodes_total = self.bar.length().unwrap_or(0);
                record.left = Vec::new();
                if let Err(e) = board.keep_last_batch(&record) {
                    tracing::debug!(error = %e, "could not keep the batch run's record");
                }
            }
        }
    }
}

/// The progress line's jobs segment: ` · jobs running 2, succeeded 5 · items 40/120`.
pub fn jobs_segment(view: &BatchView) -> String {
    let mut by: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for states in view.jobs.values() {
        for (state, n) in states {
            *by.entry(state.as_str()).or_default() += n;
        }
    }
    let jobs: Vec<String> = by.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!(
        " · jobs {} · items {}/{}",
        if jobs.is_empty() {
            "none".to_owned()
        } else {
            jobs.join(", ")
        },
        view.items_done,
        view.items_total
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_core::ModelLimits;
    use keyturn_core::plan::Capacity;

    #[test]
    fn the_jobs_segment_sums_states_over_projects_and_counts_items() {
        let mut view = BatchView {
            items_done: 12,
            items_total: 40,
            ..BatchView::default()
        };
        assert_eq!(jobs_segment(&view), " · jobs none · items 12/40");
        for (p, st, n) in [
            ("a", "running", 2),
            ("a", "succeeded", 1),
            ("b", "running", 1),
        ] {
            view.jobs.entry(p.into()).or_default().insert(st.into(), n);
        }
        assert_eq!(
            jobs_segment(&view),
            " · jobs running 3, succeeded 1 · items 12/40"
        );
    }

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn cap(rpd: u64) -> Capacity {
        Capacity {
            project: "p".into(),
            model: "m".into(),
            limits: ModelLimits::new(10, 1_000_000, rpd),
            tier: keyturn_core::Tier::Free,
            rpd_used: 0,
            tpd_used: 0,
            off: false,
            exhausted_today: false,
        }
    }

    fn work(requests: u64) -> Work {
        Work {
            model: "m".into(),
            requests,
            input_tokens: requests * 100,
            output_tokens: 0,
        }
    }

    #[test]
    fn the_eta_says_when_a_run_pauses_for_the_day_and_when_it_is_done() {
        // 14:00 PT on Tuesday 2026-12-01.
        let now = ms("2026-12-01T22:00:00Z");
        // 20 minutes at 10 a minute.
        assert_eq!(
            eta(&plan(&[work(200)], &[cap(1_000)], now)),
            "ETA: done ~14:20 PT"
        );
        // Today's 200 in 20 minutes, then midnight, then 10 minutes more.
        assert_eq!(
            eta(&plan(&[work(300)], &[cap(200)], now)),
            "ETA: pauses at ~14:20 PT, resumes 00:00 PT, done ~Wed 00:10 PT"
        );
        // Two more days: said so.
        assert_eq!(
            eta(&plan(&[work(500)], &[cap(200)], now)),
            "ETA: pauses at ~14:20 PT, resumes 00:00 PT, done ~Thu 00:10 PT (3 Pacific days)"
        );
        // Today already spent.
        let mut spent = cap(200);
        spent.rpd_used = 200;
        assert_eq!(
            eta(&plan(&[work(100)], &[spent], now)),
            "ETA: out of quota for today, resumes 00:00 PT, done ~Wed 00:10 PT"
        );
        let mut off = cap(200);
        off.off = true;
        assert!(eta(&plan(&[work(5)], &[off], now)).starts_with("ETA: cannot finish"));
    }

    #[test]
    fn what_remains_follows_the_run_and_its_real_token_counts() {
        let st = PoolStatus {
            at_ms: 0,
            keys: Vec::new(),
            scopes: Vec::new(),
        };
        let w = [
            work(100),
            Work {
                model: "e".into(),
                ..work(400)
            },
        ];
        let left = remaining(&w, 40, 3, 4, &st);
        assert_eq!(left[0].requests, 60);
        assert_eq!(left[0].input_tokens, 6_000);
        assert_eq!(left[1].requests, 300);
    }
}
