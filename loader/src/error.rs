//! The loader's error type: every variant names what it concerns (shard and row, manifest,
//! state file, setting).

use std::path::PathBuf;

/// A row that could not be used: its checksum does not match, or its payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// Shard file (local path or object URL).
    pub shard: String,
    /// Row within the shard.
    pub row: u64,
    /// Sample id, when the id column could be read.
    pub id: Option<String>,
    pub what: String,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {}", self.shard, self.row)?;
        if let Some(id) = &self.id {
            write!(f, " (id {id:?})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Errors of building or running a loader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a shard set or one of its files.
    #[error(transparent)]
    Shards(#[from] mdm_shards::Error),
    /// A setting, or a combination of settings and shard sets, that cannot work.
    #[error("loader settings: {0}")]
    Config(String),
    /// Shard sets that cannot be mixed (their kind or text encoder differ).
    #[error("cannot mix {a} and {b}: {what}")]
    Mix { a: String, b: String, what: String },
    /// A saved state that does not belong to this loader's configuration.
    #[error("loader state: {0}")]
    State(String),
    /// A row that is corrupt under [`crate::CorruptPolicy::Fail`].
    #[error("corrupt row: {0}")]
    Corrupt(Corrupt),
    /// A shard file whose contents do not match its manifest or format.
    #[error("{shard}: {what}")]
    Shard { shard: String, what: String },
    /// Local file system (order log, cache).
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, #[source] source: std::io::Error },
    /// Object store request that failed after its retries.
    #[error("{url}: {what}")]
    Store { url: String, what: String },
    /// A pipeline thread stopped unexpectedly.
    #[error("loader pipeline: {0}")]
    Pipeline(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<mdm_shards::durable::WriteError> for Error {
    fn from(e: mdm_shards::durable::WriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
