//! The T5 encoder stack in tch, following HF `modeling_t5.py` (eval mode):
//! embedding (unscaled) → N pre-norm blocks [self-attention with a shared relative position
//! bias and no 1/√d_kv scaling; feed-forward] → final RMS norm.

use tch::{nn, Kind, Tensor};

use super::config::{Activation, FeedForward, T5Config};
use super::weights::Checkpoint;
use super::T5Error;

/// The buckets T5 uses for (key_pos − query_pos), bidirectional, as a row-major
/// `[q_len, k_len]` table. Matches HF `_relative_position_bucket` (computed in f32).
pub fn relative_position_buckets(
    q_len: usize,
    k_len: usize,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<i64> {
    let half = (num_buckets / 2) as i64;
    let max_exact = half / 2;
    // HF: log(n / max_exact) / log(max_distance / max_exact) * (half - max_exact), in f32
    // with the middle log taken in f64 (Python's math.log).
    let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let mut out = Vec::with_capacity(q_len * k_len);
    for q in 0..q_len as i64 {
        for k in 0..k_len as i64 {
            let rel = k - q;
            let mut b = if rel > 0 { half } else { 0 };
            let n = rel.abs();
            b += if n < max_exact {
                n
            } else {
                let x = (n as f32 / max_exact as f32).ln() / denom * (half - max_exact) as f32;
                (max_exact + x as i64).min(half - 1)
            };
            out.push(b);
        }
    }
    out
}

struct Block {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ln_attn: Tensor,
    /// `wi` (plain) or `wi_0` (gated).
    wi0: Tensor,
    /// `wi_1` (gated only).
    wi1: Option<Tensor>,
    wo: Tensor,
    ln_ff: Tensor,
}

/// Intermediate tensors for checking against a reference implementation.
pub struct T5Debug {
    pub embed: Tensor,
    /// Output of each block, before the final norm.
    pub blocks: Vec<Tensor>,
    /// `[1, heads, T, T]`, without the mask.
    pub position_bias: Tensor,
}

/// A T5 encoder whose variables live in a `VarStore` under the HF checkpoint names.
pub struct T5Encoder {
    cfg: T5Config,
    ff: FeedForward,
    shared: Tensor,
    rel_bias: Tensor,
    blocks: Vec<Block>,
    final_ln: Tensor,
    /// Use libtorch's fused attention (`scaled_dot_product_attention`); explicit softmax
    /// otherwise.
    pub fused_attention: bool,
}

/// Walks `p` along a dotted HF key and creates the variable there: norms start at 1,
/// everything else at 0 (weights are expected to come from a checkpoint).
fn var(p: &nn::Path, key: &str, shape: &[i64]) -> Result<Tensor, T5Error> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let name = parts.pop().unwrap_or(key);
    let sub = parts.iter().fold(p.clone(), |acc, s| acc.sub(*s));
    let is_norm = key.ends_with("layer_norm.weight");
    let t = if is_norm {
        Tensor::f_ones(shape, (p.kind(), p.device()))?
    } else {
        Tensor::f_zeros(shape, (p.kind(), p.device()))?
    };
    Ok(sub.add(name, t, false))
}

/// T5's layer norm: RMS only (no mean, no bias), statistics in f32, result in the weight's
/// dtype.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, T5Error> {
    let x32 = x.f_to_kind(Kind::Float)?;
    let var = x32
        .f_pow_tensor_scalar(2)?
        .f_mean_dim(-1, true, Kind::Float)?;
    let h = x32.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?;
    Ok(h.f_to_kind(w.kind())?.f_mul(w)?)
}

fn act(x: &Tensor, a: Activation) -> Result<Tensor, T5Error> {
    Ok(match a {
        Activation::Relu => x.f_relu()?,
        Activation::Gelu => x.f_gelu("none")?,
        Activation::GeluTanh => x.f_gelu("tanh")?,
        Activation::Silu => x.f_silu()?,
    })
}

