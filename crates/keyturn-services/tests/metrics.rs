//! The Prometheus exporter, scraped over HTTP after a run against the simulator: requests by key
//! and outcome, quota gauges and key states agree with the simulator's own statistics, and no
//! label carries a key. (Its own test binary: the metrics recorder is process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::{FLASH, KEYS, RPD};

/// `name{labels} value` lines of one metric, as (sorted label pairs, value).
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match head.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

fn sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            filter
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_run_matches_the_simulator() {
    // The exporter binds an address, not a listener we could hand it: a port probed free may be
    // taken before it binds, so another is tried then.
    let addr = (0..8)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            match keyturn_services::install_metrics_exporter(addr) {
                Ok(()) => Some(addr),
                Err(e) if e.to_string().contains("in use") => None,
                Err(e) => panic!("{e}"),
            }
        })
        .expect("another process took each of 8 free ports first");

    let sim = common::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env) = common::config(dir.path(), &sim, "[notify]\ncheck_interval = \"50ms\"\n");
    let services = keyturn_services::create_gemini_services(&cfg, &env, dir.path())
        .await
        .unwrap();
    let ok = common::spend_the_day(&*services.caller).await;
    assert_eq!(ok, 2 * RPD);
    // Shutting down runs the monitor's last check: the gauges hold the run's final state.
    services.state.shutdown().await.unwrap();

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stats = sim.state().stats();
    for k in stats["keys"].as_array().unwrap() {
        let label = k["label"].as_str().unwrap();
        let theirs = k["requests"].as_u64().unwrap() as f64;
        assert_eq!(
            sum(&text, "keyturn_requests_total", &[("key", label)]),
            theirs,
            "requests of {label}\n{text}"
        );
        let ok_theirs = k["by_status"]["200"].as_u64().unwrap_or(0) as f64;
        assert_eq!(
            sum(
                &text,
                "keyturn_requests_total",
                &[("key", label), ("outcome", "ok")]
            ),
            ok_theirs,
            "successes of {label}"
        );
        assert!(
            samples(&text, "keyturn_requests_total")
                .iter()
                .filter(|(l, _)| l["key"] == label)
                .all(|(l, _)| l["fingerprint"] == k["fingerprint"].as_str().unwrap()),
            "labelled by fingerprint too"
        );
    }
    assert_eq!(
        sum(
            &text,
            "keyturn_requests_total",
            &[("key", "gone"), ("outcome", "dead-key")]
        ),
        1.0,
        "one refusal disabled the invalid key"
    );
    for s in stats["scopes"].as_array().unwrap() {
        let (project, model) = (s["project"].as_str().unwrap(), s["model"].as_str().unwrap());
        assert_eq!(
            sum(
                &text,
                "keyturn_quota_used",
                &[("project", project), ("model", model), ("window", "day")]
            ),
            s["day_count"].as_u64().unwrap() as f64,
            "day used in {project}/{model}"
        );
    }
    assert_eq!(
        sum(
            &text,
            "keyturn_quota_limit",
            &[("project", "proj-a"), ("model", FLASH), ("window", "day")]
        ),
        RPD as f64
    );
    assert_eq!(sum(&text, "keyturn_keys", &[("state", "disabled")]), 1.0);
    assert_eq!(sum(&text, "keyturn_keys", &[("state", "exhausted")]), 2.0);
    assert_eq!(sum(&text, "keyturn_keys", &[("state", "usable")]), 0.0);
    let tokens = sum(&text, "keyturn_input_tokens_total", &[("model", FLASH)]);
    assert!(tokens > 0.0, "input tokens counted");
    assert!(sum(&text, "keyturn_output_tokens_total", &[("model", FLASH)]) > 0.0);
    // Histograms per key: one observation per request sent with that key.
    assert_eq!(
        sum(
            &text,
            "keyturn_call_duration_seconds_count",
            &[("key", "alpha")]
        ),
        RPD as f64
    );
    assert!(sum(&text, "keyturn_acquire_wait_seconds_count", &[]) >= (2 * RPD) as f64);
    assert!(text.contains("keyturn_breaker_state{"), "{text}");
    for (k, ..) in KEYS {
        assert!(!text.contains(k), "a key in the metrics");
    }
}
