//! Resources that belong to the project of the key that created them: files (Files API), cached
//! contents and batches. The store, their expiry on the simulator's clock, how each renders on
//! the wire, and the log of which key asked for which resource (what `/admin/stats` shows, so a
//! test can check that every request naming a resource landed on the resource's project).
//!
//! Wire shapes are Google's v1beta REST resources: `File` (ai.google.dev/api/files),
//! `CachedContent` (ai.google.dev/api/caching) and the batch `Operation` whose `metadata` is a
//! `GenerateContentBatch` / `EmbedContentBatch` (ai.google.dev/api/batch-mode; read as the
//! google-genai SDK 3.6 reads them in `batches.py::_BatchJob_from_mldev`).

use std::collections::{BTreeMap, HashMap, VecDeque};

use base64::Engine;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::corpus::{self, Names};
use crate::errors::ApiError;
use crate::wire::{Content, EmbedContentRequest, GenerateContentRequest};

/// How many resource requests the log keeps (the oldest go first).
const LOG_CAPACITY: usize = 10_000;

/// RFC 3339 in UTC with milliseconds, as Google writes timestamps (`2026-01-15T07:59:59.123Z`).
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

/// A new id: 12 lowercase letters and digits, like Google's file and cache ids.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A duration in proto3 JSON (`"300s"`, `"1.5s"`), in milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e12)
        .contains(&secs)
        .then_some((secs * 1000.0) as i64)
}

/// An RFC 3339 timestamp, in Unix milliseconds.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    s.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// A file in the Files API.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// The id (`abc123` of `files/abc123`).
    pub id: String,
    /// The project of the key that created it.
    pub project: String,
    /// Its display name, when given.
    pub display_name: Option<String>,
    /// Its MIME type.
    pub mime_type: String,
    /// Its size.
    pub size: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256_hex: String,
    /// Created (Unix ms, simulated clock).
    pub create_ms: i64,
    /// Gone after (Unix ms).
    pub expire_ms: i64,
    /// Its bytes, when small enough to keep.
    pub content: Option<Vec<u8>>,
    /// `http://host:port` the simulator was reached at when it was created.
    pub base: String,
    /// `UPLOADED`, or `GENERATED` for a batch's results.
    pub source: &'static str,
}

impl StoredFile {
    /// The `File` resource.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "name": format!("files/{}", self.id),
            "mimeType": self.mime_type,
            // int64 in proto3 JSON: a string.
            "sizeBytes": self.size.to_string(),
            "createTime": rfc3339(self.create_ms),
            "updateTime": rfc3339(self.create_ms),
            "expirationTime": rfc3339(self.expire_ms),
            // Google sends the base64 of the hex digest.
            "sha256Hash": base64::engine::general_purpose::STANDARD.encode(self.sha256_hex.as_bytes()),
            "uri": format!("{}/v1beta/files/{}", self.base, self.id),
            "state": "ACTIVE",
            "source": self.source,
        });
        if let Some(d) = &self.display_name {
            v["displayName"] = json!(d);
        }
        v
    }
}

/// A resumable upload between its `start` and its `finalize`.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The project of the key that started it.
    pub project: String,
    /// The label of that key.
    pub key_label: String,
    /// The id the file will get.
    pub file_id: String,
    /// Display name from the `start` body.
    pub display_name: Option<String>,
    /// MIME type.
    pub mime_type: String,
    /// `X-Goog-Upload-Header-Content-Length`, when sent.
    pub declared: Option<u64>,
    /// Bytes received so far.
    pub received: u64,
    /// Their hash so far.
    pub hasher: Sha256,
    /// The bytes, while within the kept size.
    pub content: Option<Vec<u8>>,
    /// Where the simulator was reached.
    pub base: String,
    /// Started (Unix ms); a session lives a week, as Google's upload URLs do.
    pub start_ms: i64,
}

/// How long an unfinished resumable upload lives.
pub const UPLOAD_SESSION_MS: i64 = 7 * 86_400_000;

