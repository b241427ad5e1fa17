//! Command-line flags, shared by the `keyturn-sim` binary and `keyturn sim`.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{KeyState, Limits, SimConfig, SimConfigError, SimKey};

/// Flags for running the simulator. Flags override the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SimArgs {
    /// Configuration file (TOML or JSON).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to bind (loopback unless you mean it).
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Port (0: a free port, printed at start).
    #[arg(long)]
    pub port: Option<u16>,
    /// A key the simulator accepts, as KEY or KEY@PROJECT (repeatable). Without any, every key
    /// is accepted and is its own project.
    #[arg(long = "key", value_name = "KEY[@PROJECT]")]
    pub keys: Vec<String>,
    /// Requests per minute for every model.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Input tokens per minute for every model.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests per day for every model.
    #[arg(long)]
    pub rpd: Option<u64>,
    /// Probability of a 503 per request.
    #[arg(long)]
    pub p503: Option<f64>,
    /// Probability of a 500 per request.
    #[arg(long)]
    pub p500: Option<f64>,
    /// Added latency per request, in milliseconds.
    #[arg(long)]
    pub latency_ms: Option<u64>,
}

impl SimArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> Result<SimConfig, SimConfigError> {
        let mut cfg = match &self.config {
            Some(p) => SimConfig::from_file(p)?,
            None => SimConfig::default(),
        };
        if let Some(b) = self.bind {
            cfg.bind = b;
        }
        if let Some(p) = self.port {
            cfg.port = p;
        }
        for (i, k) in self.keys.iter().enumerate() {
            let (key, project) = match k.split_once('@') {
                Some((k, p)) => (k.to_owned(), Some(p.to_owned())),
                None => (k.clone(), None),
            };
            cfg.keys.push(SimKey {
                key,
                label: Some(format!("key-{}", i + 1)),
                project,
                state: KeyState::Valid,
            });
        }
        if self.rpm.is_some() || self.tpm.is_some() || self.rpd.is_some() {
            let over = Limits {
                rpm: self.rpm,
                tpm: self.tpm,
                rpd: self.rpd,
            };
            for m in crate::config::SERVED_MODELS {
                let cur = cfg.models.entry(m.name.to_owned()).or_default();
                cur.rpm = over.rpm.or(cur.rpm);
                cur.tpm = over.tpm.or(cur.tpm);
                cur.rpd = over.rpd.or(cur.rpd);
            }
        }
        if let Some(p) = self.p503 {
            cfg.faults.p503 = p;
        }
        if let Some(p) = self.p500 {
            cfg.faults.p500 = p;
        }
        if let Some(l) = self.latency_ms {
            cfg.faults.latency_ms = l;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
