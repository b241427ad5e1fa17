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
//! - Quotas per (project, model): RPM and input TPM over an exact rolling minute, RPD per Pacific
//!   day; refusals with the real bodies (QuotaFailure with `quotaId`/`quotaValue`, RetryInfo), a
//!   short retryDelay even on per-day refusals, bare 429s, `limit: 0`.
//! - Keys valid, invalid, expired, leaked, suspended, service-disabled, blocked, each refused with
//!   the real status and body.
//! - Faults: 500/503/504, bare 429s, dropped connections, malformed bodies, latency, slow streams.
//! - `/admin/stats`, `/admin/reset`, `/admin/advance`, `/admin/advance-day`, `/admin/faults`,
//!   `/admin/limits`, `/admin/keys`.
//!
//! It shares no code with keyturn's client crates: its reading of the wire format is its own.
//!
//! ```no_run
//! use keyturn_sim::{SimConfig, Simulator};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let sim = Simulator::start(SimConfig::default()).await?;
//! println!("GEMINI_BASE_URL={}", sim.base_url());
//! sim.wait().await;
//! # Ok(()) }
//! ```

pub mod args;
pub mod config;
pub mod content;
pub mod errors;
pub mod server;
pub mod state;
pub mod wire;

pub use args::SimArgs;
pub use config::{ConfigError, Faults, KeyState, Limits, SimConfig, SimKey};
pub use server::{Simulator, router};
pub use state::SimState;
