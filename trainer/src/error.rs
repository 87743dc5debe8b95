//! The crate's error type. Every variant that comes from a file names the file.

use std::path::PathBuf;

/// Errors of `mdm-trainer`: bad configs, bad weight files, bad inputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A config file did not parse (syntax, unknown key, wrong type).
    #[error("{path}: {msg}")]
    ConfigParse { path: PathBuf, msg: String },
    /// A config parsed but is not a model we can build.
    #[error("invalid model config{}: {field}: {msg}", path_suffix(.path))]
    Config {
        path: Option<PathBuf>,
        field: String,
        msg: String,
    },
    /// A diffusion setting is out of range.
    #[error("invalid diffusion config: {0}")]
    Diffusion(String),
    /// A weights file does not match the model built from the config.
    #[error("{path}: weights do not match the model: {msg}")]
    Weights { path: PathBuf, msg: String },
    /// A tensor given to the model or the diffusion has the wrong name, shape or kind.
    #[error("bad input{}: {msg}", path_suffix(.path))]
    Input { path: Option<PathBuf>, msg: String },
    /// A run folder or checkpoint that this run cannot use (checkpoints without `--resume`, a
    /// resume with another config, a stage that cannot grow into this model, a bad state file).
    #[error("{}: {msg}", path.display())]
    Run { path: PathBuf, msg: String },
    /// The loader failed (its error names the shard and row).
    #[error("loader: {0}")]
    Loader(#[from] mdm_loader::Error),
    /// A loader batch that does not fit the run (video vs images, sides, labels, embeddings).
    #[error("batch: {0}")]
    Batch(String),
    /// The device the config asks for is not there.
    #[error("device: {0}")]
    Device(String),
    /// A PNG or GIF could not be made.
    #[error("picture: {0}")]
    Picture(String),
    /// Training produced a non-finite loss or gradient; the weights were not updated.
    #[error("step {step}: non-finite loss {loss} or gradient norm {grad_norm}; stopped before updating the weights (last good checkpoint: {})", .checkpoint.as_ref().map_or("none".to_string(), |p| p.display().to_string()))]
    NonFinite { step: u64, loss: f64, grad_norm: f64, checkpoint: Option<PathBuf> },
    /// Data-parallel training failed: launch environment, rendezvous or a collective.
    #[error("rank {rank}: {msg}")]
    Dist { rank: usize, msg: String },
    /// libtorch reported an error (with the file involved, if any).
    #[error("libtorch{}: {source}", path_suffix(.path))]
    Torch {
        path: Option<PathBuf>,
        source: tch::TchError,
    },
}

impl From<mdm_shards::durable::WriteError> for Error {
    fn from(e: mdm_shards::durable::WriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

fn path_suffix(p: &Option<PathBuf>) -> String {
    match p {
        Some(p) => format!(" ({})", p.display()),
        None => String::new(),
    }
}

impl From<tch::TchError> for Error {
    fn from(source: tch::TchError) -> Self {
        Error::Torch { path: None, source }
    }
}

impl Error {
    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::Input {
            path: None,
            msg: msg.into(),
        }
    }
    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: None,
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// Attaches a file path to errors that do not carry one yet.
    pub fn with_path(self, path: impl Into<PathBuf>) -> Self {
        let p = Some(path.into());
        match self {
            Error::Config {
                path: None,
                field,
                msg,
            } => Error::Config {
                path: p,
                field,
                msg,
            },
            Error::Input { path: None, msg } => Error::Input { path: p, msg },
            Error::Torch { path: None, source } => Error::Torch { path: p, source },
            e => e,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
