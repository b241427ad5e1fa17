//! # keyturn-sim
//!
//! A faithful Gemini API simulator, for tests, benchmarks, `keyturn demo`, and for trying a
//! pipeline against quota limits before spending real ones.
//!
//! - Gemini's endpoints under `/v1beta/` and `/v1/`: `models/{m}:generateContent`,
//!   `:streamGenerateContent` (`alt=sse` or a JSON array), `:countTokens`, `:embedContent`,
//!   `:batchEmbedContents`, `GET models`, `GET models/{m}`, with the real request and response
//!   shapes; both lowerCamelCase and snake_case field names; unknown fields refused like the real
//!   service does.
//! - Google's OpenAI-compatible endpoint under `/v1beta/openai/`: `chat/completions` (plain,
//!   streamed with `data: [DONE]` and a usage chunk on `stream_options.include_usage`, tools,
//!   `response_format`), `embeddings`, `models`, `models/{m}`; the key as `Authorization:
//!   Bearer`, every error in the real endpoint's envelope (the native body in a one-element
//!   list), each request checked and counted as the native request underneath it.
//! - Quotas per (project, model): RPM and input TPM over an exact rolling minute, RPD per Pacific
//!   day; refusals with the real bodies (QuotaFailure with `quotaId`/`quotaValue`, RetryInfo), a
//!   short retryDelay even on per-day refusals, bare 429s, `limit: 0`.
//! - Every error shape real users received (`data/gemini-errors/bodies.json`, compiled in, each
//!   with its source; see [`corpus`]), sent verbatim with the request's own model, project and key
//!   *label* put where the body names them (never the key itself).
//! - Keys valid, invalid, deleted, expired, leaked, suspended, service-disabled, blocked (by API,
//!   IP or referrer), Vertex-bound ([`KeyState`]); each refused with the real status and body on
//!   every route, `GET models…` included, as the real service refuses a dead key's probe.
//! - Projects that stay in a state until changed ([`ProjectState`]): out of prepaid credits (402 on
//!   calls; probes and `countTokens` answer), API disabled (`SERVICE_DISABLED` for every key on
//!   every route), billing country denied, a zero whole-API quota; models off for one project with
//!   a chosen shape (`real-34`'s bare 403, `real-05`'s limit 0…) while `GET models/{m}` answers;
//!   files a project created, so a `fileData.fileUri` of another project (or one containing
//!   `other-project`) gets `real-32`'s bare 403.
//! - Resources owned by the project of the key that created them ([`resources`]): the Files API
//!   (`POST upload/v1beta/files` resumable, multipart or raw; `GET files/{id}`, `GET files`,
//!   `DELETE files/{id}`; 48 h of life, 2 GB per file, 20 GB per project), `cachedContents`
//!   (create with Google's minimum token count, get, list, patch of the expiry, delete; used by
//!   `generateContent`), Batch Mode (`models/{m}:batchGenerateContent` and
//!   `:asyncBatchEmbedContent` with inline requests or a JSONL file; `GET batches/{id}`,
//!   `GET batches`, `:cancel`, `DELETE`) moving PENDING → RUNNING → SUCCEEDED on the simulated
//!   clock, each result the interactive answer. Another project's key gets the real refusal;
//!   `/admin/stats` says which key label asked for which resource.
//! - Scripts ([`ScriptRule`]): "for key K / project P / model M / method X, answer with shape
//!   `real-26`, for the next N requests or always". Without a method, a shape goes where the real
//!   service sends it: key and project refusals on every route, probes included; the rest only on
//!   calls that spend quota.
//! - Its own 429s in the 2026 form: Help, QuotaFailure, RetryInfo (as `real-00`), the
//!   `ai.dev/rate-limit` link, the delay to the nanosecond in the message and truncated to whole
//!   seconds in `retryDelay`.
//! - Faults: 500/503/504, bare 429s, dropped connections, malformed bodies, latency, slow streams.
//! - `/admin/stats` (per key: requests by status and by route, `probes` = `GET models…` requests,
//!   refused ones included; projects; scripts left), `/admin/reset`, `/admin/advance`,
//!   `/admin/advance-day`, `/admin/faults`, `/admin/limits`, `/admin/keys`, `/admin/projects`,
//!   `/admin/script` (`GET` lists, `POST` adds one or a list, `PUT` replaces, `DELETE` clears).
//!
//! In TOML:
//!
//! ```toml
//! [[keys]]
//! key = "…"            # made up
//! label = "k1"
//! project = "p1"
//!
//! [projects."p1"]
//! state = "credits-depleted"   # active | credits-depleted | service-disabled | billing-denied | api-limit-zero
//! models_off = { "gemini-2.5-pro" = "real-34" }
//! files = ["files/abc123"]
//! tier = "paid"                # free (default: Batch Mode refused with real-22) | paid
//!
//! [resources]                  # defaults are Google's documented limits
//! batch_pending_secs = 30      # simulated seconds; /admin/advance moves them
//! batch_running_secs = 120
//! batch_item_error_every = 0   # every n-th batch request fails (0: none)
//!
//! [[script]]
//! shape = "real-24"             # a corpus id, or "api-limit-zero"
//! key = "k1"                    # and/or project, model, method ("generateContent", "getModel"…)
//! times = 1                     # leave out for always
//! ```
//!
//! It shares no code with keyturn's client crates: its reading of the wire format is its own.
//!
//! The same in Rust: `k1`'s next `generateContent` on gemini-2.5-flash gets the bare 403 of a
//! per-model refusal (`real-34`) while its probes answer, and project `p2` is out of credits.
//!
//! ```no_run
//! use keyturn_sim::{
//!     KeyState, ProjectConfig, ProjectState, Route, ScriptRule, SimConfig, SimKey, Simulator,
//! };
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let mut config = SimConfig::default();
//! config.keys.push(SimKey {
//!     key: "made-up".into(),
//!     label: Some("k1".into()),
//!     project: Some("p1".into()),
//!     state: KeyState::Valid,
//! });
//! config.projects.insert(
//!     "p2".into(),
//!     ProjectConfig { state: ProjectState::CreditsDepleted, ..ProjectConfig::default() },
//! );
//! config.script.push(ScriptRule {
//!     shape: "real-34".into(),
//!     key: Some("k1".into()),
//!     project: None,
//!     model: Some("gemini-2.5-flash".into()),
//!     method: Some(Route::GenerateContent),
//!     times: Some(1),
//! });
//! let sim = Simulator::start(config).await?;
//! println!("GEMINI_BASE_URL={}", sim.base_url());
//! sim.wait().await;
//! # Ok(()) }
//! ```

mod admin;
mod admission;
mod answers;
pub mod args;
mod batches;
mod caches;
pub mod config;
pub mod content;
pub mod corpus;
pub mod errors;
mod faults;
mod files;
mod models;
mod openai;
mod owned;
pub mod resources;
pub mod server;
pub mod state;
pub mod wire;

pub use args::SimArgs;
pub use config::{
    Faults, KeyState, Limits, ProjectConfig, ProjectState, ResourceConfig, Route, ScriptRule,
    SimConfig, SimConfigError, SimKey, Tier,
};
pub use server::{Simulator, router};
pub use state::SimState;
