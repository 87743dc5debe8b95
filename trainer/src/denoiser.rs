//! The network and its diffusion as one [`Denoiser`] that owns the training loss (the way
//! EDM and k-diffusion wrap a network): a micro-batch of level groups and its random draws in,
//! the loss terms of every level out. The trainer, the benches, the tests and the crate's
//! example all call [`Denoiser::loss`]; nothing else runs the training forward pass.

use tch::{Device, Kind, Tensor};

use crate::diffusion::{LossTerms, NestedDiffusion};
use crate::error::{Error, Result};
use crate::model::{cfg_dropout_with, Conditioning, MdmUNet, ModelInput, Trace};

/// One micro-batch on the device.
#[derive(Debug)]
pub struct TrainBatch {
    /// Per level, outermost first: the samples drawn at that level's side, as floats in
    /// [−1, 1], (n_i, 3, S_i, S_i). A sample trains its level and every level inside it.
    pub groups: Vec<Tensor>,
    /// The condition of every sample, in group order (outermost group first).
    pub cond: Conditioning,
    /// Sample ids in group order.
    pub ids: Vec<String>,
    /// Each sample's index in the loader's global step (all ranks), in group order: what its
    /// random draws are keyed by.
    pub index: Vec<u64>,
    /// Frames per sample: a video clip's frames are consecutive rows of its group (1 for
    /// images); `cond` has one row per sample.
    pub frames: i64,
}

