//! Errors of the image ingestion path. Bad *inputs* are never errors (they become rejects);
//! these are the problems that stop a run, each naming the file and, where it applies, the
//! tar member or table row.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: member {member}: {msg}", path.display())]
    Tar { path: PathBuf, member: String, msg: String },
    #[error("{}: row {row}: {msg}", path.display())]
    Table { path: PathBuf, row: u64, msg: String },
    #[error("{}: line {line}: {msg}", path.display())]
    Labels { path: PathBuf, line: usize, msg: String },
    #[error("{}: {msg}", path.display())]
    Source { path: PathBuf, msg: String },
    #[error("settings: {0}")]
    Settings(String),
    #[error("{}: cannot resume: {msg}", path.display())]
    Resume { path: PathBuf, msg: String },
    #[error("JPEG codec: {0}")]
    Codec(String),
    #[error("T5 encoder: {0}")]
    T5(#[from] crate::t5::T5Error),
    #[error(transparent)]
    Shards(#[from] mdm_shards::Error),
}

impl From<mdm_shards::durable::WriteError> for Error {
    fn from(e: mdm_shards::durable::WriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
