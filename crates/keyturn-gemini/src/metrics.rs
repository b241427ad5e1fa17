//! What every call reports through the [`metrics`] facade. Nothing is recorded unless the binary
//! installs a recorder (`--metrics-addr`); without one each call below is a no-op.
//!
//! Keys appear only as their label and fingerprint, never their value.

use std::time::Duration;

use keyturn_core::{KeyEntry, Outcome, ThrottleKind};

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
    let key = entry.label.clone();
    let model = model.to_owned();
    metrics::counter!(
        REQUESTS,
        "key" => key.clone(),
        "fingerprint" => entry.fingerprint().to_string(),
        "model" => model.clone(),
        "outcome" => outcome_label(outcome),
    )
    .increment(1);
    if let Outcome::Success {
        input_tokens: Some(t),
    } = outcome
    {
        metrics::counter!(INPUT_TOKENS, "key" => key.clone(), "model" => model.clone())
            .increment(*t);
    }
    if let Some(t) = output_tokens {
        metrics::counter!(OUTPUT_TOKENS, "key" => key.clone(), "model" => model.clone())
            .increment(t);
    }
    if let Some(d) = took {
        metrics::histogram!(CALL_SECONDS, "key" => key, "model" => model).record(d.as_secs_f64());
    }
}

/// How long the pool made a request wait for the key it granted.
pub fn record_acquire_wait(entry: &KeyEntry, model: &str, waited: Duration) {
    metrics::histogram!(
        ACQUIRE_WAIT_SECONDS,
        "key" => entry.label.clone(),
        "model" => model.to_owned(),
    )
    .record(waited.as_secs_f64());
}

/// A retry and why.
pub fn record_retry(model: &str, reason: &'static str) {
    metrics::counter!(RETRIES, "model" => model.to_owned(), "reason" => reason).increment(1);
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
    fn every_call_reaches_the_current_recorder_with_its_documented_labels() {
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
        // A recorder that arrives later gets the calls from then on (no handle outlives the
        // recorder it came from).
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
}
