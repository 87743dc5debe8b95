//! AdamW, gradient clipping and the EMA on one flat buffer.
//!
//! Every trainable variable becomes a view into one contiguous fp32 buffer (the master
//! weights), so an optimizer step is a handful of kernels however many tensors the model has
//! (what `torch.optim.AdamW(fused=True)` buys), and the state (moments, EMA) is three more flat
//! buffers. With bf16 training the model's variables are views into a bf16 copy instead, which
//! is refreshed from the master after each step.

use std::collections::BTreeMap;

use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::run_config::OptimConfig;

/// One trainable variable's place in the flat buffers.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<i64>,
    pub offset: i64,
    pub numel: i64,
}

/// The trainable variables of a VarStore, flattened; AdamW state and EMA beside them.
#[derive(Debug)]
pub struct FlatOptimizer {
    pub slots: Vec<Slot>,
    /// fp32 master weights.
    pub master: Tensor,
    /// bf16 working copy the variables view (bf16 training only).
    working: Option<Tensor>,
    /// The variables' gradients: each variable's `.grad` is a view into this one buffer (of
    /// the working kind), so backward accumulates into it, zeroing is one kernel and reading
    /// the flat gradient copies nothing (fp32).
    grads: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// EMA of the master weights (`None` when the decay is 0).
    pub ema: Option<Tensor>,
    /// Optimizer steps taken.
    pub step: u64,
    cfg: OptimConfig,
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

impl FlatOptimizer {
    /// Flattens the variables of `vs` that require gradients (sorted by name). With
    /// `working = Some(Kind::BFloat16)` the model computes in bf16.
    pub fn new(vs: &VarStore, cfg: &OptimConfig, working: Option<Kind>) -> Result<Self> {
        let device = vs.device();
        let mut vars: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if vars.is_empty() {
            return Err(Error::input("the model has no trainable variables"));
        }
        let mut slots = vec![];
        let mut offset = 0;
        for (name, v) in &vars {
            let numel = v.numel() as i64;
            slots.push(Slot { name: name.clone(), shape: v.size(), offset, numel });
            offset += numel;
        }
        let _g = tch::no_grad_guard();
        let master = Tensor::zeros([offset], (Kind::Float, device));
        for (s, (_, v)) in slots.iter().zip(&vars) {
            master.narrow(0, s.offset, s.numel).copy_(&v.to_kind(Kind::Float).reshape([-1]));
        }
        let working = working.map(|k| master.to_kind(k));
        let backing = working.as_ref().unwrap_or(&master);
        let mut tensors = vec![];
        for (s, (_, v)) in slots.iter().zip(vars) {
            let mut v = v;
            v.set_data(&backing.narrow(0, s.offset, s.numel).view(s.shape.as_slice()));
            tensors.push(v);
        }
        let grads = backing.zeros_like();
        for (s, v) in slots.iter().zip(&tensors) {
            crate::dist::set_grad(v, &grads.narrow(0, s.offset, s.numel).view(s.shape.as_slice()))?;
        }
        let ema = (cfg.ema_decay > 0.0).then(|| master.copy());
        Ok(FlatOptimizer {
            grads,
            slots,
            exp_avg: master.zeros_like(),
            exp_avg_sq: master.zeros_like(),
            master,
            working,
            ema,
            step: 0,
            cfg: cfg.clone(),
        })
    }

    pub fn numel(&self) -> i64 {
        self.master.numel() as i64
    }

    pub fn device(&self) -> Device {
        self.master.device()
    }

    /// Learning rate at optimizer step `step` (0-based): linear warmup, then constant.
    pub fn lr_at(&self, step: u64) -> f64 {
        let w = self.cfg.warmup_steps;
        if w == 0 || step >= w {
            self.cfg.lr
        } else {
            self.cfg.lr * (step + 1) as f64 / w as f64
        }
    }

    /// Clears the variables' gradients (before the first micro-batch of a step): one kernel
    /// on the flat gradient buffer.
    pub fn zero_grad(&mut self) {
        let _g = tch::no_grad_guard();
        let _ = self.grads.zero_();
    }

    /// The gradients as one flat fp32 tensor, divided by `scale` (the micro-batches summed):
    /// what a data-parallel run all-reduces before [`FlatOptimizer::apply`].
    pub fn flat_grad(&self, scale: f64) -> Tensor {
        let g = self.grads.to_kind(Kind::Float);
        if scale != 1.0 {
            g / scale
        } else {
            g
        }
    }

    /// One AdamW step (PyTorch's formula) on the accumulated gradients divided by `scale`,
    /// after clipping their global norm; then the EMA and the bf16 copy. A non-finite
    /// gradient norm changes nothing and is returned as the error.
    pub fn step(&mut self, scale: f64) -> std::result::Result<StepStats, f64> {
        let g = {
            let _g = tch::no_grad_guard();
            self.flat_grad(scale)
        };
        self.apply(g)
    }

