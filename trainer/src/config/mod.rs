//! Model and diffusion configuration in ml-mdm's field names, in three steps:
//!
//! - [`format`]: the file as written, our TOML mirror of ml-mdm's YAML (`configs/models/*.toml`)
//!   or a reference fixture's `*_config.json` (its descriptive keys dropped). Unknown keys are
//!   an error.
//! - [`derive`](ModelConfig::from_parsed): validates a [`ConfigFile`] once, deriving one
//!   [`LevelSpec`] per nesting level; nothing is mutated afterwards.
//! - [`spec`]: the derived, typed levels and the block plan the model is built from.

mod derive;
pub mod diffusion;
pub mod format;
pub mod spec;

pub use diffusion::DiffusionConfig;
pub use format::{ConfigFile, IntList, ModelKind, ResNetConfig, UNetConfig};
pub use spec::{Attention, BlockSpec, Blocks, LevelSpec, Micro, ModelConfig, NestedSpec, Resample, Resolution, Temporal, Text};

/// Head width of temporal attention (ml-mdm's `num_head_channels=32`).
pub const TEMPORAL_HEAD_CHANNELS: i64 = 32;