/// A cached content.
#[derive(Debug, Clone)]
pub struct CachedContent {
    /// The id (`xyz` of `cachedContents/xyz`).
    pub id: String,
    /// Owner.
    pub project: String,
    /// `gemini-2.5-flash` (without `models/`).
    pub model: String,
    /// Display name.
    pub display_name: Option<String>,
    /// The cached turns.
    pub contents: Vec<Content>,
    /// The cached system instruction.
    pub system_instruction: Option<Content>,
    /// Cached tools.
    pub tools: Option<Value>,
    /// Cached tool configuration.
    pub tool_config: Option<Value>,
    /// Tokens cached.
    pub tokens: u64,
    /// Created.
    pub create_ms: i64,
    /// Last changed.
    pub update_ms: i64,
    /// Gone after.
    pub expire_ms: i64,
}

impl CachedContent {
    /// The `CachedContent` resource (contents are not sent back, as Google does not).
    pub fn json(&self) -> Value {
        let mut v = json!({
            "name": format!("cachedContents/{}", self.id),
            "model": format!("models/{}", self.model),
            "createTime": rfc3339(self.create_ms),
            "updateTime": rfc3339(self.update_ms),
            "expireTime": rfc3339(self.expire_ms),
            "usageMetadata": {"totalTokenCount": self.tokens},
        });
        if let Some(d) = &self.display_name {
            v["displayName"] = json!(d);
        }
        v
    }
}

/// What a batch runs.
#[derive(Debug, Clone)]
pub enum BatchItems {
    /// `batchGenerateContent`: each request with its `metadata` (inline) or `key` (file).
    Generate(Vec<(Result<GenerateContentRequest, String>, Value)>),
    /// `asyncBatchEmbedContent`.
    Embed(Vec<(Result<EmbedContentRequest, String>, Value)>),
}

impl BatchItems {
    /// How many requests.
    pub fn len(&self) -> usize {
        match self {
            Self::Generate(v) => v.len(),
            Self::Embed(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn valid(&self) -> usize {
        match self {
            Self::Generate(v) => v.iter().filter(|(r, _)| r.is_ok()).count(),
            Self::Embed(v) => v.iter().filter(|(r, _)| r.is_ok()).count(),
        }
    }
}

/// A batch's state (`BatchState` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BatchState {
    /// Queued.
    #[serde(rename = "BATCH_STATE_PENDING")]
    Pending,
    /// Running.
    #[serde(rename = "BATCH_STATE_RUNNING")]
    Running,
    /// Done, with results.
    #[serde(rename = "BATCH_STATE_SUCCEEDED")]
    Succeeded,
    /// Done, without results.
    #[serde(rename = "BATCH_STATE_FAILED")]
    Failed,
    /// Cancelled before it finished.
    #[serde(rename = "BATCH_STATE_CANCELLED")]
    Cancelled,
    /// Pending or running for 48 hours.
    #[serde(rename = "BATCH_STATE_EXPIRED")]
    Expired,
}

impl BatchState {
    /// The API's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "BATCH_STATE_PENDING",
            Self::Running => "BATCH_STATE_RUNNING",
            Self::Succeeded => "BATCH_STATE_SUCCEEDED",
            Self::Failed => "BATCH_STATE_FAILED",
            Self::Cancelled => "BATCH_STATE_CANCELLED",
            Self::Expired => "BATCH_STATE_EXPIRED",
        }
    }

