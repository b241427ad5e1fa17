//! What the command line accepts. Flags that choose the configuration and the state (`--config`,
//! `--state-dir`, …) and `--metrics-addr` are listed by the commands that use them, so
//! `keyturn sim --help` shows only what the simulator reads; they are also accepted before the
//! command (`keyturn --state-dir st status`), where the one given after the command wins.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::graph::ExportFormat;

#[derive(Debug, Parser)]
#[command(
    name = "keyturn",
    version,
    about = "Run LLM work across many Gemini API keys without ever sending a request the quota will refuse.",
    after_help = "Examples:\n  keyturn demo                                   # no key, no network: the simulator and sample transcripts\n  GEMINI_API_KEY_1=… GEMINI_API_KEY_2=… keyturn seed transcripts/ --out graph-out\n  keyturn status\n  keyturn keys check\n  keyturn export --out graph-out --format neo4j-csv\n\nExit codes: 0 done, 2 usage/config error, 3 quota exhausted for the day (resumable),\n4 every key invalid, 130 interrupted (resumable), 1 anything else."
)]
pub(super) struct Cli {
    #[command(flatten)]
    pub logging: Logging,
    #[command(flatten)]
    pub setup: Setup,
    #[command(flatten)]
    pub metrics: MetricsFlag,
    #[command(subcommand)]
    pub command: Command,
}

/// How much to log, and how: every command logs.
#[derive(Debug, Clone, Args)]
pub(super) struct Logging {
    /// Machine-readable JSON log lines on stderr.
    #[arg(long, global = true, display_order = 900)]
    pub json_log: bool,
    /// More log detail (-v: debug, -vv: trace).
    #[arg(short, long, global = true, display_order = 901, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Which configuration and state: for the commands that read `keyturn.toml` and the keys.
#[derive(Debug, Clone, Default, Args)]
pub(super) struct Setup {
    /// Configuration file (default: $KEYTURN_CONFIG, else ./keyturn.toml if present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State folder of the file backend (default: $KEYTURN_STATE_DIR, else .keyturn).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Share quota through Redis (default: $KEYTURN_REDIS_URL).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Gemini endpoint without version (default: $GEMINI_BASE_URL, else Google's).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Key selection policy.
    #[arg(long, value_parser = ["round-robin", "least-loaded", "weighted"])]
    pub policy: Option<String>,
}

/// `--metrics-addr`: for the commands that do work (seed, demo, serve, sim).
#[derive(Debug, Clone, Default, Args)]
pub(super) struct MetricsFlag {
    /// Serve Prometheus metrics on this address (default: [metrics] addr for seed and serve;
    /// demo and sim read only this flag).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The flags that apply to one command: those given after it, else those given before it.
#[derive(Debug, Clone)]
pub(super) struct Global {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub base_url: Option<String>,
    pub policy: Option<String>,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Global {
    /// The flags given before the command (`top`), overridden by the command's own.
    pub fn resolve(
        top: &Setup,
        top_metrics: &MetricsFlag,
        setup: Option<&Setup>,
        metrics: Option<&MetricsFlag>,
    ) -> Self {
        let s = setup.cloned().unwrap_or_default();
        let t = top;
        Self {
            config: s.config.or_else(|| t.config.clone()),
            state_dir: s.state_dir.or_else(|| t.state_dir.clone()),
            redis_url: s.redis_url.or_else(|| t.redis_url.clone()),
            base_url: s.base_url.or_else(|| t.base_url.clone()),
            policy: s.policy.or_else(|| t.policy.clone()),
            metrics_addr: metrics
                .and_then(|m| m.metrics_addr)
                .or(top_metrics.metrics_addr),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Seed a knowledge graph from transcripts (.vtt, .srt, .txt); resumable.
    #[command(
        after_help = "Example:\n  keyturn seed podcasts/ --out graph-out --concurrency 4\n\nA rerun with the same --out skips finished episodes and redoes changed files."
    )]
    Seed(SeedArgs),
    /// Before seeding: how long a seed of these inputs would take on this pool's quota, which
    /// limit binds, how many Pacific days it spans, and what it would cost. Sends nothing.
    #[command(
        after_help = "Example:\n  keyturn plan podcasts/ --out graph-out\n  keyturn plan podcasts/ --out graph-out --batch --json\n\nThe inputs are read as seed reads them (same flags); what a checkpoint in --out says is done is left out.\nLimits are the pool's (configured, built-in, learned) and today's use is subtracted."
    )]
    Plan(PlanArgs),
    /// The pipeline on bundled sample transcripts against the built-in simulator (no key, no network).
    Demo(DemoArgs),
    /// The Gemini simulator alone.
    ///
    /// It reads only its own configuration (--config, TOML or JSON, and the flags below), never
    /// keyturn.toml: [metrics] addr does not apply, metrics are served only with --metrics-addr.
    Sim(SimCmd),
    /// Quota state per key and model: used vs limit, breakers, disabled keys, next reset.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Usage per key and model per Pacific day (requests, input tokens) instead of quota.
        #[arg(long)]
        history: bool,
        /// With --history: how many days back, today included (the state keeps 30).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=30))]
        days: u32,
        #[command(flatten)]
        setup: Setup,
    },
    /// List, check or reset keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Export the graph in --out for other tools.
    #[command(
        after_help = "Example:\n  keyturn export --out graph-out --format neo4j-csv\n  neo4j-admin database import full --nodes=graph-out/export/neo4j-csv/nodes.csv --relationships=graph-out/export/neo4j-csv/relationships.csv"
    )]
    Export {
        /// The seed output folder.
        #[arg(long)]
        out: PathBuf,
        /// Format.
        #[arg(long, value_enum, default_value = "neo4j-csv")]
        format: ExportFormat,
        /// Where to write (default: <out>/export/<format>).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Where the state lives, and maintenance.
    #[command(subcommand)]
    State(StateCommand),
    /// A Gemini-compatible proxy that rotates keys for clients in any language.
    #[command(
        after_help = "Examples:\n  keyturn serve                       # 127.0.0.1:8080 (or [serve] listen)\n  keyturn serve token new --label team-a\n  curl -H 'x-goog-api-key: <token>' http://127.0.0.1:8080/v1beta/models\n\nSee docs/PROXY.md for google-genai, LiteLLM and curl."
    )]
    Serve(ServeArgs),
    /// The web console of `keyturn serve` over the state folder or Redis namespace, without a
    /// proxy: keys, quota, history, events and seed runs, live. Read-only by default.
    #[command(
        after_help = "Examples:\n  keyturn console                     # http://127.0.0.1:8090/console, read-only\n  keyturn console --allow-actions     # resets, disables, enables, re-checks\n\nOn the file backend a read-only console follows the state file a running seed writes and never\ntakes its lock; --allow-actions takes the lock (exit 2 while a seed or serve holds it).\nBeyond loopback it needs an admin token ([[serve.admin_tokens]]), else it refuses to start (exit 2)."
    )]
    Console(ConsoleArgs),
}

