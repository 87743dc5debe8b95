//! The one error type of this crate; every variant names the file it concerns where there is one.

use std::path::PathBuf;

/// Errors from reading weights, images and statistics, or from the metrics themselves.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, #[source] source: std::io::Error },
    /// A weights file that is unreadable or lacks/misshapes a tensor.
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    /// A file that is readable but is not what it should be (image, .npz, JSON, manifest).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Two sets of statistics (or features) of different dimensions.
    #[error("dimensions differ: {a} against {b}")]
    DimsMismatch { a: usize, b: usize },
    /// Arguments that cannot be evaluated (shapes, dimensions, empty inputs).
    #[error("{0}")]
    Input(String),
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
