//! Gemini's Batch Mode: many `generateContent` requests as one job that Gemini runs within a
//! day, at half the interactive price, on the batch limits of the project whose key created it.
//!
//! A job belongs to that project: it is created, polled, read and cancelled with a key of it, so
//! every call here takes the key to use ([`KeyEntry`]) instead of rotating. The calls are the
//! real API's (v1beta):
//! - `POST models/{m}:batchGenerateContent` (and `:asyncBatchEmbedContent` for embeddings) with `{"batch": {"displayName", "inputConfig":
//!   {"requests": {"requests": [{"request", "metadata": {"key"}}]}}}}` — inline requests, while
//!   the body stays under [`INLINE_LIMIT_BYTES`] — or `"inputConfig": {"fileName": "files/…"}`
//!   naming a JSONL file of `{"key", "request"}` lines uploaded through the Files API
//!   (resumable: `start`, then `upload, finalize`);
//! - `GET batches/{id}`, `GET batches` (pages), `POST batches/{id}:cancel`;
//! - the answer is a long-running operation: the job's `state` (`BATCH_STATE_PENDING`, `_RUNNING`,
//!   `_SUCCEEDED`, `_FAILED`, `_CANCELLED`, `_EXPIRED`) in `metadata`, and once done its output:
//!   `inlinedResponses.inlinedResponses[]` (each a `response` or an `error`, in request order,
//!   `metadata.key` when Gemini echoes it) or `responsesFile` (`files/…`, JSONL lines of `{"key",
//!   "response" | "error"}`, read through `download/…:download?alt=media`).
//!
//! Every refusal goes through [`classify`]: a `FAILED_PRECONDITION` on submit (a free-tier
//! project cannot run batch jobs) comes back as [`ErrorKind::ModelUnavailable`], which a caller
//! reads as "no batches on this project". Names Gemini answers with are validated before they
//! become part of a URL ([`Transport::resource_url`]), and an upload URL is followed only to the
//! configured server's upload path ([`Transport::checked_upload_session`]): no answer can send
//! the key elsewhere.

use bytes::Bytes;
use keyturn_core::KeyEntry;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::error::{ApiFailure, ErrorKind, GeminiError, classify, redact};
use crate::transport::{InvalidName, KeyHeader, SendError, Transport};

/// Largest inline `batchGenerateContent` body Google accepts is 20 MB; above this a JSONL file
/// is uploaded instead. Kept below the limit for the JSON envelope's sake.
pub const INLINE_LIMIT_BYTES: usize = 19 * 1024 * 1024;

/// The longest answer read from a batch call (a results file included): 512 MiB.
const MAX_RESULTS_BYTES: usize = 512 * 1024 * 1024;

/// One request of a job: a key the caller chooses (to match answers back) and a
/// `GenerateContentRequest` body.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// The caller's name for the request (echoed in results).
    pub key: String,
    /// The `generateContent` body.
    pub request: Value,
}

/// A job's state, as Gemini reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchState {
    /// Accepted, not started.
    Pending,
    /// Running.
    Running,
    /// Done; results are ready.
    Succeeded,
    /// Failed as a whole.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Not finished within Google's window (48 h): nothing ran.
    Expired,
    /// A state this client does not know (polled again later).
    Unknown,
}

impl BatchState {
    /// Reads `BATCH_STATE_*` (and the SDK's `JOB_STATE_*` spelling).
    pub fn parse(s: &str) -> Self {
        let s = s
            .strip_prefix("BATCH_STATE_")
            .or_else(|| s.strip_prefix("JOB_STATE_"))
            .unwrap_or(s);
        match s {
            "PENDING" | "QUEUED" => Self::Pending,
            "RUNNING" => Self::Running,
            "SUCCEEDED" => Self::Succeeded,
            "FAILED" => Self::Failed,
            "CANCELLED" | "CANCELLING" => Self::Cancelled,
            "EXPIRED" => Self::Expired,
            _ => Self::Unknown,
        }
    }

    /// Whether the job will change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Expired
        )
    }

    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

