//! Calls that spend no generation quota (countTokens, GET models): any usable key.

use bytes::Bytes;
use serde_json::Value;

use super::{Reply, RotatingCaller};
use crate::error::{ErrorKind, GeminiError};
use crate::transport::SendError;

impl RotatingCaller {
    /// Tries each active key once, in turn from a shared cursor; settles nothing.
    pub(super) async fn unmetered(
        &self,
        url_path: &str,
        body: Option<Value>,
    ) -> Result<Reply, GeminiError> {
        let keys = self.ledger.keys();
        let (url, how) = self.transport.unmetered_url(url_path)?;
        // A key a reload removed takes no new request, metered or not; the attempts go to keys
        // that do (counted over the removed ones, a ring whose first keys were all removed
        // answered "no key" although the pool has keys).
        let active: Vec<keyturn_core::KeyId> = keys.active().map(|(id, _)| id).collect();
        let n = active.len();
        let start = self
            .unmetered_cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        // Try each key once; a dead key is reported to the ledger like any other answer would be.
        for i in 0..n.min(self.retry.max_attempts.max(1) as usize) {
            let id = active[(start + i) % n];
            let Some(entry) = keys.get(id) else {
                continue;
            };
            let sent = match &body {
                Some(b) => {
                    let bytes = Bytes::from(serde_json::to_vec(b).unwrap_or_default());
                    self.transport.post_as(how, &entry.key, &url, bytes).await
                }
                None => self.transport.get_as(how, &entry.key, &url).await,
            };
            let err = match sent {
                Err(detail @ SendError::Redirected { .. }) => GeminiError::Redirected {
                    model: url_path.to_owned(),
                    detail,
                },
                Err(SendError::Failed(detail)) => GeminiError::Transport {
                    model: url_path.to_owned(),
                    key: entry.label.clone(),
                    detail,
                },
                Ok(resp) if resp.status().is_success() => {
                    let b = crate::body::read_answer(resp, crate::body::MAX_ANSWER_BYTES)
                        .await
                        .map_err(|detail| GeminiError::Transport {
                            model: url_path.to_owned(),
                            key: entry.label.clone(),
                            detail,
                        })?;
                    let v = serde_json::from_slice(&b).map_err(|e| GeminiError::Transport {
                        model: url_path.to_owned(),
                        key: entry.label.clone(),
                        detail: format!("the answer was not JSON: {e}"),
                    })?;
                    return Ok(Reply {
                        body: v,
                        raw: b,
                        key: entry.label.clone(),
                        attempts: i as u32 + 1,
                    });
                }
                Ok(resp) => self.read_error(resp, url_path, entry).await,
            };
            // A bare 403 here blames no key either: unmetered calls settle nothing.
            if matches!(err.kind(), ErrorKind::CallerFault | ErrorKind::Unverified) {
                return Err(err);
            }
            last = Some(err);
        }
        Err(last.unwrap_or(GeminiError::Ledger("no key to call with".into())))
    }
}