impl TrainBatch {
    /// A batch of level groups without loader ids (samples are numbered in group order).
    pub fn new(groups: Vec<Tensor>, cond: Conditioning, frames: i64) -> Result<Self> {
        if frames < 1 || groups.iter().any(|g| g.dim() != 4 || g.size()[0] % frames != 0) {
            return Err(Error::input(format!("image groups must be (n·{frames}, 3, S, S): whole clips of {frames} frames")));
        }
        let n: i64 = groups.iter().map(|g| g.size()[0] / frames).sum();
        Ok(TrainBatch {
            groups,
            cond,
            ids: (0..n).map(|i| i.to_string()).collect(),
            index: (0..n as u64).collect(),
            frames,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Samples per level group.
    pub fn group_sizes(&self) -> Vec<i64> {
        self.groups.iter().map(|g| g.size()[0] / self.frames).collect()
    }
}

/// The random draws of one micro-batch.
#[derive(Debug)]
pub struct Draws {
    /// (samples,) int64 diffusion times, one per sample (a clip's frames share it).
    pub time: Tensor,
    /// (samples,) uniform draws for CFG dropout.
    pub uniform: Tensor,
    /// Per level, the noise of that level's rows (its samples in group order).
    pub noise: Vec<Tensor>,
}

/// What a loss needs besides the batch and its draws.
#[derive(Debug, Clone, Default)]
pub struct LossOptions {
    /// Probability of replacing a sample's condition by the null condition.
    pub cfg_dropout: f64,
    /// Each level's share of the whole global batch (all ranks), which its loss is
    /// renormalised by; `None`: this batch's own shares.
    pub shares: Option<Vec<f64>>,
}

/// A network with its diffusion process.
#[derive(Debug, Clone, Copy)]
pub struct Denoiser<'a> {
    pub model: &'a MdmUNet,
    pub diffusion: &'a NestedDiffusion,
}

impl<'a> Denoiser<'a> {
    pub fn new(model: &'a MdmUNet, diffusion: &'a NestedDiffusion) -> Self {
        Denoiser { model, diffusion }
    }

    /// A batch of images at the outermost level only: every sample trains every level.
    pub fn batch_of(&self, images: Tensor, cond: Conditioning) -> Result<TrainBatch> {
        let groups = self.diffusion.outer_groups(&images)?;
        TrainBatch::new(groups, cond, 1)
    }

    /// Draws for `batch` from libtorch's running RNG: the times, then every level's noise,
    /// then the dropout uniforms. (The trainer draws per sample instead, keyed by the sample's
    /// place in the global step: `train::draw_samples`.)
    pub fn draw(&self, batch: &TrainBatch) -> Result<Draws> {
        let device = batch.groups.first().map_or(Device::Cpu, |g| g.device());
        let n = batch.len() as i64;
        let time = Tensor::randint(self.diffusion.schedule.steps, [n], (Kind::Int64, device));
        let mut noise = vec![];
        let mut rows = 0;
        for g in &batch.groups {
            rows += g.size()[0];
            let s = g.size();
            noise.push(Tensor::randn([rows, s[1], s[2], s[3]], (Kind::Float, device)));
        }
        let uniform = Tensor::rand([n], (Kind::Float, device));
        Ok(Draws { time, uniform, noise })
    }

    /// ml-mdm's fixed batch split (`diffusion_config.mixed_ratio`, as cumulative shares `m`,
    /// one per level, the last 1): of a batch drawn wholly at the outermost level, the first
    /// ⌊m_i·B⌋ samples train level i (and every level inside it). Returns the batch as level
    /// groups (the samples past ⌊m_{i−1}·B⌋ average-pooled to level i's side, order kept) and
    /// the draws with each level's noise cut to the samples that train it. Give the loss
    /// `LossOptions { shares: Some(m) }`: ml-mdm renormalises by the nominal share.
    pub fn split(&self, batch: TrainBatch, draws: Draws, m: &[f64]) -> Result<(TrainBatch, Draws)> {
        let levels = self.diffusion.levels();
        let sizes = batch.group_sizes();
        if sizes.iter().skip(1).any(|&n| n != 0) {
            return Err(Error::input(format!("a fixed batch split needs every sample at the outermost level, got groups of {sizes:?}")));
        }
        if m.len() != levels || m.windows(2).any(|w| w[0] > w[1]) || m.last().is_none_or(|&x| (x - 1.0).abs() > 1e-9) || m[0] <= 0.0 {
            return Err(Error::input(format!("batch split {m:?}: one cumulative share per level ({levels}), rising to 1")));
        }
        if draws.noise.len() != levels {
            return Err(Error::input(format!("{} noise tensors for {levels} levels", draws.noise.len())));
        }
        let f = batch.frames;
        let b = batch.len() as i64;
        let keep: Vec<i64> = m.iter().map(|&r| (r * b as f64) as i64).collect();
        let pyramid = self.diffusion.pyramid(&batch.groups[0]);
        let mut groups = vec![];
        let mut done = 0;
        for (i, level) in pyramid.iter().enumerate() {
            groups.push(level.narrow(0, done * f, (keep[i] - done) * f));
            done = keep[i];
        }
        let noise = draws.noise.iter().zip(&keep).map(|(n, &k)| n.narrow(0, 0, k * f)).collect();
        Ok((TrainBatch { groups, ..batch }, Draws { noise, ..draws }))
    }

    /// The training loss of `batch`: CFG dropout from `draws.uniform`, every level noised at
    /// its shifted γ(t) (outer groups average-pooled into the inner levels), one forward pass,
    /// the per-sample MSE in the loss target's space per level, weighted and summed. Call
    /// `.total.mean(Kind::Float).backward()` on the result.
    pub fn loss(&self, batch: &TrainBatch, draws: &Draws, opts: &LossOptions) -> Result<LossTerms> {
        if draws.time.size() != [batch.len() as i64] {
            return Err(Error::input(format!("{} samples but draws for {:?}", batch.len(), draws.time.size())));
        }
        let cond = cfg_dropout_with(batch.cond.shallow_clone(), &draws.uniform, opts.cfg_dropout, self.model.null_class())?;
        let time = per_frame(&draws.time, batch.frames);
        let noise = draws.noise.iter().map(|n| n.shallow_clone()).collect();
        let mut inputs = self.diffusion.inputs_grouped_with(&batch.groups, &time, Some(noise))?;
        inputs.shares = opts.shares.clone();
        let input = ModelInput::new(&inputs.x_t, &draws.time, &cond).with_frames(batch.frames);
        let preds = self.model.forward(&input, true, &mut Trace::off())?;
        self.diffusion.loss(&inputs, &preds)
    }
}

/// A clip's time repeated for each of its frames.
fn per_frame(clip_time: &Tensor, frames: i64) -> Tensor {
    if frames > 1 {
        clip_time.repeat_interleave_self_int(frames, Some(0), None)
    } else {
        clip_time.shallow_clone()
    }
}
