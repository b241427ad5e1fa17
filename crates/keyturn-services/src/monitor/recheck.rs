//! Bringing dead keys back: a disabled key is asked again, with a request that costs no quota,
//! `[recheck] interval` after it was disabled or last asked; one that answers is re-enabled.

use keyturn_core::{PoolStatus, ResetTarget};
use keyturn_gemini::{KeyCheck, check_key};

use std::collections::BTreeMap;
use std::time::Duration;

use keyturn_gemini::Transport;

use super::Watch;
use super::warnings::warning;

/// Asking disabled keys again.
pub(super) struct Recheck {
    transport: Transport,
    interval: Duration,
    /// When this process last asked each key (by fingerprint).
    last_ms: BTreeMap<String, i64>,
}

impl Recheck {
    /// Asks through `transport`, each key at most once per `interval`.
    pub(super) fn new(transport: Transport, interval: Duration) -> Self {
        Self {
            transport,
            interval,
            last_ms: BTreeMap::new(),
        }
    }
}

impl Watch {
    /// Asks each disabled key that is due whether it works again; re-enables those that do.
    pub(super) async fn recheck_disabled(&mut self, st: &PoolStatus) {
        let Some(r) = &mut self.recheck else {
            return;
        };
        let keys = self.ledger.keys();
        let interval = r.interval.as_millis() as i64;
        for k in &st.keys {
            // The operator's disable is the operator's to lift, whatever the key answers.
            let Some(d) = k.disabled.filter(|d| !d.reason.is_admin()) else {
                continue;
            };
            let fp = k.fingerprint.to_string();
            let since = r
                .last_ms
                .get(&fp)
                .copied()
                .unwrap_or(d.since_ms)
                .max(d.since_ms);
            if st.at_ms.saturating_sub(since) < interval {
                continue;
            }
            r.last_ms.insert(fp.clone(), st.at_ms);
            // One process per key and interval asks, when several share the ledger.
            let slot = st.at_ms / interval.max(1);
            let mark = format!("recheck|{fp}|{slot}");
            if !matches!(
                self.ledger
                    .claim_notice(&mark, st.at_ms.saturating_add(interval))
                    .await,
                Ok(true)
            ) {
                continue;
            }
            let Some(id) = keys.find(&fp) else {
                continue;
            };
            let Some(entry) = keys.get(id) else {
                continue;
            };
            match check_key(&r.transport, &entry.key).await {
                KeyCheck::Alive => {
                    if let Err(e) = self.ledger.reset(ResetTarget::Key(id)).await {
                        tracing::warn!(key = %k.label, error = %e, "a key answers again but could not be re-enabled");
                        continue;
                    }
                    let mut w = warning(
                        "key_reenabled",
                        false,
                        st.at_ms,
                        format!(
                            "key '{}' ({fp}) answers again and is back in the pool (it was disabled: {})",
                            k.label, d.reason
                        ),
                    );
                    w.severity = "info";
                    w.project = Some(k.project.clone());
                    w.key = Some(k.label.clone());
                    w.fingerprint = Some(fp);
                    w.reason = Some(d.reason.to_string());
                    self.outlets.raise(w);
                }
                KeyCheck::Refused(reason) => {
                    tracing::debug!(key = %k.label, %reason, "a disabled key is still refused");
                }
                KeyCheck::Unknown(why) => {
                    tracing::debug!(key = %k.label, %why, "a disabled key could not be checked");
                }
            }
        }
    }
}
