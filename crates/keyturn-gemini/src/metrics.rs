//! What every call reports through the [`metrics`] facade. Nothing is recorded unless the binary
//! installs a recorder (`--metrics-addr`); without one each call below is a no-op.
//!
//! Keys appear only as their label and fingerprint, never their value.

use std::time::Duration;

use keyturn_core::{KeyEntry, Outcome, ThrottleKind};

mod labels;

/// Requests sent, by `key`, `fingerprint`, `model` and `outcome` (see [`outcome_label`]).
pub const REQUESTS: &str = "keyturn_requests_total";
/// Input tokens Gemini counted on successes, by `key` and `model`.
pub const INPUT_TOKENS: &str = "keyturn_input_tokens_total";
/// Output tokens (candidates and thoughts) Gemini counted, by `key` and `model`.
pub const OUTPUT_TOKENS: &str = "keyturn_output_tokens_total";
/// Seconds from sending a request to its answer, by `key` and `model`.
pub const CALL_SECONDS: &str = "keyturn_call_duration_seconds";
/// Seconds spent waiting for the pool to grant a key, by `key` (the one granted) and `model`.
pub const ACQUIRE_WAIT_SECONDS: &str = "keyturn_acquire_wait_seconds";
/// Retries, by `model` and `reason` (the error kind that caused them).
pub const RETRIES: &str = "keyturn_retries_total";

/// The `outcome` label of a settled request.
pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Success { .. } => "ok",
        Outcome::Throttled { kind, .. } => match kind {
            ThrottleKind::RequestsPerMinute => "throttled-per-minute",
            ThrottleKind::TokensPerMinute => "throttled-tokens",
            ThrottleKind::RequestsPerDay => "throttled-per-day",
            ThrottleKind::TokensPerDay => "throttled-tokens-per-day",
            ThrottleKind::Unspecified => "throttled",
        },
        Outcome::ModelUnavailable => "limit-0",
        Outcome::ProjectOff => "project-off",
        Outcome::KeyDead(_) => "dead-key",
        Outcome::ProjectDead(_) => "dead-project",
        Outcome::Transient => "transient",
        Outcome::CallerFault => "caller-fault",
    }
}

/// One request's end: its outcome, its tokens, how long it took.
pub fn record_request(
    entry: &KeyEntry,
    model: &str,
    outcome: &Outcome,
    output_tokens: Option<u64>,
    took: Option<Duration>,
) {
    let key = entry.label.as_str();
    let fingerprint = FingerprintText::of(entry);
    let fingerprint = fingerprint.as_str();
    let outcome_label = outcome_label(outcome);
    labels::with_key(
        REQUESTS,
        &[
            ("key", key),
            ("fingerprint", fingerprint),
            ("model", model),
            ("outcome", outcome_label),
        ],
        |k| counter(k).increment(1),
    );
    if let Outcome::Success {
        input_tokens: Some(t),
    } = outcome
    {
        labels::with_key(INPUT_TOKENS, &[("key", key), ("model", model)], |k| {
            counter(k).increment(*t);
        });
    }
    if let Some(t) = output_tokens {
        labels::with_key(OUTPUT_TOKENS, &[("key", key), ("model", model)], |k| {
            counter(k).increment(t);
        });
    }
    if let Some(d) = took {
        labels::with_key(CALL_SECONDS, &[("key", key), ("model", model)], |k| {
            histogram(k).record(d.as_secs_f64());
        });
    }
}

/// How long the pool made a request wait for the key it granted.
pub fn record_acquire_wait(entry: &KeyEntry, model: &str, waited: Duration) {
    labels::with_key(
        ACQUIRE_WAIT_SECONDS,
        &[("key", entry.label.as_str()), ("model", model)],
        |k| histogram(k).record(waited.as_secs_f64()),
    );
}

/// A retry and why.
pub fn record_retry(model: &str, reason: &'static str) {
    labels::with_key(RETRIES, &[("model", model), ("reason", reason)], |k| {
        counter(k).increment(1);
    });
}

