//! The pool's events: what changed between two looks at the ledger's status, and what the
//! operator did.

use std::collections::{BTreeMap, VecDeque};

use keyturn_core::snapshot::ScopeStatus;
use keyturn_core::{BreakerState, PoolStatus, ScopeState};
use parking_lot::Mutex;
use serde::Serialize;

use super::Console;
use super::EVENTS_KEPT;

/// One thing the proxy saw happen to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Increasing number (`/admin/events?after=` takes the last one seen).
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// `key_disabled`, `key_reenabled`, `breaker_open`, `breaker_closed`, `throttled`,
    /// `exhausted`, `model_off`, `scope_ready`, `admin_reset`, `admin_recheck`, `warning`.
    pub kind: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// The key's label, for key events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Project, for scope events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Model, for scope events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// In words.
    pub message: String,
}

/// The recent events, oldest first, at most [`EVENTS_KEPT`].
#[derive(Debug, Default)]
pub struct Events(Mutex<(u64, VecDeque<Event>)>);

/// An event before it is numbered.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// See [`Event::kind`].
    pub kind: &'static str,
    /// See [`Event::severity`].
    pub severity: &'static str,
    /// See [`Event::key`].
    pub key: Option<String>,
    /// See [`Event::project`].
    pub project: Option<String>,
    /// See [`Event::model`].
    pub model: Option<String>,
    /// See [`Event::message`].
    pub message: String,
}

impl Events {
    /// Records an event, forgetting the oldest past [`EVENTS_KEPT`].
    pub fn push(&self, at_ms: i64, e: NewEvent) {
        let mut g = self.0.lock();
        g.0 += 1;
        let seq = g.0;
        if g.1.len() >= EVENTS_KEPT {
            g.1.pop_front();
        }
        g.1.push_back(Event {
            seq,
            at_ms,
            kind: e.kind,
            severity: e.severity,
            key: e.key,
            project: e.project,
            model: e.model,
            message: e.message,
        });
    }

    /// Events numbered above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        self.0
            .lock()
            .1
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }
}

/// What the last look at the status saw, to tell what changed.
#[derive(Debug, Default)]
pub(super) struct Observed {
    /// Per fingerprint: (state word, since when).
    keys: BTreeMap<String, (&'static str, i64)>,
    /// Per (project, model): state.
    scopes: BTreeMap<(String, String), ScopeState>,
}

/// A key's state in one word, with when it ends if known.
pub(super) fn key_state(
    st: &PoolStatus,
    k: &keyturn_core::snapshot::KeyStatus,
    now: i64,
) -> (&'static str, Option<i64>) {
    if k.disabled.is_some() {
        return ("disabled", None);
    }
    match k.breaker {
        BreakerState::Open { until_ms } => return ("breaker", Some(until_ms)),
        BreakerState::HalfOpen { .. } => return ("breaker", None),
        BreakerState::Closed => {}
    }
    let mine: Vec<&ScopeStatus> = st
        .scopes
        .iter()
        .filter(|s| s.project == k.project)
        .collect();
    if mine.is_empty() || mine.iter().any(|s| s.state == ScopeState::Ready) {
        return ("usable", None);
    }
    let soonest = |f: fn(&ScopeStatus) -> Option<i64>| mine.iter().filter_map(|s| f(s)).min();
    if mine.iter().any(|s| s.state == ScopeState::Cooling) {
        return (
            "cooling",
            soonest(|s| s.cooling_until_ms).filter(|t| *t > now),
        );
    }
    if mine.iter().any(|s| s.state == ScopeState::Exhausted) {
        return ("exhausted", soonest(|s| s.exhausted_until_ms));
    }
    ("off", soonest(|s| s.off_until_ms))
}

/// When a scope can serve again, if it cannot now.
pub(super) fn returns_at(s: &ScopeStatus) -> Option<i64> {
    match s.state {
        ScopeState::Ready => None,
        ScopeState::Cooling => s.cooling_until_ms,
        ScopeState::Exhausted => s.exhausted_until_ms,
        ScopeState::Off => s.off_until_ms,
    }
}

pub(super) fn instant(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// Compares this status with the last one seen, records what changed as events, and returns
/// since when each key (by fingerprint) has been in its state.
pub(super) fn observe(st: &Console, status: &PoolStatus) -> BTreeMap<String, i64> {
    let admin = st;
    let now = status.at_ms;
    let mut seen = admin.observed.lock();
    let mut since = BTreeMap::new();
    for k in &status.keys {
        let fp = k.fingerprint.to_string();
        let (word, until) = key_state(status, k, now);
        let start = k.disabled.map_or(now, |d| d.since_ms);
        let before = seen.keys.get(&fp).copied();
        let kept = match before {
            Some((w, s)) if w == word => s,
            _ => start,
        };
        since.insert(fp.clone(), kept);
        seen.keys.insert(fp.clone(), (word, kept));
        let was = before.map_or("usable", |(w, _)| w);
        if was == word {
            continue;
        }
        let key = Some(k.label.clone());
        let ev = match (was, word) {
            (_, "disabled") => Some(NewEvent {
                kind: "key_disabled",
                severity: "critical",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: format!(
                    "key {} ({fp}) disabled: {}",
                    k.label,
                    k.disabled.map(|d| d.reason.to_string()).unwrap_or_default()
                ),
            }),
            ("disabled", _) => Some(NewEvent {
                kind: "key_reenabled",
                severity: "info",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: format!("key {} ({fp}) is back in the pool", k.label),
            }),
            (_, "breaker") => Some(NewEvent {
                kind: "breaker_open",
                severity: "warning",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: match until {
                    Some(u) => format!(
                        "key {} ({fp}): circuit breaker open after transient failures, until {}",
                        k.label,
                        instant(u)
                    ),
                    None => format!("key {} ({fp}): circuit breaker half-open", k.label),
                },
            }),
            ("breaker", _) => Some(NewEvent {
                kind: "breaker_closed",
                severity: "info",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: format!("key {} ({fp}): circuit breaker closed", k.label),
            }),
            _ => None,
        };
        if let Some(e) = ev {
            admin.events.push(now, e);
        }
    }
    for s in &status.scopes {
        let id = (s.project.clone(), s.model.clone());
        let before = seen.scopes.insert(id, s.state).unwrap_or(ScopeState::Ready);
        if before == s.state {
            continue;
        }
        let at = returns_at(s)
            .map(instant)
            .unwrap_or_else(|| "unknown".into());
        let (kind, severity, message) = match s.state {
            ScopeState::Cooling => (
                "throttled",
                "warning",
                format!(
                    "{} in project {}: per-minute quota reached, cooling until {at}",
                    s.model, s.project
                ),
            ),
            ScopeState::Exhausted => (
                "exhausted",
                "critical",
                format!(
                    "{} in project {}: daily quota used up ({} sent), until {at}",
                    s.model, s.project, s.rpd_used
                ),
            ),
            ScopeState::Off => (
                "model_off",
                "critical",
                s.why_off()
                    .unwrap_or_else(|| format!("{} in project {} is off", s.model, s.project)),
            ),
            ScopeState::Ready if before == ScopeState::Cooling => continue,
            ScopeState::Ready => (
                "scope_ready",
                "info",
                format!("{} in project {} can serve again", s.model, s.project),
            ),
        };
        admin.events.push(
            now,
            NewEvent {
                kind,
                severity,
                key: None,
                project: Some(s.project.clone()),
                model: Some(s.model.clone()),
                message,
            },
        );
    }
    since
}
