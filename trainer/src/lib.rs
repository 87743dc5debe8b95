//! `mdm-trainer`: Matryoshka Diffusion Models (Gu et al. 2023) on tch, compatible with
//! apple/ml-mdm (commit de8cde2): the same configs, parameter names and numerics.
//!
//! - [`config`]: model configs in ml-mdm's field names (TOML mirror of its YAML, or the
//!   reference fixtures' JSON), validated once into a [`config::LevelSpec`] tree;
//! - [`model`]: the (Nested)UNet, [`model::MdmUNet`]; attention runs on libtorch's SDPA;
//! - [`diffusion`]: schedule, multi-resolution training loss and samplers, apart from the
//!   network;
//! - [`denoiser`]: the model with its diffusion, owning the training loss ([`denoiser::Denoiser::loss`]);
//! - [`growth`]: initialising a NestedUNet from a lower-resolution checkpoint;
//! - [`weights`]: safetensors checkpoints under ml-mdm's key names;
//! - [`run_config`]: a training run's TOML (model file, run, data, optim, progressive, sample),
//!   validated once into [`run_config::Resolved`];
//! - [`optim`]: AdamW, clipping and EMA on one flat buffer; [`checkpoint`]: atomic checkpoint
//!   folders, used by training, sampling and [`growth`];
//! - [`train`]: training runs (batches as tensors, the step loop, exact resume, logs);
//! - [`dist`]: data-parallel training: c10d TCPStore + Gloo, NCCL for CUDA tensors, torchrun/Slurm launch;
//! - [`sample`]: sampling a checkpoint, every level at once; [`pictures`]: PNG grids and GIFs;
//! - [`cuda`]: loading libtorch's CUDA backend (call before the first CUDA query).
//!
//! ```no_run
//! use mdm_trainer::{config::ModelConfig, denoiser::{Denoiser, LossOptions}, diffusion::NestedDiffusion, model::{Conditioning, MdmUNet}};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//!
//! # fn main() -> Result<(), mdm_trainer::Error> {
//! let cfg = ModelConfig::from_file("configs/models/cc12m_256x256.toml")?;
//! let vs = VarStore::new(Device::Cpu);
//! let model = MdmUNet::new(&vs.root(), &cfg)?;
//! let diffusion = NestedDiffusion::for_model(&model, &cfg.diffusion(), Device::Cpu)?;
//! let denoiser = Denoiser::new(&model, &diffusion);
//! let images = Tensor::rand([2, 3, 256, 256], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
//! let cond = Conditioning::Text {
//!     tokens: Tensor::randn([2, 8, 2048], (Kind::Float, Device::Cpu)),
//!     mask: Tensor::ones([2, 8], (Kind::Float, Device::Cpu)),
//! };
//! let batch = denoiser.batch_of(images, cond)?;
//! let draws = denoiser.draw(&batch)?;
//! let loss = denoiser.loss(&batch, &draws, &LossOptions { cfg_dropout: 0.1, shares: None })?;
//! loss.total.mean(Kind::Float).backward();
//! # Ok(()) }
//! ```

// `x = x + y` on tensors stays explicit: `+=` would run in place on storage that skips or
// autograd still hold.
#![allow(clippy::assign_op_pattern)]
// `!(x > 0.0)` deliberately rejects NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod config;
pub mod checkpoint;
pub mod cuda;
pub mod denoiser;
pub mod diffusion;
pub mod dist;
pub mod error;
pub mod flops;
pub mod growth;
pub mod model;
pub mod optim;
pub mod pictures;
pub mod run;
pub mod run_config;
pub mod sample;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
/// The tch version this crate is built against (for callers that handle its tensors).
pub use tch;