    /// Whether it will change no more.
    pub fn done(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// Batches that are pending or running for this long expire (Google's batch-mode guide).
pub const BATCH_EXPIRY_MS: i64 = 48 * 3_600_000;

/// A batch job.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The id (`batches/<id>`).
    pub id: String,
    /// Owner.
    pub project: String,
    /// Model (without `models/`).
    pub model: String,
    /// Display name.
    pub display_name: String,
    /// The requests.
    pub items: BatchItems,
    /// `inputConfig.fileName` when the requests came from a file.
    pub input_file: Option<String>,
    /// Input tokens enqueued.
    pub tokens: u64,
    /// Created.
    pub create_ms: i64,
    /// Leaves PENDING.
    pub run_ms: i64,
    /// Would finish.
    pub finish_ms: i64,
    /// Cancelled at.
    pub cancelled_ms: Option<i64>,
    /// Its results once computed (per item: the response, or an error), and the results file.
    pub output: Option<(Vec<Value>, Option<String>)>,
}

impl Batch {
    /// Its state at `now`.
    pub fn state(&self, now: i64) -> BatchState {
        if let Some(c) = self.cancelled_ms
            && c <= now
        {
            return BatchState::Cancelled;
        }
        if self.finish_ms - self.create_ms > BATCH_EXPIRY_MS
            && now >= self.create_ms + BATCH_EXPIRY_MS
        {
            BatchState::Expired
        } else if now < self.run_ms {
            BatchState::Pending
        } else if now < self.finish_ms {
            BatchState::Running
        } else if !self.items.is_empty() && self.items.valid() == 0 {
            BatchState::Failed
        } else {
            BatchState::Succeeded
        }
    }

    /// When its state last changed.
    fn changed_ms(&self, now: i64) -> i64 {
        match self.state(now) {
            BatchState::Pending => self.create_ms,
            BatchState::Running => self.run_ms,
            BatchState::Cancelled => self.cancelled_ms.unwrap_or(now),
            BatchState::Expired => self.create_ms + BATCH_EXPIRY_MS,
            BatchState::Succeeded | BatchState::Failed => self.finish_ms,
        }
    }

    /// The long-running `Operation` Google answers with: `metadata` is the batch itself
    /// (`@type …GenerateContentBatch`), with its `output` once it succeeded; `done` and
    /// `response` (`…GenerateContentBatchOutput`) once it ended.
    pub fn operation(&self, now: i64) -> Value {
        let state = self.state(now);
        let (kind, out_kind) = match self.items {
            BatchItems::Generate(_) => ("GenerateContentBatch", "GenerateContentBatchOutput"),
            BatchItems::Embed(_) => ("EmbedContentBatch", "EmbedContentBatchOutput"),
        };
        let name = format!("batches/{}", self.id);
        let n = self.items.len() as u64;
        let (ok, failed) = match (&self.output, state) {
            (Some((results, _)), BatchState::Succeeded | BatchState::Failed) => {
                let failed = results.iter().filter(|r| r.get("error").is_some()).count() as u64;
                (n - failed, failed)
            }
            (_, BatchState::Failed) => (0, n),
            _ => (0, 0),
        };
        let pending = if state.done() { 0 } else { n };
        // int64 counts are strings in proto3 JSON; zero values are left out.
        let mut stats = serde_json::Map::new();
        for (k, v) in [
            ("requestCount", n),
            ("successfulRequestCount", ok),
            ("failedRequestCount", failed),
            ("pendingRequestCount", pending),
        ] {
            if v != 0 {
                stats.insert(k.to_owned(), json!(v.to_string()));
            }
        }
        let mut metadata = json!({
            "@type": format!("type.googleapis.com/google.ai.generativelanguage.v1main.{kind}"),
            "model": format!("models/{}", self.model),
            "displayName": self.display_name,
            "createTime": rfc3339(self.create_ms),
            "updateTime": rfc3339(self.changed_ms(now)),
            "batchStats": Value::Object(stats),
            "state": state.name(),
            "name": name,
        });
        if let Some(f) = &self.input_file {
            metadata["inputConfig"] = json!({ "fileName": f });
        }
        if state.done() {
            metadata["endTime"] = json!(rfc3339(self.changed_ms(now)));
        }
        let mut op = json!({ "name": name, "metadata": metadata });
        if state.done() {
            op["done"] = json!(true);
        }
        if state == BatchState::Succeeded
            && let Some((results, file)) = &self.output
        {
            let output = match file {
                Some(f) => json!({ "responsesFile": f }),
                None => json!({ "inlinedResponses": { "inlinedResponses": results } }),
            };
            op["metadata"]["output"] = output.clone();
            let mut response = output;
            response["@type"] = json!(format!(
                "type.googleapis.com/google.ai.generativelanguage.v1main.{out_kind}"
            ));
            op["response"] = response;
        }
        if state == BatchState::Failed {
            op["error"] = json!({"code": 3, "message": "No valid request in the batch's input."});
        }
        op
    }
}

/// One request that named a resource: which key made it (by label), on which project, and the
/// resource's owner when the simulator knew it.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceUse {
    /// The route (`getFile`, `generateContent`…).
    pub route: &'static str,
    /// `files/abc`, `cachedContents/xyz`, `batches/123`.
    pub resource: String,
    /// The project that owns it (none: unknown or expired).
    pub owner: Option<String>,
    /// The label of the key that asked.
    pub key: String,
    /// That key's project.
    pub key_project: String,
    /// Simulated time.
    pub at_ms: i64,
}

