//! Sampling from a trained checkpoint: every level's output as tensors ([`crate::pictures`]
//! turns them into PNG grids and GIFs).

use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::diffusion::{NestedDiffusion, SampleOptions};
use crate::error::Result;
use crate::model::{null_condition, Conditioning, MdmUNet, Micros};
use crate::checkpoint;
use crate::run_config::{CondKind, Resolved, TrainConfig};

/// A model loaded from a checkpoint, ready to sample.
pub struct Trained {
    pub model: MdmUNet,
    pub diffusion: NestedDiffusion,
    pub run: Resolved,
    pub checkpoint: PathBuf,
    pub device: Device,
    _vs: VarStore,
}

impl Trained {
    /// Loads a checkpoint folder (or a run folder's newest): its config and its EMA weights
    /// (`ema = true`, when it has them) or raw weights.
    pub fn load(path: &Path, ema: bool, device: Device) -> Result<Self> {
        let dir = checkpoint::resolve(path)?;
        let run = TrainConfig::load(&dir.join("config.toml"))?;
        let vs = VarStore::new(device);
        let model = MdmUNet::new(&vs.root(), &run.model)?;
        crate::weights::load_strict(&vs, &checkpoint::weights_file(&dir, ema))?;
        let diffusion = NestedDiffusion::for_model(&model, &run.model.diffusion(), device)?;
        Ok(Trained { model, diffusion, run, checkpoint: dir, device, _vs: vs })
    }

    /// Samples `cond`'s batch (one sample per condition row; `n` for unconditional models)
    /// from seeded noise. Returns every level's images in [−1, 1], outermost first.
    /// Video models give each sample's frames as consecutive rows (n·frames per level).
    pub fn sample(&self, cond: &Conditioning, n: i64, seed: u64, opts: &SampleOptions) -> Result<Vec<Tensor>> {
        let opts = SampleOptions { frames: self.run.frames, ..opts.clone() };
        sample_levels(&self.model, &self.diffusion, &self.run.sides, cond, n, seed, &opts, self.device)
    }

    pub fn cond_kind(&self) -> CondKind {
        self.run.cond
    }
}

/// Samples `n` images (or clips of `opts.frames` frames, consecutive rows) per level with
/// classifier-free guidance against the null condition.
#[allow(clippy::too_many_arguments)]
pub fn sample_levels(
    model: &MdmUNet,
    diffusion: &NestedDiffusion,
    sides: &[u32],
    cond: &Conditioning,
    n: i64,
    seed: u64,
    opts: &SampleOptions,
    device: Device,
) -> Result<Vec<Tensor>> {
    tch::manual_seed(seed as i64);
    let noise: Vec<Tensor> = sides
        .iter()
        .map(|&s| Tensor::randn([n * opts.frames, 3, s as i64, s as i64], (Kind::Float, device)))
        .collect();
    let uncond = null_condition(cond, n, model.null_class())?;
    let uncond = (opts.guidance_scale != 1.0).then_some(&uncond);
    diffusion.sample(model, noise, cond, uncond, &Micros::new(), opts)
}
