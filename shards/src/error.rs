//! The one error type of this crate; every variant names the file (and row) it concerns.

use std::path::PathBuf;

/// Errors from writing, reading, verifying or merging shards.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("{}: parquet: {source}", path.display())]
    Parquet { path: PathBuf, #[source] source: parquet::errors::ParquetError },
    #[error("{}: arrow: {source}", path.display())]
    Arrow { path: PathBuf, #[source] source: arrow::error::ArrowError },
    #[error("{}: invalid manifest: {source}", path.display())]
    ManifestJson { path: PathBuf, #[source] source: serde_json::Error },
    /// The file is readable but is not what the manifest or format promises.
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// A row of a shard that cannot be turned back into a record.
    #[error("{} row {row}: {msg}", path.display())]
    Row { path: PathBuf, row: u64, msg: String },
    /// A record handed to the writer that does not fit the shard layout.
    #[error("record {id:?}: {msg}")]
    Record { id: String, msg: String },
    /// Manifests that cannot be merged into one.
    #[error("cannot merge manifests: {0}")]
    Merge(String),
}

impl From<crate::durable::WriteError> for Error {
    fn from(e: crate::durable::WriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn pq(path: impl Into<PathBuf>) -> impl FnOnce(parquet::errors::ParquetError) -> Error {
    let path = path.into();
    move |source| Error::Parquet { path, source }
}

pub(crate) fn arrow_err(path: impl Into<PathBuf>) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    let path = path.into();
    move |source| Error::Arrow { path, source }
}
