//! Which warnings a pool's status calls for, each with the mark that makes it fire once a
//! Pacific day: a scope's daily quota crossing a threshold, a key disabled, a project switched
//! off, every key out for a model.

use std::collections::BTreeMap;

use keyturn_core::snapshot::{KeyStatus, ScopeStatus};
use keyturn_core::{PoolStatus, QuotaDay, ScopeState};

use crate::config::NotifySettings;
use crate::notify::{PAYLOAD_VERSION, Warning};

fn rfc3339(ms: i64) -> String {
    keyturn_core::clock::ms_to_timestamp(ms).to_string()
}

/// A warning of `event` at `at_ms`, stamped with its Pacific day; the caller fills in what it is
/// about.
pub(crate) fn warning(event: &'static str, critical: bool, at_ms: i64, message: String) -> Warning {
    Warning {
        source: "keyturn",
        version: PAYLOAD_VERSION,
        event,
        severity: if critical { "critical" } else { "warning" },
        at: rfc3339(at_ms),
        day: QuotaDay::containing(at_ms).date.to_string(),
        project: None,
        model: None,
        metric: None,
        threshold_pct: None,
        used: None,
        served: None,
        refused: None,
        limit: None,
        key: None,
        fingerprint: None,
        reason: None,
        until: None,
        message,
    }
}

/// A warning the status calls for, with the mark that makes it fire once a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The mark (`quota-80|project|model|date`, `disabled|fp|date`, `exhausted|model|date`).
    pub id: String,
    /// Marks this warning makes unnecessary: lower thresholds crossed at the same time (a
    /// minute's burst can take a scope from 70 % to 100 % between two checks: one warning, the
    /// highest, not two).
    pub covers: Vec<String>,
    /// How long the marks last: the end of the Pacific day.
    pub until_ms: i64,
    /// The warning.
    pub warning: Warning,
}

impl Pending {
    /// A warning that covers no other, marked `id` until the end of `today`.
    fn once(id: String, today: &QuotaDay, warning: Warning) -> Self {
        Self {
            id,
            covers: Vec::new(),
            until_ms: today.end_ms,
            warning,
        }
    }
}

/// One daily limit of a scope and its use.
struct DayUse {
    /// `requests` or `input_tokens`.
    metric: &'static str,
    used: u64,
    limit: Option<u64>,
    /// Gemini said the day is over for the scope (a per-day 429): that is 100 %.
    server_says_done: bool,
}

/// The highest threshold `u` has crossed today, as one warning covering the lower ones.
fn threshold_warning(
    sc: &keyturn_core::snapshot::ScopeStatus,
    u: &DayUse,
    thresholds: &[u8],
    now: i64,
    today: &QuotaDay,
) -> Option<Pending> {
    let limit = u.limit.filter(|l| *l > 0)?;
    let crossed: Vec<u8> = thresholds
        .iter()
        .copied()
        .filter(|&t| {
            // In u128: counts read back from a shared ledger can be anything.
            u128::from(u.used) * 100 >= u128::from(t) * u128::from(limit)
                || (u.server_says_done && t == 100)
        })
        .collect();
    let (&t, lower) = crossed.split_last()?;
    let day = today.date;
    // Request marks keep the form they always had, so a restart does not warn again.
    let id = |t: u8| match u.metric {
        "requests" => format!("quota-{t}|{}|{}|{day}", sc.project, sc.model),
        m => format!("quota-{m}-{t}|{}|{}|{day}", sc.project, sc.model),
    };
    let pct = (u128::from(u.used) * 100 / u128::from(limit))
        .min(100)
        .max(u128::from(u.server_says_done) * 100);
    let what = match u.metric {
        "requests" => format!(
            "daily requests ({}/{limit} sent: {} served, {} refused by Gemini)",
            u.used, sc.rpd_served, sc.rpd_refused
        ),
        _ => format!("daily input tokens ({}/{limit})", u.used),
    };
    let mut w = warning(
        "quota_threshold",
        t >= 100,
        now,
        format!(
            "{} in project {} has used {pct}% of its {what}; resets {}",
            sc.model,
            sc.project,
            rfc3339(sc.next_reset_ms),
        ),
    );
    w.project = Some(sc.project.clone());
    w.model = Some(sc.model.clone());
    w.metric = Some(u.metric);
    w.threshold_pct = Some(t);
    w.used = Some(u.used);
    if u.metric == "requests" {
        w.served = Some(sc.rpd_served);
        w.refused = Some(sc.rpd_refused);
    }
    w.limit = Some(limit);
    w.until = Some(rfc3339(sc.next_reset_ms));
    Some(Pending {
        id: id(t),
        covers: lower.iter().map(|&l| id(l)).collect(),
        until_ms: today.end_ms,
        warning: w,
    })
}