/// Where a finished job's answers are.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutput {
    /// Inline, in request order.
    Inline(Vec<ItemResult>),
    /// In a results file (`files/…`).
    File(String),
}

/// One request's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// The request's key, when Gemini echoed it.
    pub key: Option<String>,
    /// The `GenerateContentResponse`, or the item's error in words (key-free).
    pub result: Result<Value, String>,
}

/// A job as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    /// `batches/…`.
    pub name: String,
    /// The name the caller gave it.
    pub display_name: Option<String>,
    /// State.
    pub state: BatchState,
    /// The output, once succeeded.
    pub output: Option<BatchOutput>,
    /// The job's own error (a failed job), in words.
    pub error: Option<String>,
}

/// Batch calls with one project's key. Cheap to clone (the transport is shared).
#[derive(Debug, Clone)]
pub struct BatchClient {
    transport: Transport,
    inline_limit: usize,
}

impl BatchClient {
    /// A client on a transport (the pool's own, so it goes where every other call goes).
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            inline_limit: INLINE_LIMIT_BYTES,
        }
    }

    /// The transport the client sends through (the pool's own).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Bodies above `bytes` go as an uploaded JSONL file (default [`INLINE_LIMIT_BYTES`]; a test
    /// lowers it to exercise the file path).
    pub fn inline_limit(mut self, bytes: usize) -> Self {
        self.inline_limit = bytes;
        self
    }

    /// Submits a job of `requests` to `model` with `key` (whose project will own it): inline
    /// while the body fits [`BatchClient::inline_limit`], else through an uploaded JSONL file.
    pub async fn submit(
        &self,
        key: &KeyEntry,
        model: &str,
        display_name: &str,
        requests: &[BatchRequest],
    ) -> Result<BatchJob, GeminiError> {
        self.submit_to("batchGenerateContent", key, model, display_name, requests)
            .await
    }

    /// As [`BatchClient::submit`], a job of `EmbedContentRequest` bodies to an embedding model
    /// (`models/{m}:asyncBatchEmbedContent`); each answer is an `EmbedContentResponse`.
    pub async fn submit_embeddings(
        &self,
        key: &KeyEntry,
        model: &str,
        display_name: &str,
        requests: &[BatchRequest],
    ) -> Result<BatchJob, GeminiError> {
        self.submit_to("asyncBatchEmbedContent", key, model, display_name, requests)
            .await
    }

    async fn submit_to(
        &self,
        method: &str,
        key: &KeyEntry,
        model: &str,
        display_name: &str,
        requests: &[BatchRequest],
    ) -> Result<BatchJob, GeminiError> {
        let url = self.transport.model_url(model, method)?;
        let inline: Vec<Value> = requests
            .iter()
            .map(|r| json!({"request": r.request, "metadata": {"key": r.key}}))
            .collect();
        let body = json!({"batch": {
            "displayName": display_name,
            "inputConfig": {"requests": {"requests": inline}},
        }});
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        if bytes.len() > self.inline_limit {
            let file = self
                .upload_jsonl(key, model, display_name, requests)
                .await?;
            let body = json!({"batch": {
                "displayName": display_name,
                "inputConfig": {"fileName": file},
            }});
            bytes = serde_json::to_vec(&body).unwrap_or_default();
        }
        let answer = self
            .send(
                key,
                model,
                reqwest::Method::POST,
                &url,
                json_headers(),
                Some(bytes.into()),
            )
            .await?;
        Ok(read_job(&json_of(&answer, model, key)?, key.key.expose()))
    }

    /// Uploads `requests` as a JSONL file (one `{"key", "request"}` a line) and returns its name.
    pub async fn upload_jsonl(
        &self,
        key: &KeyEntry,
        model: &str,
        display_name: &str,
        requests: &[BatchRequest],
    ) -> Result<String, GeminiError> {
        let mut jsonl = Vec::new();
        for r in requests {
            let line = json!({"key": r.key, "request": r.request});
            jsonl.extend(serde_json::to_vec(&line).unwrap_or_default());
            jsonl.push(b'\n');
        }
        let mut start = json_headers();
        for (h, v) in [
            ("x-goog-upload-protocol", "resumable".to_owned()),
            ("x-goog-upload-command", "start".to_owned()),
            (
                "x-goog-upload-header-content-length",
                jsonl.len().to_string(),
            ),
            (
                "x-goog-upload-header-content-type",
                "application/jsonl".to_owned(),
            ),
        ] {
            insert(&mut start, h, &v);
        }
        let meta = json!({"file": {"displayName": display_name, "mimeType": "application/jsonl"}});
        let url = self.transport.upload_url();
        let resp = self
            .send_raw(
                key,
                model,
                reqwest::Method::POST,
                &url,
                start,
                Some(serde_json::to_vec(&meta).unwrap_or_default().into()),
            )
            .await?;
        let upload = resp
            .headers()
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(upload) = upload.and_then(|u| self.transport.checked_upload_session(&u).ok())
        else {
            return Err(self.protocol(
                model,
                key,
                "the upload's start answer named no upload URL on the configured server",
            ));
        };
        let mut finish = HeaderMap::new();
        insert(&mut finish, "x-goog-upload-command", "upload, finalize");
        insert(&mut finish, "x-goog-upload-offset", "0");
        let answer = self
            .send(
                key,
                model,
                reqwest::Method::POST,
                &upload,
                finish,
                Some(jsonl.into()),
            )
            .await?;
        let v = json_of(&answer, model, key)?;
        v.pointer("/file/name")
            .or_else(|| v.get("name"))
            .and_then(Value::as_str)
            .filter(|n| {
                n.strip_prefix("files/")
                    .is_some_and(keyturn_core::resources::valid_id)
            })
            .map(str::to_owned)
            .ok_or_else(|| self.protocol(model, key, "the upload's answer named no file"))
    }

    /// The job now (`GET batches/{id}`).
    pub async fn get(&self, key: &KeyEntry, name: &str) -> Result<BatchJob, GeminiError> {
        let url = self.transport.resource_url(batch_name(name)?)?;
        let answer = self
            .send(
                key,
                name,
                reqwest::Method::GET,
                &url,
                HeaderMap::new(),
                None,
            )
            .await?;
        Ok(read_job(&json_of(&answer, name, key)?, key.key.expose()))
    }

    /// Every job of the key's project (`GET batches`, all pages).
    pub async fn list(&self, key: &KeyEntry) -> Result<Vec<BatchJob>, GeminiError> {
        let mut jobs = Vec::new();
        let mut token: Option<String> = None;
        // A server that never stops paging is cut off: 1,000 pages of jobs is far past any real
        // project's.
        for _ in 0..1_000 {
            let url = self
                .transport
                .list_url("batches", Some(100), token.as_deref())?;
            let answer = self
                .send(
                    key,
                    "batches",
                    reqwest::Method::GET,
                    &url,
                    HeaderMap::new(),
                    None,
                )
                .await?;
            let v = json_of(&answer, "batches", key)?;
            for op in v
                .get("operations")
                .or_else(|| v.get("batches"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                jobs.push(read_job(op, key.key.expose()));
            }
            token = v
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(jobs)
    }

    /// Asks Gemini to cancel the job (`POST batches/{id}:cancel`).
    pub async fn cancel(&self, key: &KeyEntry, name: &str) -> Result<(), GeminiError> {
        let url = self
            .transport
            .resource_url(&format!("{}:cancel", batch_name(name)?))?;
        self.send(
            key,
            name,
            reqwest::Method::POST,
            &url,
            json_headers(),
            Some(Bytes::from_static(b"{}")),
        )
        .await?;
        Ok(())
    }

    /// A succeeded job's answers: the inline ones, or its results file read and parsed.
    pub async fn results(
        &self,
        key: &KeyEntry,
        job: &BatchJob,
    ) -> Result<Vec<ItemResult>, GeminiError> {
        match &job.output {
            Some(BatchOutput::Inline(items)) => Ok(items.clone()),
            Some(BatchOutput::File(file)) => {
                let url = self.transport.download_url(file)?;
                let bytes = self
                    .send(
                        key,
                        &job.name,
                        reqwest::Method::GET,
                        &url,
                        HeaderMap::new(),
                        None,
                    )
                    .await?;
                Ok(bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .map(|l| match serde_json::from_slice::<Value>(l) {
                        Ok(v) => read_item(&v, key.key.expose()),
                        Err(e) => ItemResult {
                            key: None,
                            result: Err(format!("a results line was not JSON: {e}")),
                        },
                    })
                    .collect())
            }
            None => Err(self.protocol(&job.name, key, "the job has no output")),
        }
    }

    fn protocol(&self, what: &str, key: &KeyEntry, detail: &str) -> GeminiError {
        GeminiError::Transport {
            model: what.to_owned(),
            key: key.label.clone(),
            detail: detail.to_owned(),
        }
    }

    /// Sends and reads the whole answer body; a refusal is classified.
    async fn send(
        &self,
        key: &KeyEntry,
        what: &str,
        method: reqwest::Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Bytes, GeminiError> {
        let resp = self.send_raw(key, what, method, url, headers, body).await?;
        read_body(resp, what, key).await
    }

    /// Sends; a refusal is classified, a success returned unread.
    async fn send_raw(
        &self,
        key: &KeyEntry,
        what: &str,
        method: reqwest::Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, GeminiError> {
        let resp = match self
            .transport
            .send_as(
                method,
                KeyHeader::GoogApiKey,
                &key.key,
                url,
                headers,
                body.map(reqwest::Body::from),
            )
            .await
        {
            Ok(r) => r,
            Err(detail @ SendError::Redirected { .. }) => {
                return Err(GeminiError::Redirected {
                    model: what.to_owned(),
                    detail,
                });
            }
            Err(SendError::Failed(detail)) => {
                return Err(GeminiError::Transport {
                    model: what.to_owned(),
                    key: key.label.clone(),
                    detail,
                });
            }
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = crate::body::read_error(resp, crate::body::MAX_ERROR_BYTES).await;
        let c = classify(status, &body);
        let secret = key.key.expose();
        Err(GeminiError::Api(Box::new(ApiFailure {
            body: redact(&String::from_utf8_lossy(&body), secret),
            status,
            status_text: c.status_text,
            message: redact(&c.message, secret),
            model: what.to_owned(),
            key: key.label.clone(),
            kind: c.kind,
            retry_after: c.retry_after,
            quota_value: c.quota_value,
        })))
    }
}

/// Whether an error on submit means the project cannot run batch jobs at all (free tier:
/// `FAILED_PRECONDITION`, or a zero batch quota), so the job should go to another project. A
/// dead key, a project whose API is disabled or whose credits ran out is not that: it is what
/// any call would meet, for the ledger to learn, and the project's other keys may still submit.
pub fn batch_refused(e: &GeminiError) -> bool {
    matches!(e.kind(), ErrorKind::ModelUnavailable)
}

/// A job name as Gemini gives it, `batches/{id}`, the id valid; anything else is refused before
/// it can become part of a URL.
fn batch_name(name: &str) -> Result<&str, InvalidName> {
    match name.strip_prefix("batches/") {
        Some(id) if keyturn_core::resources::valid_id(id) => Ok(name),
        _ => Err(InvalidName {
            what: format!(
                "batch name '{}'",
                name.chars().take(200).collect::<String>().escape_debug()
            ),
            reason: "a batch name is batches/ID (1 to 128 letters, digits, '-' or '_')",
        }),
    }
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// A successful answer, read with [`crate::body`]'s bound at [`MAX_RESULTS_BYTES`].
async fn read_body(
    resp: reqwest::Response,
    what: &str,
    key: &KeyEntry,
) -> Result<Bytes, GeminiError> {
    crate::body::read_answer(resp, MAX_RESULTS_BYTES)
        .await
        .map_err(|detail| GeminiError::Transport {
            model: what.to_owned(),
            key: key.label.clone(),
            detail,
        })
}

fn json_of(bytes: &[u8], what: &str, key: &KeyEntry) -> Result<Value, GeminiError> {
    serde_json::from_slice(bytes).map_err(|e| GeminiError::Transport {
        model: what.to_owned(),
        key: key.label.clone(),
        detail: format!("the answer was not JSON: {e}"),
    })
}

/// A job from an operation (`{"name", "metadata": {...}, "done", "response"}`) or from a bare
/// batch resource (`{"name", "state", "output"}`). Its error and its items' errors are words
/// from upstream that end up in logs and reports: `secret` (the key that asked) is redacted.
fn read_job(v: &Value, secret: &str) -> BatchJob {
    let meta = v.get("metadata").filter(|m| m.is_object()).unwrap_or(v);
    let str_at = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = str_at(v, "name")
        .or_else(|| str_at(meta, "name"))
        .unwrap_or_default();
    let state = str_at(meta, "state")
        .or_else(|| str_at(v, "state"))
        .map_or(BatchState::Unknown, |s| BatchState::parse(&s));
    let output = v
        .get("response")
        .or_else(|| meta.get("output"))
        .or_else(|| v.get("output"))
        .and_then(|o| read_output(o, secret));
    let error = v.get("error").filter(|e| !e.is_null()).map(|e| {
        let words = e
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_owned);
        redact(&words, secret)
    });
    BatchJob {
        name,
        display_name: str_at(meta, "displayName").or_else(|| str_at(v, "displayName")),
        state,
        output,
        error,
    }
}

fn read_output(o: &Value, secret: &str) -> Option<BatchOutput> {
    if let Some(f) = o.get("responsesFile").and_then(Value::as_str) {
        return Some(BatchOutput::File(f.to_owned()));
    }
    let inl = o.get("inlinedResponses")?;
    // The REST shape nests the list once more: `inlinedResponses.inlinedResponses[]`.
    let list = inl
        .get("inlinedResponses")
        .unwrap_or(inl)
        .as_array()?
        .iter()
        .map(|v| read_item(v, secret))
        .collect();
    Some(BatchOutput::Inline(list))
}

fn read_item(v: &Value, secret: &str) -> ItemResult {
    let key = v
        .get("key")
        .or_else(|| v.pointer("/metadata/key"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let result = match (v.get("response"), v.get("error")) {
        (Some(r), _) if !r.is_null() => Ok(r.clone()),
        (_, Some(e)) if !e.is_null() => Err(redact(
            &e.get("message")
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_owned),
            secret,
        )),
        _ => Err("the item has neither a response nor an error".to_owned()),
    };
    ItemResult { key, result }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_bare_batches_read_the_same() {
        let op = json!({
            "name": "batches/abc-1",
            "metadata": {"@type": "x", "name": "batches/abc-1", "displayName": "kt-1", "state": "BATCH_STATE_SUCCEEDED"},
            "done": true,
            "response": {"@type": "y", "inlinedResponses": {"inlinedResponses": [
                {"response": {"candidates": []}, "metadata": {"key": "a"}},
                {"error": {"code": 500, "message": "boom"}}
            ]}}
        });
        let job = read_job(&op, "AIzaSyTESTunused");
        assert_eq!(job.name, "batches/abc-1");
        assert_eq!(job.display_name.as_deref(), Some("kt-1"));
        assert_eq!(job.state, BatchState::Succeeded);
        let Some(BatchOutput::Inline(items)) = job.output else {
            panic!("inline output expected")
        };
        assert_eq!(items[0].key.as_deref(), Some("a"));
        assert!(items[0].result.is_ok());
        assert_eq!(items[1].result, Err("boom".to_owned()));

        let bare = json!({"name": "batches/b", "state": "JOB_STATE_RUNNING",
                          "output": {"responsesFile": "files/out-1"}});
        let job = read_job(&bare, "AIzaSyTESTunused");
        assert_eq!(job.state, BatchState::Running);
        assert_eq!(job.output, Some(BatchOutput::File("files/out-1".into())));
        assert_eq!(
            BatchState::parse("BATCH_STATE_EXPIRED"),
            BatchState::Expired
        );
        assert!(!BatchState::parse("BATCH_STATE_WHATEVER").is_final());
    }
}