/// What the `metrics` macros would say of where a metric comes from.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The counter `key` names, from whichever recorder is current (a no-op without one).
fn counter(key: &metrics::Key) -> metrics::Counter {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

/// The histogram `key` names, from whichever recorder is current.
fn histogram(key: &metrics::Key) -> metrics::Histogram {
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

/// A key's fingerprint as its label reads (8 hex digits), written on the stack.
struct FingerprintText([u8; 8]);

impl FingerprintText {
    fn of(entry: &KeyEntry) -> Self {
        use std::fmt::Write;
        struct Buf([u8; 8], usize);
        impl Write for Buf {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let end = self.1 + s.len();
                self.0
                    .get_mut(self.1..end)
                    .ok_or(std::fmt::Error)?
                    .copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut buf = Buf([b'0'; 8], 0);
        // Eight hex digits always fit; should it ever be longer, the label is cut, not wrong.
        let _ = write!(buf, "{}", entry.fingerprint());
        Self(buf.0)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }
}

/// Measures a duration for the metrics (call latency, acquire wait) only: no decision reads it,
/// so it may use the monotonic clock directly instead of the injectable [`keyturn_core::Clock`].
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts now.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use keyturn_core::ApiKey;
    use metrics::{Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Recorder};
    use metrics::{Metadata, SharedString, Unit};
    use parking_lot::Mutex;

    use super::*;

    /// A metric as a recorder sees it: its name and its labels in order.
    type Seen = (String, Vec<(String, String)>);

    /// Sums what each metric (by name and labels) was given.
    #[derive(Default)]
    struct Totals(Arc<Mutex<BTreeMap<Seen, f64>>>);

    struct Sink(Arc<Mutex<BTreeMap<Seen, f64>>>, Seen);

    impl CounterFn for Sink {
        fn increment(&self, value: u64) {
            *self.0.lock().entry(self.1.clone()).or_default() += value as f64;
        }
        fn absolute(&self, _: u64) {}
    }

    impl HistogramFn for Sink {
        fn record(&self, value: f64) {
            *self.0.lock().entry(self.1.clone()).or_default() += value;
        }
    }

    fn seen(key: &Key) -> Seen {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        (key.name().to_owned(), labels)
    }

    impl Recorder for Totals {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Sink(self.0.clone(), seen(key))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Sink(self.0.clone(), seen(key))))
        }
    }

    fn entry(label: &str) -> KeyEntry {
        let key = ApiKey::new(format!("made-up-metrics-{label}")).unwrap();
        KeyEntry {
            label: label.to_owned(),
            project: format!("key:{}", key.fingerprint()),
            key,
            weight: 1,
        }
    }

    fn labeled(name: &str, labels: &[(&str, &str)]) -> Seen {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        (name.to_owned(), labels)
    }

    #[test]
    fn every_call_reaches_the_current_recorder_with_the_labels_it_always_had() {
        let e = entry("metrics-a");
        let fp = e.fingerprint().to_string();
        let model = "metrics-test-model-a";
        let ok = Outcome::Success {
            input_tokens: Some(7),
        };
        let record = || {
            record_request(&e, model, &ok, Some(3), Some(Duration::from_millis(500)));
            record_acquire_wait(&e, model, Duration::from_millis(250));
            record_retry(model, "throttled");
        };
        let first = Totals::default();
        metrics::with_local_recorder(&first, || {
            record();
            record();
        });
        let expected = BTreeMap::from([
            (
                labeled(
                    REQUESTS,
                    &[
                        ("key", "metrics-a"),
                        ("fingerprint", &fp),
                        ("model", model),
                        ("outcome", "ok"),
                    ],
                ),
                2.0,
            ),
            (
                labeled(INPUT_TOKENS, &[("key", "metrics-a"), ("model", model)]),
                14.0,
            ),
            (
                labeled(OUTPUT_TOKENS, &[("key", "metrics-a"), ("model", model)]),
                6.0,
            ),
            (
                labeled(CALL_SECONDS, &[("key", "metrics-a"), ("model", model)]),
                1.0,
            ),
            (
                labeled(
                    ACQUIRE_WAIT_SECONDS,
                    &[("key", "metrics-a"), ("model", model)],
                ),
                0.5,
            ),
            (
                labeled(RETRIES, &[("model", model), ("reason", "throttled")]),
                2.0,
            ),
        ]);
        assert_eq!(*first.0.lock(), expected);
        // A recorder that arrives later gets the calls from then on: what is kept is the labels,
        // never a handle from the recorder that was current when they were first built.
        let second = Totals::default();
        metrics::with_local_recorder(&second, record);
        assert_eq!(
            second.0.lock()[&labeled(RETRIES, &[("model", model), ("reason", "throttled")])],
            1.0
        );
        assert_eq!(
            first.0.lock()[&labeled(RETRIES, &[("model", model), ("reason", "throttled")])],
            2.0
        );
    }

    #[test]
    fn models_from_requests_cannot_grow_the_kept_labels_without_bound() {
        let totals = Totals::default();
        let models: Vec<String> = (0..labels::MAX_KEPT + 50)
            .map(|i| format!("metrics-test-flood-{i}"))
            .collect();
        metrics::with_local_recorder(&totals, || {
            for m in &models {
                record_retry(m, "transient");
            }
        });
        assert!(
            labels::kept() <= labels::MAX_KEPT,
            "{} kept",
            labels::kept()
        );
        // Past the bound, calls still count, with their own labels.
        let last = models.last().unwrap();
        assert_eq!(
            totals.0.lock()[&labeled(RETRIES, &[("model", last), ("reason", "transient")])],
            1.0
        );
        assert_eq!(totals.0.lock().len(), models.len());
    }
}