impl T5Encoder {
    /// Creates the encoder's variables under `p`, named as the HF keys
    /// (see [`T5Config::encoder_param_shapes`]), in `p`'s kind and device.
    pub fn new(p: &nn::Path, cfg: &T5Config) -> Result<Self, T5Error> {
        let ff = cfg.feed_forward().map_err(T5Error::BadOption)?;
        let mut vars = std::collections::HashMap::new();
        for (key, shape) in cfg.encoder_param_shapes() {
            let t = var(p, &key, &shape)?;
            vars.insert(key, t);
        }
        let mut take = |k: String| {
            vars.remove(&k)
                .ok_or_else(|| T5Error::BadOption(format!("internal: no variable {k}")))
        };
        let shared = take("shared.weight".into())?;
        let rel_bias =
            take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into())?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let a = format!("encoder.block.{i}.layer.0");
            let f = format!("encoder.block.{i}.layer.1.DenseReluDense");
            let (wi0, wi1) = if ff.gated {
                (
                    take(format!("{f}.wi_0.weight"))?,
                    Some(take(format!("{f}.wi_1.weight"))?),
                )
            } else {
                (take(format!("{f}.wi.weight"))?, None)
            };
            blocks.push(Block {
                q: take(format!("{a}.SelfAttention.q.weight"))?,
                k: take(format!("{a}.SelfAttention.k.weight"))?,
                v: take(format!("{a}.SelfAttention.v.weight"))?,
                o: take(format!("{a}.SelfAttention.o.weight"))?,
                ln_attn: take(format!("{a}.layer_norm.weight"))?,
                wi0,
                wi1,
                wo: take(format!("{f}.wo.weight"))?,
                ln_ff: take(format!("encoder.block.{i}.layer.1.layer_norm.weight"))?,
            });
        }
        let final_ln = take("encoder.final_layer_norm.weight".into())?;
        Ok(T5Encoder {
            cfg: cfg.clone(),
            ff,
            shared,
            rel_bias,
            blocks,
            final_ln,
            fused_attention: true,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// The variables in checkpoint order, as (HF key, tensor).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        let gated = self.ff.gated;
        v.push(("shared.weight".to_string(), self.shared.shallow_clone()));
        for (i, b) in self.blocks.iter().enumerate() {
            let a = format!("encoder.block.{i}.layer.0");
            v.push((format!("{a}.SelfAttention.q.weight"), b.q.shallow_clone()));
            v.push((format!("{a}.SelfAttention.k.weight"), b.k.shallow_clone()));
            v.push((format!("{a}.SelfAttention.v.weight"), b.v.shallow_clone()));
            v.push((format!("{a}.SelfAttention.o.weight"), b.o.shallow_clone()));
            if i == 0 {
                v.push((
                    format!("{a}.SelfAttention.relative_attention_bias.weight"),
                    self.rel_bias.shallow_clone(),
                ));
            }
            v.push((format!("{a}.layer_norm.weight"), b.ln_attn.shallow_clone()));
            let f = format!("encoder.block.{i}.layer.1");
            if gated {
                v.push((
                    format!("{f}.DenseReluDense.wi_0.weight"),
                    b.wi0.shallow_clone(),
                ));
                if let Some(w) = &b.wi1 {
                    v.push((format!("{f}.DenseReluDense.wi_1.weight"), w.shallow_clone()));
                }
            } else {
                v.push((
                    format!("{f}.DenseReluDense.wi.weight"),
                    b.wi0.shallow_clone(),
                ));
            }
            v.push((
                format!("{f}.DenseReluDense.wo.weight"),
                b.wo.shallow_clone(),
            ));
            v.push((format!("{f}.layer_norm.weight"), b.ln_ff.shallow_clone()));
        }
        v.push((
            "encoder.final_layer_norm.weight".to_string(),
            self.final_ln.shallow_clone(),
        ));
        v
    }

    /// Copies the encoder tensors from `ck` into the variables (converting dtype and
    /// device). `shared.weight` may also be stored as `encoder.embed_tokens.weight`; all
    /// other checkpoint tensors are ignored. Missing tensors are named in the error.
    pub fn load(&mut self, ck: &Checkpoint) -> Result<(), T5Error> {
        let _g = tch::no_grad_guard();
        let params = self.named_parameters();
        let resolve = |key: &str| -> Option<String> {
            if ck.contains(key) {
                Some(key.to_string())
            } else if key == "shared.weight" && ck.contains("encoder.embed_tokens.weight") {
                Some("encoder.embed_tokens.weight".to_string())
            } else {
                None
            }
        };
        let missing: Vec<String> = params
            .iter()
            .filter(|(k, _)| resolve(k).is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            return Err(T5Error::MissingKeys {
                dir: ck.dir().to_path_buf(),
                keys: missing,
            });
        }
        for (key, mut var) in params {
            let Some(src_key) = resolve(&key) else {
                continue;
            };
            let want = var.size();
            let got = ck.shape(&src_key).map(|s| s.to_vec()).unwrap_or_default();
            let path = ck.file_of(&src_key).unwrap_or(ck.dir()).to_path_buf();
            if got != want {
                return Err(T5Error::Shape {
                    path,
                    key: src_key,
                    got,
                    want,
                });
            }
            if let Some(t) = ck.read(&src_key)? {
                var.f_copy_(&t)?;
            }
        }
        Ok(())
    }

    /// Total number of parameters.
    pub fn num_parameters(&self) -> i64 {
        self.named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// `[1, heads, T, T]` relative position bias (no mask).
    fn position_bias(&self, t: i64) -> Result<Tensor, T5Error> {
        let b = relative_position_buckets(
            t as usize,
            t as usize,
            self.cfg.relative_attention_num_buckets,
            self.cfg.relative_attention_max_distance,
        );
        let idx = Tensor::f_from_slice(&b)?
            .f_view([t, t])?
            .f_to_device(self.shared.device())?;
        let vals = Tensor::f_embedding(&self.rel_bias, &idx, -1, false, false)?; // [T, T, H]
        Ok(vals.f_permute([2, 0, 1])?.f_unsqueeze(0)?)
    }

    /// Last hidden states `[B, T, d_model]` (model dtype, padded positions computed too)
    /// for `ids` `[B, T]` (int64) and `mask` `[B, T]` (1 = token), both on the model's device.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, T5Error> {
        self.forward_impl(ids, mask, false, None)
    }

    /// The last hidden states of the real tokens only, `[N, d_model]` in row-major order of
    /// `mask`'s ones (for left-aligned rows: row after row). Everything but the attention
    /// runs on those N rows: padding costs nothing in the linear layers, which hold most of the
    /// work. Equal to [`T5Encoder::forward`] at the real positions.
    pub fn forward_packed(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, T5Error> {
        self.forward_impl(ids, mask, true, None)
    }

    /// [`T5Encoder::forward`] plus intermediate tensors.
    pub fn forward_debug(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, T5Debug), T5Error> {
        let mut dbg = T5Debug {
            embed: Tensor::new(),
            blocks: Vec::new(),
            position_bias: Tensor::new(),
        };
        let out = self.forward_impl(ids, mask, false, Some(&mut dbg))?;
        Ok((out, dbg))
    }

    /// Runs the blocks on rows: all B·T positions, or (`packed`) only the real ones, which the
    /// attention scatters into the padded `[B, H, T, dk]` layout and gathers back from.
    fn forward_impl(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        packed: bool,
        mut dbg: Option<&mut T5Debug>,
    ) -> Result<Tensor, T5Error> {
        let _g = tch::no_grad_guard();
        let size = ids.size();
        let [b, t] = size.as_slice() else {
            return Err(T5Error::BadOption(format!(
                "ids must be [batch, len], got {size:?}"
            )));
        };
        let (b, t) = (*b, *t);
        if mask.size() != size {
            return Err(T5Error::BadOption(format!(
                "mask must be {size:?} like ids, got {:?}",
                mask.size()
            )));
        }
        let kind = self.shared.kind();
        let (h, dk) = (self.cfg.num_heads as i64, self.cfg.d_kv as i64);
        let eps = self.cfg.layer_norm_epsilon;

        // Row i of the working tensors is position rows[i] of the flattened [B·T] batch.
        let rows = if packed {
            Some(mask.f_reshape([b * t])?.f_nonzero()?.f_squeeze_dim(1)?)
        } else {
            None
        };
        let flat_ids = ids.f_reshape([b * t])?;
        let row_ids = match &rows {
            Some(r) => flat_ids.f_index_select(0, r)?,
            None => flat_ids,
        };
        let mut x = Tensor::f_embedding(&self.shared, &row_ids, -1, false, false)?; // [R, d]
        let pos = self.position_bias(t)?;
        // Padded keys: finfo(dtype).min added to the scores, as HF does.
        let neg = match kind {
            Kind::BFloat16 => f64::from(half::bf16::MIN),
            Kind::Half => f64::from(half::f16::MIN),
            _ => f64::from(f32::MIN),
        };
        let mask_add = mask
            .f_to_kind(kind)?
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_mul_scalar(neg)?
            .f_view([b, 1, 1, t])?;
        let bias = pos.f_add(&mask_add)?; // [B, H, T, T]
        let d_model = self.cfg.d_model as i64;
        if let Some(d) = dbg.as_deref_mut() {
            d.embed = x.f_view([b, t, d_model])?;
            d.position_bias = pos.shallow_clone();
        }
        // [R, H·dk] rows → [B, H, T, dk] (padded positions of packed rows are zeros, and masked).
        let heads = |y: &Tensor| -> Result<Tensor, tch::TchError> {
            let full = match &rows {
                Some(r) => Tensor::f_zeros([b * t, h * dk], (y.kind(), y.device()))?.f_index_copy(0, r, y)?,
                None => y.shallow_clone(),
            };
            full.f_view([b, t, h, dk])?.f_transpose(1, 2)
        };
        for blk in &self.blocks {
            // Self-attention.
            let n = rms_norm(&x, &blk.ln_attn, eps)?;
            let q = heads(&n.f_linear(&blk.q, None::<Tensor>)?)?;
            let k = heads(&n.f_linear(&blk.k, None::<Tensor>)?)?;
            let v = heads(&n.f_linear(&blk.v, None::<Tensor>)?)?;
            let a = if self.fused_attention {
                Tensor::f_scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(&bias),
                    0.0,
                    false,
                    1.0,
                    false,
                )?
            } else {
                let scores = q.f_matmul(&k.f_transpose(-1, -2)?)?.f_add(&bias)?;
                let p = scores.f_softmax(-1, Kind::Float)?.f_to_kind(kind)?;
                p.f_matmul(&v)?
            };
            let a = a.f_transpose(1, 2)?.f_reshape([b * t, h * dk])?;
            let a = match &rows {
                Some(r) => a.f_index_select(0, r)?,
                None => a,
            };
            x = x.f_add(&a.f_linear(&blk.o, None::<Tensor>)?)?;
            // Feed-forward.
            let n = rms_norm(&x, &blk.ln_ff, eps)?;
            let mut hid = act(&n.f_linear(&blk.wi0, None::<Tensor>)?, self.ff.act)?;
            if let Some(wi1) = &blk.wi1 {
                hid = hid.f_mul(&n.f_linear(wi1, None::<Tensor>)?)?;
            }
            x = x.f_add(&hid.f_linear(&blk.wo, None::<Tensor>)?)?;
            if let Some(d) = dbg.as_deref_mut() {
                d.blocks.push(x.f_view([b, t, d_model])?);
            }
        }
        let out = rms_norm(&x, &self.final_ln, eps)?;
        if packed {
            Ok(out)
        } else {
            Ok(out.f_view([b, t, d_model])?)
        }
    }
}