/// The warnings this status calls for.
pub fn warnings(st: &PoolStatus, s: &NotifySettings) -> Vec<Pending> {
    let now = st.at_ms;
    let today = QuotaDay::containing(now);
    let day = today.date.to_string();
    let mut out: Vec<Pending> = Vec::new();
    let mut thresholds = s.thresholds.clone();
    thresholds.sort_unstable();
    thresholds.dedup();
    for sc in &st.scopes {
        // A per-day 429 from the server ends the day whatever our count says.
        let server_says_done = sc.state == ScopeState::Exhausted;
        let requests = DayUse {
            metric: "requests",
            used: sc.rpd_used,
            limit: sc.limits.rpd,
            server_says_done,
        };
        // Which daily limit a per-day 429 was about is not known: it counts for requests.
        let tokens = DayUse {
            metric: "input_tokens",
            used: sc.tpd_used,
            limit: sc.limits.tpd,
            server_says_done: false,
        };
        for u in [requests, tokens] {
            out.extend(threshold_warning(sc, &u, &thresholds, now, &today));
        }
    }
    if s.key_disabled {
        for k in &st.keys {
            // The operator's own disable warns nobody: they did it (the console records it).
            if let Some(d) = k.disabled.filter(|d| !d.reason.is_admin()) {
                let mut w = warning(
                    "key_disabled",
                    true,
                    now,
                    format!(
                        "key {} ({}) is disabled: {}; it stays out until `keyturn keys reset {}`",
                        k.label, k.fingerprint, d.reason, k.label
                    ),
                );
                w.project = Some(k.project.clone());
                w.key = Some(k.label.clone());
                w.fingerprint = Some(k.fingerprint.to_string());
                w.reason = Some(d.reason.to_string());
                out.push(Pending::once(
                    format!("disabled|{}|{day}", k.fingerprint),
                    &today,
                    w,
                ));
            }
        }
    }
    if s.project_off {
        let mut seen = std::collections::BTreeSet::new();
        for sc in st.scopes.iter().filter(|sc| sc.project_off) {
            if !seen.insert(sc.project.clone()) {
                continue;
            }
            let mut w = warning(
                "project_off",
                true,
                now,
                format!(
                    "project {} is switched off for every model: it is out of prepayment credits (402) or has no quota at all; other projects carry on{}",
                    sc.project,
                    sc.off_until_ms
                        .map(|u| format!("; one request re-probes it from {}", rfc3339(u)))
                        .unwrap_or_default()
                ),
            );
            w.project = Some(sc.project.clone());
            w.until = sc.off_until_ms.map(rfc3339);
            out.push(Pending::once(
                format!("project-off|{}|{day}", sc.project),
                &today,
                w,
            ));
        }
    }
    if s.all_exhausted {
        for (model, until) in exhausted_models(st) {
            let mut w = warning(
                "model_exhausted",
                true,
                now,
                match until {
                    Some(u) => format!(
                        "every key is out of quota for {model}; capacity returns {}",
                        rfc3339(u)
                    ),
                    None => format!("every key is disabled or switched off for {model}"),
                },
            );
            w.model = Some(model.clone());
            w.until = until.map(rfc3339);
            out.push(Pending::once(format!("exhausted|{model}|{day}"), &today, w));
        }
    }
    out
}

