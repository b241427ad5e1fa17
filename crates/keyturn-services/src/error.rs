//! Errors of configuration and of building services. They name files, fields and variables;
//! never a key.

use std::path::PathBuf;

use keyturn_core::StoreError;

/// Configuration that cannot be used. All are usage errors (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file cannot be read.
    #[error("cannot read {}: {detail}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("{}: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (it names the field and line).
        detail: String,
    },
    /// A value is out of range.
    #[error("{}: {field}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A limit is wrong.
    #[error("{}: {detail}", path.display())]
    Limits {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the table and field).
        detail: String,
    },
    /// A `[[keys]]` entry names a variable that is not set.
    #[error("{}: keys[{entry}] reads ${var}, which is not set", path.display())]
    MissingEnv {
        /// The file.
        path: PathBuf,
        /// Which entry.
        entry: usize,
        /// The variable.
        var: String,
    },
    /// A keys file line is wrong.
    #[error("{} line {line}: {detail}", path.display())]
    KeysFile {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// A key is unusable.
    #[error("{source_name}: {detail}")]
    Key {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// No keys anywhere.
    #[error("no Gemini API keys found; keyturn looked at {}", looked_at.join(", "))]
    NoKeys {
        /// Where keyturn looked.
        looked_at: Vec<String>,
    },
}

/// Building services failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state backend (a locked or corrupt state file, Redis unreachable).
    #[error(transparent)]
    State(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    /// The metrics exporter could not start.
    #[error("cannot serve metrics on {addr}: {detail}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What went wrong.
        detail: String,
    },
}
