//! Why a run could not start or finish, and what kind of failure that is.

use std::path::PathBuf;

use keyturn_store::CheckpointError;

use crate::outdir::OutDirError;
use crate::term::safe;

/// Why a run could not start or finish. Its [`SeedError::kind`] decides the exit code
/// ([`crate::report::exit_code`]); the cause is kept as the error's source, not flattened to text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// An input that does not exist or cannot be read: the user must change the command.
    #[error("{0}")]
    Input(String),
    /// The output folder cannot be used (not keyturn's, held by another run) or read.
    #[error(transparent)]
    OutDir(#[from] OutDirError),
    /// The checkpoint is unusable (a user must act) or could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A folder of the output could not be made.
    #[error("cannot create {}: {source}", safe(&.path.display().to_string()))]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An output file (an episode, the graph, the run report) could not be written.
    #[error(transparent)]
    Write(#[from] keyturn_core::StoreError),
    /// An output could not be encoded as JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which output.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
    /// The rotation state could not be saved at the end of the run.
    #[error("cannot save the quota state: {0}")]
    State(#[source] keyturn_core::StoreError),
}

/// What kind of failure stopped a run before it could report (a report's own outcome is its
/// [`Stop`](super::Stop)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedErrorKind {
    /// The user must change something first.
    Usage,
    /// Anything else.
    Failed,
}

impl SeedError {
    /// The classification, which decides the exit code: an input that does not exist, an output
    /// folder keyturn does not own or another run holds, an unusable checkpoint are usage
    /// errors; a disk error is not.
    pub fn kind(&self) -> SeedErrorKind {
        match self {
            Self::Input(_) => SeedErrorKind::Usage,
            Self::OutDir(e) => e.kind(),
            Self::Checkpoint(e) if e.is_unusable() => SeedErrorKind::Usage,
            _ => SeedErrorKind::Failed,
        }
    }

    /// The exit code of its kind ([`crate::report::exit_code`]): 2 for a usage error, else 1.
    pub fn exit_code(&self) -> u8 {
        crate::report::exit_code(self.kind().into())
    }
}
