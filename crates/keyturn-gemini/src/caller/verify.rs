//! What a 403 without a reason was: a probe of the key (cached per key) decides between a dead
//! key, a request naming another project's resource, and a model off for the project.

use keyturn_core::{KeyEntry, KeyId};
use serde_json::Value;

use super::{PROBE_TTL, RotatingCaller};
use crate::check::{KeyCheck, check_key};
use crate::error::{ErrorKind, GeminiError};

impl RotatingCaller {
    /// [`check_key`] for `entry`'s key, cached per key for [`PROBE_TTL`] so a burst of bare
    /// 403s probes once.
    async fn probe(&self, entry: &KeyEntry, id: KeyId) -> KeyCheck {
        let now = self.clock.now_ms();
        if let Some((at, p)) = self.probes.lock().get(&id).cloned()
            && now.saturating_sub(at) < PROBE_TTL.as_millis() as i64
        {
            return p;
        }
        let answer = check_key(&self.transport, &entry.key).await;
        tracing::debug!(key = %entry.label, ?answer, "probed a key after a 403 without a reason");
        self.probes
            .lock()
            .insert(id, (self.clock.now_ms(), answer.clone()));
        answer
    }

    /// Decides what a 403 without a reason was: the key is dead if the probe is refused too;
    /// if the key works, the request was at fault when it named a resource another project may
    /// own (a file, a cached content), else the model is off for this project.
    pub(super) async fn verify(
        &self,
        entry: &KeyEntry,
        id: KeyId,
        body: &[u8],
        e: GeminiError,
    ) -> GeminiError {
        let GeminiError::Api(mut a) = e else {
            return e;
        };
        a.kind = match self.probe(entry, id).await {
            KeyCheck::Refused(reason) => ErrorKind::DeadKey(reason),
            KeyCheck::Alive if names_project_resource(body) => ErrorKind::CallerFault,
            KeyCheck::Alive => ErrorKind::ModelUnavailable,
            KeyCheck::Unknown(_) => ErrorKind::Transient,
        };
        GeminiError::Api(a)
    }
}

/// Whether a request body names something that belongs to one project: a file
/// (`fileData.fileUri`) or a cached content. Such a request fails with a bare 403 on a key of
/// another project, which says nothing about that key.
fn names_project_resource(body: &[u8]) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| {
                matches!(
                    k.as_str(),
                    "fileUri" | "file_uri" | "cachedContent" | "cached_content"
                ) && v.as_str().is_some_and(|s| !s.is_empty())
                    || walk(v)
            }),
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    serde_json::from_slice::<Value>(body).is_ok_and(|v| walk(&v))
}