/// Models for which no key can serve today: every key disabled, or its scope exhausted or off.
/// With when the earliest scope's day ends, if any is merely exhausted.
fn exhausted_models(st: &PoolStatus) -> Vec<(String, Option<i64>)> {
    let mut by_model: BTreeMap<&str, Vec<&ScopeStatus>> = BTreeMap::new();
    for sc in &st.scopes {
        by_model.entry(&sc.model).or_default().push(sc);
    }
    let mut out = Vec::new();
    for (model, scopes) in by_model {
        let mut until: Option<i64> = None;
        let all_out = st.keys.iter().all(|k: &KeyStatus| {
            if k.disabled.is_some() {
                return true;
            }
            match scopes.iter().find(|s| s.project == k.project) {
                Some(s) if s.state == ScopeState::Exhausted => {
                    let u = s.exhausted_until_ms.unwrap_or(s.next_reset_ms);
                    until = Some(until.map_or(u, |x: i64| x.min(u)));
                    true
                }
                Some(s) => s.state == ScopeState::Off,
                None => false,
            }
        });
        if all_out && !st.keys.is_empty() {
            out.push((model.to_owned(), until));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use keyturn_core::snapshot::Disabled;
    use keyturn_core::{ApiKey, BreakerState, DeadReason, LimitSource, ModelLimits};

    use super::*;

    const NOW: i64 = 1_768_420_800_000; // 2026-01-14 12:00 PST

    fn scope(project: &str, used: u64, rpd: u64, state: ScopeState) -> ScopeStatus {
        ScopeStatus {
            project: project.into(),
            model: "m".into(),
            keys: vec![],
            limits: ModelLimits {
                rpm: Some(10),
                tpm: None,
                rpd: Some(rpd),
                tpd: None,
            },
            source: LimitSource::Configured,
            tier: Default::default(),
            table_date: None,
            origin: Default::default(),
            learned: ModelLimits::UNLIMITED,
            rpm_used: 0,
            tpm_used: 0,
            rpd_used: used,
            rpd_served: used,
            rpd_refused: 0,
            tpd_used: 0,
            state,
            cooling_until_ms: None,
            exhausted_until_ms: (state == ScopeState::Exhausted).then_some(NOW + 1000),
            next_reset_ms: NOW + 1000,
            off_until_ms: None,
            project_off: false,
            learned_until_ms: None,
        }
    }

    fn key(label: &str, project: &str, disabled: bool) -> KeyStatus {
        KeyStatus {
            label: label.into(),
            fingerprint: ApiKey::new(format!("made-up-{label}"))
                .unwrap()
                .fingerprint(),
            project: project.into(),
            disabled: disabled.then_some(Disabled {
                reason: DeadReason::Expired,
                since_ms: NOW,
            }),
            breaker: BreakerState::Closed,
            failures: 0,
        }
    }

    fn ids(st: &PoolStatus) -> Vec<String> {
        let mut v: Vec<String> = warnings(st, &NotifySettings::default())
            .into_iter()
            .map(|p| {
                assert_eq!(p.until_ms, QuotaDay::containing(NOW).end_ms);
                p.id
            })
            .collect();
        v.sort();
        v
    }

    /// A pool of one key, `a` of project `p`, over `scope`.
    fn one_key(scope: ScopeStatus) -> PoolStatus {
        PoolStatus {
            at_ms: NOW,
            keys: vec![key("a", "p", false)],
            scopes: vec![scope],
        }
    }

    /// The 100 % warning the status calls for.
    fn quota_100(st: &PoolStatus) -> Warning {
        warnings(st, &NotifySettings::default())
            .into_iter()
            .find(|p| p.id.starts_with("quota-100"))
            .unwrap()
            .warning
    }

    #[test]
    fn thresholds_fire_by_count_and_a_server_per_day_429_counts_as_100() {
        let st = PoolStatus {
            at_ms: NOW,
            keys: vec![
                key("a", "p", false),
                key("b", "q", false),
                key("c", "r", false),
                key("d", "s", false),
            ],
            scopes: vec![
                scope("p", 79, 100, ScopeState::Ready),
                scope("q", 80, 100, ScopeState::Ready),
                // 70 % → 100 % in one step: one warning, the highest, covering 80.
                scope("s", 100, 100, ScopeState::Exhausted),
                // Gemini said the day is over at 12/100: that is 100 % (not a stale 80 %).
                scope("r", 12, 100, ScopeState::Exhausted),
            ],
        };
        assert_eq!(
            ids(&st),
            [
                "quota-100|r|m|2026-01-14",
                "quota-100|s|m|2026-01-14",
                "quota-80|q|m|2026-01-14",
            ]
        );
    }

    #[test]
    fn absurd_counts_and_limits_make_a_warning_not_an_overflow() {
        // A count a garbage Redis hash gave, and a limit configured as large as TOML allows.
        for (used, limit) in [(u64::MAX / 50, 20), (i64::MAX as u64, i64::MAX as u64)] {
            let st = one_key(scope("p", used, limit, ScopeState::Ready));
            let q = quota_100(&st);
            assert!(q.message.contains("has used 100%"), "{}", q.message);
        }
    }

    #[test]
    fn a_quota_warning_keeps_sent_served_and_refused_apart() {
        let mut sc = scope("p", 22, 20, ScopeState::Exhausted);
        sc.rpd_served = 20;
        sc.rpd_refused = 2;
        let st = one_key(sc);
        let q = quota_100(&st);
        assert_eq!((q.used, q.served, q.refused), (Some(22), Some(20), Some(2)));
        assert!(
            q.message
                .contains("(22/20 sent: 20 served, 2 refused by Gemini)"),
            "{}",
            q.message
        );
        let body = serde_json::to_value(q).unwrap();
        assert_eq!(body["served"], 20);
        assert_eq!(body["refused"], 2);
    }

    #[test]
    fn a_daily_token_limit_warns_on_its_own_beside_the_request_limit() {
        let mut sc = scope("p", 10, 100, ScopeState::Ready);
        sc.limits.tpd = Some(1_000);
        sc.tpd_used = 850;
        let st = one_key(sc);
        assert_eq!(ids(&st), ["quota-input_tokens-80|p|m|2026-01-14"]);
        let w = warnings(&st, &NotifySettings::default());
        let q = &w[0].warning;
        assert_eq!(q.metric, Some("input_tokens"));
        assert_eq!((q.used, q.limit, q.served), (Some(850), Some(1_000), None));
        assert!(
            q.message
                .contains("85% of its daily input tokens (850/1000)"),
            "{}",
            q.message
        );
        assert_eq!(w[0].covers, Vec::<String>::new());
        // The request limit's mark keeps its old form: a restart does not warn again.
        let mut sc = scope("p", 90, 100, ScopeState::Ready);
        sc.limits.tpd = Some(1_000);
        let st = one_key(sc);
        assert_eq!(ids(&st), ["quota-80|p|m|2026-01-14"]);
    }

    #[test]
    fn a_jump_past_several_thresholds_is_one_warning_covering_the_lower_ones() {
        let st = one_key(scope("p", 100, 100, ScopeState::Ready));
        let settings = NotifySettings {
            thresholds: vec![50, 80, 100],
            ..NotifySettings::default()
        };
        let w = warnings(&st, &settings);
        let q: Vec<_> = w.iter().filter(|p| p.id.starts_with("quota")).collect();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].id, "quota-100|p|m|2026-01-14");
        assert_eq!(
            q[0].covers,
            ["quota-50|p|m|2026-01-14", "quota-80|p|m|2026-01-14"]
        );
    }

    #[test]
    fn a_model_is_exhausted_only_when_no_key_can_serve_it() {
        let mut st = PoolStatus {
            at_ms: NOW,
            keys: vec![key("a", "p", true), key("b", "q", false)],
            scopes: vec![
                scope("p", 0, 100, ScopeState::Ready),
                scope("q", 100, 100, ScopeState::Exhausted),
            ],
        };
        let all = warnings(&st, &NotifySettings::default());
        let ex: Vec<_> = all
            .iter()
            .filter(|w| w.warning.event == "model_exhausted")
            .collect();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            ex[0].warning.until.as_deref(),
            Some(rfc3339(NOW + 1000).as_str())
        );
        assert!(all.iter().any(|w| w.warning.event == "key_disabled"
            && w.warning.reason.as_deref() == Some("expired key")));
        // A key that can still serve: no exhaustion warning.
        st.keys[0].disabled = None;
        assert!(
            warnings(&st, &NotifySettings::default())
                .iter()
                .all(|w| w.warning.event != "model_exhausted")
        );
    }

    #[test]
    fn a_project_switched_off_whole_is_one_warning_naming_it_and_its_reprobe() {
        let mut off = scope("credits", 0, 100, ScopeState::Off);
        off.project_off = true;
        off.off_until_ms = Some(NOW + 5000);
        let mut off2 = off.clone();
        off2.model = "m2".into();
        let st = PoolStatus {
            at_ms: NOW,
            keys: vec![key("a", "credits", false), key("b", "q", false)],
            scopes: vec![off, off2, scope("q", 0, 100, ScopeState::Ready)],
        };
        let all = warnings(&st, &NotifySettings::default());
        let p: Vec<_> = all
            .iter()
            .filter(|w| w.warning.event == "project_off")
            .collect();
        assert_eq!(p.len(), 1, "one per project, whatever its models");
        assert_eq!(p[0].warning.project.as_deref(), Some("credits"));
        assert_eq!(
            p[0].warning.until.as_deref(),
            Some(rfc3339(NOW + 5000).as_str())
        );
        assert_eq!(p[0].warning.severity, "critical");
        assert!(p[0].id.starts_with("project-off|credits|"));
        let quiet = NotifySettings {
            project_off: false,
            ..NotifySettings::default()
        };
        assert!(
            warnings(&st, &quiet)
                .iter()
                .all(|w| w.warning.event != "project_off")
        );
    }
}
