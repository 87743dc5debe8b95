//! The multi-resolution diffusion of ml-mdm, kept apart from the network.
//!
//! - [`schedule`]: the ᾱ table (`squaredcos_cap_v2` and ml-mdm's other families) and its
//!   per-level shift by the resolution ratio;
//! - [`loss`]: one training batch (image pyramid, noisy inputs, targets, eps-space MSE summed
//!   over levels, mixed-resolution batches);
//! - [`sampler`]: one DDPM/DDIM step on all levels jointly (pure), timesteps, thresholding,
//!   classifier-free guidance and the sampling loop.

pub mod loss;
pub mod sampler;
pub mod schedule;

pub use loss::{LossTerms, NestedDiffusion, TrainInputs};
pub use sampler::{SampleOptions, Sampler, StepOutput};
pub use schedule::Schedule;
// The diffusion section of a model file is parsed with the rest of it.
pub use crate::config::diffusion::{DiffusionConfig, PredictionType, SamplerConfig, ScheduleType, ThresholdType};
