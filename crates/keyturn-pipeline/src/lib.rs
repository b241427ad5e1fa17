//! # keyturn-pipeline
//!
//! The `keyturn` binary and the pipeline behind it: transcripts ([`transcript`]) → chunks →
//! LLM extraction under a JSON schema → entity resolution → embeddings → episode files and a
//! knowledge graph ([`graph`]), resumable from checkpoints and interruptible ([`run`]); plus the
//! commands `demo`, `sim`, `status`, `keys`, `export`, `state` and `serve` ([`cli`], which parses
//! and presents; the state is read and reset through keyturn-services). [`report`] prints the end
//! of a run. Output folders are claimed and locked by [`outdir`]; whatever came from outside is
//! printed through [`term`].
//!
//! ```no_run
//! # async fn demo(services: keyturn_services::Services) -> Result<(), String> {
//! use keyturn_pipeline::run::{SeedOptions, seed};
//! let opts = SeedOptions { inputs: vec!["podcasts".into()], out: "graph-out".into(), ..SeedOptions::default() };
//! let progress = keyturn_pipeline::progress::Progress::new(false);
//! let (_stop, interrupt) = tokio::sync::watch::channel(false);
//! let report = seed(opts, &services, interrupt, std::time::Duration::from_secs(5), &progress)
//!     .await
//!     .map_err(|e| e.to_string())?;
//! println!("{} episodes", report.items.processed);
//! # Ok(()) }
//! ```

pub mod batch;
pub mod cli;
pub mod demo;
pub mod graph;
pub mod inputs;
pub mod outdir;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod term;
pub mod transcript;