#[derive(Debug, Clone, Args)]
pub(super) struct ConsoleArgs {
    /// Address to listen on.
    #[arg(long, default_value = super::console::DEFAULT_LISTEN)]
    pub listen: String,
    /// Allow resets, disables, enables and re-checks (file backend: takes the state file's lock,
    /// so no seed or serve may run on it meanwhile).
    #[arg(long)]
    pub allow_actions: bool,
    /// With Redis: a model whose quota to show (repeatable; default: the seed's models and
    /// those keyturn.toml names). Redis keeps no list of models.
    #[arg(long = "model", value_name = "MODEL")]
    pub models: Vec<String>,
    #[command(flatten)]
    pub setup: Setup,
}

#[derive(Debug, Clone, Args)]
pub(super) struct SimCmd {
    #[command(flatten)]
    pub sim: keyturn_sim::SimArgs,
    #[command(flatten)]
    pub metrics: MetricsFlag,
}

#[derive(Debug, Clone, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on (default: [serve] listen, 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    #[command(flatten)]
    pub setup: Setup,
    #[command(flatten)]
    pub metrics: MetricsFlag,
    #[command(subcommand)]
    pub command: Option<ServeCommand>,
}

#[derive(Debug, Clone, Subcommand)]
pub(super) enum ServeCommand {
    /// Client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub(super) enum TokenCommand {
    /// Prints a fresh client token (once) and the lines to paste into keyturn.toml.
    New {
        /// Who will use it.
        #[arg(long)]
        label: String,
        /// An admin token, for the console and the admin API (`[[serve.admin_tokens]]`), not a
        /// client token.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub(super) struct SeedArgs {
    /// Transcript files or folders (the podcast is a file's parent folder).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Episodes in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests in flight per episode.
    #[arg(long, default_value_t = 4)]
    pub requests: usize,
    /// Extraction model.
    #[arg(long, default_value = crate::run::DEFAULT_MODEL)]
    pub model: String,
    /// Embedding model.
    #[arg(long, default_value = crate::run::DEFAULT_EMBEDDING_MODEL)]
    pub embedding_model: String,
    /// Embedding size.
    #[arg(long, default_value_t = 768)]
    pub dimensions: u32,
    /// Target tokens per chunk.
    #[arg(long, default_value_t = 700)]
    pub chunk_tokens: usize,
    /// Do not answer from the response cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Also read transcripts through symbolic links to files outside the input folders (by
    /// default such links are skipped and reported; links to folders are never followed).
    #[arg(long)]
    pub follow_links: bool,
    /// Send the extraction requests as Gemini Batch Mode jobs (half the price, answered within
    /// a day), spread over the projects that can run them; rerun the same command to collect
    /// jobs still running. Also `[pipeline] mode = "batch"`.
    #[arg(long)]
    pub batch: bool,
    /// With --batch: an episode whose batch items failed, or that no project can take as a
    /// batch job, is retried in a later job (batch) or called interactively (interactive).
    /// Default: `[pipeline] batch_fallback`, else batch.
    #[arg(long, value_enum)]
    pub batch_fallback: Option<BatchFallbackArg>,
    #[command(flatten)]
    pub setup: Setup,
    #[command(flatten)]
    pub metrics: MetricsFlag,
}

/// `--batch-fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BatchFallbackArg {
    /// Retry in a later batch job.
    Batch,
    /// Call Gemini interactively.
    Interactive,
}