    /// [`FlatOptimizer::step`] on a given flat gradient (e.g. averaged over ranks).
    pub fn apply(&mut self, mut g: Tensor) -> std::result::Result<StepStats, f64> {
        let _g = tch::no_grad_guard();
        let grad_norm = g.norm().double_value(&[]);
        if !grad_norm.is_finite() {
            return Err(grad_norm);
        }
        if self.cfg.clip_grad_norm > 0.0 && grad_norm > self.cfg.clip_grad_norm {
            g = g * (self.cfg.clip_grad_norm / (grad_norm + 1e-6));
        }
        let lr = self.lr_at(self.step);
        self.step += 1;
        let [b1, b2] = self.cfg.betas;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        if self.cfg.weight_decay > 0.0 {
            let _ = self.master.g_mul_scalar_(1.0 - lr * self.cfg.weight_decay);
        }
        let _ = self.exp_avg.lerp_(&g, 1.0 - b1);
        let _ = self.exp_avg_sq.g_mul_scalar_(b2);
        let _ = self.exp_avg_sq.addcmul_(&(&g * (1.0 - b2)), &g);
        let denom = (self.exp_avg_sq.sqrt() / bc2.sqrt()) + self.cfg.eps;
        let _ = self.master.addcdiv_(&(&self.exp_avg * (-lr / bc1)), &denom);
        if let Some(e) = &mut self.ema {
            let _ = e.lerp_(&self.master, 1.0 - self.cfg.ema_decay);
        }
        if let Some(w) = &mut self.working {
            w.copy_(&self.master);
        }
        Ok(StepStats { grad_norm, lr })
    }

    /// Per-variable views of a flat buffer, by name.
    pub fn named(&self, flat: &Tensor) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), flat.narrow(0, s.offset, s.numel).view(s.shape.as_slice())))
            .collect()
    }

    /// Copies named tensors into a flat buffer; every slot must be present with its shape.
    pub fn load_named(&self, flat: &Tensor, tensors: &BTreeMap<String, Tensor>, what: &str) -> Result<()> {
        let _g = tch::no_grad_guard();
        for s in &self.slots {
            let t = tensors
                .get(&s.name)
                .ok_or_else(|| Error::input(format!("{what}: {} is missing", s.name)))?;
            if t.size() != s.shape {
                return Err(Error::input(format!(
                    "{what}: {} has shape {:?}, the model {:?}",
                    s.name,
                    t.size(),
                    s.shape
                )));
            }
            flat.narrow(0, s.offset, s.numel).copy_(&t.reshape([-1]).to_kind(Kind::Float));
        }
        Ok(())
    }

    /// After the master weights were loaded: refresh the bf16 copy.
    pub fn sync_working(&mut self) {
        let _g = tch::no_grad_guard();
        if let Some(w) = &mut self.working {
            w.copy_(&self.master);
        }
    }

    /// Resets the EMA to the current weights (after loading weights from elsewhere).
    pub fn reset_ema(&mut self) {
        let _g = tch::no_grad_guard();
        if let Some(e) = &mut self.ema {
            e.copy_(&self.master);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, VarStore};

    /// Backward accumulates into the flat buffer: two backward passes give the sum of their
    /// gradients, `flat_grad` lays them out slot by slot, and `zero_grad` clears them.
    #[test]
    fn gradients_accumulate_in_the_flat_buffer() {
        let vs = VarStore::new(Device::Cpu);
        let lin = tch::nn::linear(&vs.root() / "lin", 3, 2, Default::default());
        let cfg: OptimConfig = toml::from_str("").expect("default optim config");
        let mut opt = FlatOptimizer::new(&vs, &cfg, None).expect("optimizer");
        let x = Tensor::from_slice(&[1.0f32, 2.0, -1.0, 0.5, 0.0, 3.0]).view([2, 3]);
        // d/dW sum(Wx + b) = sum of the rows of x, d/db = 2 (per output).
        let expect_w: Vec<f32> = vec![1.5, 2.0, 2.0, 1.5, 2.0, 2.0];
        for passes in [1usize, 2] {
            opt.zero_grad();
            for _ in 0..passes {
                lin.forward(&x).sum(Kind::Float).backward();
            }
            let g = Vec::<f32>::try_from(opt.flat_grad(1.0)).expect("flat grad");
            // Slots are sorted by name: lin.bias, then lin.weight.
            let p = passes as f32;
            assert_eq!(&g[..2], &[2.0 * p, 2.0 * p]);
            assert_eq!(&g[2..], expect_w.iter().map(|w| w * p).collect::<Vec<_>>().as_slice());
            assert_eq!(Vec::<f32>::try_from(lin.ws.grad().reshape([-1])).unwrap(), g[2..].to_vec(), "the variable's grad is the buffer");
        }
        opt.zero_grad();
        assert!(Vec::<f32>::try_from(opt.flat_grad(1.0)).unwrap().iter().all(|v| *v == 0.0));
    }
}