/// Every project-owned resource.
#[derive(Debug, Default)]
pub struct Resources {
    /// Files by id.
    pub files: HashMap<String, StoredFile>,
    /// Resumable uploads by upload id.
    pub uploads: HashMap<String, Upload>,
    /// Cached contents by id.
    pub caches: HashMap<String, CachedContent>,
    /// Batches by id.
    pub batches: HashMap<String, Batch>,
    /// Requests that named a resource, oldest first.
    pub log: VecDeque<ResourceUse>,
}

impl Resources {
    /// Drops what has expired by `now`: files past `expirationTime`, caches past `expireTime`.
    pub fn purge(&mut self, now: i64) {
        self.files.retain(|_, f| f.expire_ms > now);
        self.caches.retain(|_, c| c.expire_ms > now);
        self.uploads
            .retain(|_, u| u.start_ms + UPLOAD_SESSION_MS > now);
    }

    /// Bytes a project stores, its unfinished uploads included (so abandoned sessions cannot
    /// hold more than the project's storage).
    pub fn stored_bytes(&self, project: &str) -> u64 {
        let files: u64 = self
            .files
            .values()
            .filter(|f| f.project == project)
            .map(|f| f.size)
            .sum();
        let uploads: u64 = self
            .uploads
            .values()
            .filter(|u| u.project == project)
            .map(|u| u.received)
            .sum();
        files + uploads
    }

    /// Bytes the simulator holds in memory for files, over every project.
    pub fn kept_bytes(&self) -> u64 {
        let files: u64 = self
            .files
            .values()
            .filter_map(|f| f.content.as_ref())
            .map(|c| c.len() as u64)
            .sum();
        let uploads: u64 = self
            .uploads
            .values()
            .filter_map(|u| u.content.as_ref())
            .map(|c| c.len() as u64)
            .sum();
        files + uploads
    }

    /// Notes a request for a resource.
    pub fn note(&mut self, u: ResourceUse) {
        if self.log.len() >= LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(u);
    }