#[derive(Debug, Clone, Args)]
pub(super) struct PlanArgs {
    /// Transcript files or folders, as for seed.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The seed's output folder: episodes its checkpoint says are done are left out.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Price the job at the Batch API's rate (half) instead of the interactive one.
    #[arg(long)]
    pub batch: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Extraction model.
    #[arg(long, default_value = crate::run::DEFAULT_MODEL)]
    pub model: String,
    /// Embedding model.
    #[arg(long, default_value = crate::run::DEFAULT_EMBEDDING_MODEL)]
    pub embedding_model: String,
    /// Target tokens per chunk.
    #[arg(long, default_value_t = 700)]
    pub chunk_tokens: usize,
    /// Also read transcripts through symbolic links to files outside the input folders.
    #[arg(long)]
    pub follow_links: bool,
    #[command(flatten)]
    pub setup: Setup,
}

#[derive(Debug, Clone, Args)]
pub(super) struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "keyturn-demo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub metrics: MetricsFlag,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// The keys keyturn found, where, and their health.
    List {
        #[command(flatten)]
        setup: Setup,
    },
    /// Asks Gemini about each key with a call that spends no generation quota (GET models/{m}).
    Check {
        /// The model to ask about.
        #[arg(long, default_value = crate::run::DEFAULT_MODEL)]
        model: String,
        #[command(flatten)]
        setup: Setup,
    },
    /// Clears a key's disabled flag and breaker (or, with --all, every key and quota counter of this configuration; usage history is kept).
    Reset {
        /// A key's label or fingerprint.
        key: Option<String>,
        /// Everything: all keys and all counters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        setup: Setup,
    },
}

impl KeysCommand {
    pub fn setup(&self) -> &Setup {
        match self {
            Self::List { setup } | Self::Check { setup, .. } | Self::Reset { setup, .. } => setup,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum StateCommand {
    /// Backend, location, size, age, last flush, checkpoints and backups.
    Info {
        /// A seed output folder, to include its checkpoints.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        setup: Setup,
    },
    /// Resets every key and quota counter (asks first); usage history is kept.
    Reset {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        setup: Setup,
    },
    /// Deletes old checkpoint backups.
    Prune {
        /// The seed output folder.
        #[arg(long)]
        out: PathBuf,
        /// Backups to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

impl StateCommand {
    pub fn setup(&self) -> Option<&Setup> {
        match self {
            Self::Info { setup, .. } | Self::Reset { setup, .. } => Some(setup),
            Self::Prune { .. } => None,
        }
    }
}