    /// Per project: its files, caches and batches by name, and how many resource requests its
    /// keys made.
    pub fn stats(&self, now: i64) -> Value {
        #[derive(Default)]
        struct Owned {
            files: Vec<(i64, String)>,
            caches: Vec<(i64, String)>,
            batches: Vec<(i64, Value)>,
        }
        let mut projects: BTreeMap<String, Owned> = BTreeMap::new();
        for f in self.files.values() {
            let p = projects.entry(f.project.clone()).or_default();
            p.files.push((f.create_ms, format!("files/{}", f.id)));
        }
        for c in self.caches.values() {
            let p = projects.entry(c.project.clone()).or_default();
            p.caches
                .push((c.create_ms, format!("cachedContents/{}", c.id)));
        }
        for b in self.batches.values() {
            let p = projects.entry(b.project.clone()).or_default();
            p.batches.push((
                b.create_ms,
                json!({"name": format!("batches/{}", b.id), "state": b.state(now).name()}),
            ));
        }
        let by_project: BTreeMap<String, Value> = projects
            .into_iter()
            .map(|(name, mut o)| {
                o.files.sort();
                o.caches.sort();
                o.batches.sort_by_key(|(t, v)| (*t, v.to_string()));
                let uses = self.log.iter().filter(|u| u.key_project == name).count();
                let v = json!({
                    "files": o.files.into_iter().map(|(_, n)| n).collect::<Vec<_>>(),
                    "caches": o.caches.into_iter().map(|(_, n)| n).collect::<Vec<_>>(),
                    "batches": o.batches.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                    "uses_by_its_keys": uses,
                });
                (name, v)
            })
            .collect();
        json!({
            "by_project": by_project,
            // Requests that named a resource another project owns than their key's.
            "cross_project_uses": self.log.iter().filter(|u| u.owner.as_ref().is_some_and(|o| *o != u.key_project)).count(),
            "uses": self.log,
        })
    }
}

/// `real-32`'s bare 403 for a file: another project's, expired, or unknown (Google answers all
/// three the same way).
pub fn file_denied(id: &str) -> ApiError {
    corpus::render(
        "real-32",
        &Names {
            file: Some(id),
            ..Names::default()
        },
    )
}

/// The 403 for a cached content of another project (or unknown, or expired). Message as
/// reported by users of the real API: "CachedContent not found (or permission denied)"
/// (google-gemini/generative-ai-python and LiteLLM issue threads, 2024–2025).
pub fn cache_denied() -> ApiError {
    ApiError {
        status: 403,
        body: json!({"error": {
            "code": 403,
            "message": "CachedContent not found (or permission denied)",
            "status": "PERMISSION_DENIED",
        }}),
    }
}

/// The 404 for a batch another project created, or none did. The batch API answers with the
/// generic not-found of Google's long-running operations (reasoned: no real body was found).
pub fn batch_not_found(id: &str) -> ApiError {
    ApiError {
        status: 404,
        body: json!({"error": {
            "code": 404,
            "message": format!("Batch batches/{} not found.", shown(id)),
            "status": "NOT_FOUND",
        }}),
    }
}

/// The 429 when a project's files would pass its storage quota, verbatim from a real refusal
/// (googleapis/python-genai#1172, 2025-07): QuotaFailure `FileStorageBytesPerProject`, Help, and
/// a RetryInfo of int64-max seconds.
pub fn storage_exhausted(limit: u64) -> ApiError {
    ApiError {
        status: 429,
        body: json!({"error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/file_storage_bytes",
                        "quotaId": "FileStorageBytesPerProject",
                        "quotaValue": limit.to_string(),
                    }],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9223372036854775807s"},
            ],
        }}),
    }
}

/// A value from outside, shortened and stripped of control characters for a message.
pub fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// Whether an id a client chose is one Google accepts: up to 40 lowercase letters, digits and
/// dashes, not starting or ending with a dash (ai.google.dev/api/files, `File.name`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_like_proto3_json() {
        assert_eq!(parse_duration_ms("300s"), Some(300_000));
        assert_eq!(parse_duration_ms("1.5s"), Some(1_500));
        assert_eq!(parse_duration_ms("-1s"), None);
        assert_eq!(parse_duration_ms("300"), None);
        assert_eq!(parse_duration_ms("NaNs"), None);
        let t = 1_768_463_999_123;
        assert_eq!(rfc3339(t), "2026-01-15T07:59:59.123Z");
        assert_eq!(parse_time_ms(&rfc3339(t)), Some(t));
    }

    #[test]
    fn client_chosen_ids_follow_googles_rule() {
        assert!(valid_id("my-file-1"));
        for bad in ["", "-a", "a-", "A", "a/b", "a_b", &"a".repeat(41)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
