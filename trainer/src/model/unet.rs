//! One level of the (Nested)UNet: ml-mdm's `UNet.forward_denoising` and
//! `NestedUNet.forward_denoising`, with its inner level when nested.

use tch::{nn, nn::Module, Tensor};

use super::attention::TextSelfAttention;
use super::embeddings::TimeMlp;
use super::resnet::ResNetBlock;
use super::{conv3, group_norm, Conditioning, Ctx, Init, Micros, Trace};
use crate::config::{LevelSpec, Micro};
use crate::error::{Error, Result};

/// What every level of one forward pass shares: per clip `times` and `micros`, per frame the
/// pooled text embedding, the tokens and the cross-attention mask.
pub(crate) struct Shared<'a> {
    pub times: &'a Tensor,
    pub cond_emb: Option<&'a Tensor>,
    pub tokens: Option<&'a Tensor>,
    pub mask: Option<&'a Tensor>,
    pub micros: &'a Micros,
    pub train: bool,
    pub frames: i64,
}

/// The nesting part of a level.
#[derive(Debug)]
pub struct Nest {
    pub inner: Box<UNetLevel>,
    in_adapter: Option<nn::Conv2D>,
    out_adapter: nn::Conv2D,
    skip_normalization: bool,
}

/// One resolution level, with ml-mdm's module names under its path.
#[derive(Debug)]
pub struct UNetLevel {
    spec: LevelSpec,
    time: TimeMlp,
    cond_emb: Option<nn::Linear>,
    micro: Vec<(Micro, TimeMlp)>,
    conv_in: nn::Conv2D,
    down_blocks: Vec<ResNetBlock>,
    mid_blocks: Option<(ResNetBlock, ResNetBlock)>,
    up_blocks: Vec<ResNetBlock>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    lm_proj: Option<nn::Linear>,
    lm_head: Vec<TextSelfAttention>,
    class_emb: Option<nn::Embedding>,
    nest: Option<Nest>,
}

impl UNetLevel {
    /// The kind the weights are stored in (bf16 training keeps the model in bf16).
    pub fn param_kind(&self) -> tch::Kind {
        self.conv_in.ws.kind()
    }

    /// Builds the level and, when nested, its inner levels under `inner_unet`.
    /// `num_classes` adds `class_emb` to the innermost level.
    pub fn new(p: &nn::Path, s: &LevelSpec, cin: i64, cout: i64, num_classes: Option<i64>, init: Init) -> Self {
        let td = s.temporal_dim;
        let text = s.text.filter(|t| t.cond_emb);
        let time = TimeMlp::new(p / "temb_layer1", p / "temb_layer2", td, false, init);
        let cond_emb = text.map(|t| nn::linear(p / "cond_emb", t.dim, td, nn::LinearConfig { bias: false, ..init.linear() }));
        let micro = s
            .micros
            .iter()
            .map(|m| {
                let q = p / "cond_layers" / m.key.as_str();
                (m.clone(), TimeMlp::new(&q / 0, &q / 1, td, true, init))
            })
            .collect();
        let blocks = s.blocks();
        let conv_in = conv3(&(p / "conv_in"), cin, s.resolutions[0].channels, 1, init);
        let block = |path: nn::Path, b| ResNetBlock::new(&path, b, td, s.groups, s.dropout, init);
        let down_blocks = blocks.down.iter().enumerate().map(|(i, b)| block(p / "down_blocks" / i, b)).collect();
        // Mid blocks: [ResNet + one attention with cross-attention], [ResNet].
        let mid_blocks = blocks.mid.as_ref().map(|[a, b]| (block(p / "mid_blocks" / 0, a), block(p / "mid_blocks" / 1, b)));
        let up_blocks = blocks.up.iter().enumerate().map(|(k, b)| block(p / "up_blocks" / k, b)).collect();
        let ch = blocks.out_channels;
        let norm_out = group_norm(&(p / "norm_out"), s.groups, ch);
        let conv_out = conv3(&(p / "conv_out"), ch, cout, 1, Init::Zeros);

        // Text conditioning modules (used only by the innermost level, present per config).
        let lm_proj = text.filter(|t| t.lm_proj).map(|t| nn::linear(p / "lm_proj", t.input_dim, t.dim, init.linear()));
        let lm_head = match text {
            Some(t) => (0..t.lm_head_layers).map(|i| TextSelfAttention::new(&(p / "lm_head" / i), t.dim, init)).collect(),
            None => vec![],
        };

        let nest = s.nested.as_ref().map(|ns| {
            let inner = Box::new(UNetLevel::new(&(p / "inner_unet"), &ns.inner, cin, cout, num_classes, init));
            let inner_ch = ns.inner.resolutions[0].channels;
            let last = s.resolutions[s.resolutions.len() - 1].channels;
            Nest {
                inner,
                in_adapter: ns.in_adapter.then(|| conv3(&(p / "in_adapter"), last, inner_ch, 1, Init::Zeros)),
                out_adapter: conv3(&(p / "out_adapter"), inner_ch, last, 1, Init::Zeros),
                skip_normalization: ns.skip_normalization,
            }
        });
        // The class table has the text width (validated: class models set it).
        let class_emb = match (&nest, num_classes, s.text) {
            (None, Some(k), Some(t)) => Some(nn::embedding(p / "class_emb", k + 1, t.input_dim, init.embedding())),
            _ => None,
        };
        UNetLevel {
            spec: s.clone(),
            time,
            cond_emb,
            micro,
            conv_in,
            down_blocks,
            mid_blocks,
            up_blocks,
            norm_out,
            conv_out,
            lm_proj,
            lm_head,
            class_emb,
            nest,
        }
    }

    /// ml-mdm's `forward_conditioning`, run by the innermost level: project the tokens, run
    /// the text self-attention layers, pool (masked mean) into `cond_emb`. Returns
    /// (cond_emb, tokens, mask for cross-attention or `None` when it ignores the mask).
    pub fn conditioning(
        &self,
        cond: &Conditioning,
        trace: &mut Trace,
        prefix: &str,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if let Some(n) = &self.nest {
            return n
                .inner
                .conditioning(cond, trace, &format!("{prefix}inner_unet."));
        }
        let (tokens, mask) = match cond {
            Conditioning::None => return Ok((None, None, None)),
            Conditioning::Text { tokens, mask } => {
                (tokens.shallow_clone(), mask.to_kind(tokens.kind()))
            }
            Conditioning::Class(labels) => {
                let emb = self
                    .class_emb
                    .as_ref()
                    .ok_or_else(|| Error::input("this model is not class-conditional"))?;
                let t = emb.forward(labels).unsqueeze(1);
                let m = t.ones_like().select(2, 0);
                (t, m)
            }
        };
        let Some(cond_emb) = &self.cond_emb else {
            return Ok((None, None, None));
        };
        let mut c = tokens;
        if let Some(l) = &self.lm_proj {
            c = l.forward(&c);
            trace.put(prefix, "lm_proj", &c);
        }
        let masked = self.spec.text.is_some_and(|t| t.masked);
        for h in &self.lm_head {
            c = h.forward(&c, masked.then_some(&mask));
        }
        let y = if !masked && !self.lm_head.is_empty() {
            c.mean_dim(1i64, false, c.kind())
        } else {
            (mask.unsqueeze(-1) * &c).sum_dim_intlist(1i64, false, c.kind())
                / mask.sum_dim_intlist(1i64, true, mask.kind())
        };
        let e = cond_emb.forward(&y);
        trace.put(prefix, "cond_emb", &e);
        Ok((Some(e), Some(c), masked.then_some(mask)))
    }

    /// `temb = time_mlp(t) + cond_emb + Σ micro_mlp(micro)`; `times` and `micros` per clip,
    /// `cond_emb` per frame (clips of `frames` frames), the result per frame.
    fn time_embedding(&self, sh: &Shared, trace: &mut Trace, prefix: &str) -> Tensor {
        let times = sh.times;
        let mut temb = self.time.forward(times);
        trace.put(prefix, "temb_layer2", &temb);
        for (m, mlp) in &self.micro {
            let v = match sh.micros.get(&m.key) {
                Some(v) => v.to_kind(tch::Kind::Float),
                None => times.ones_like().to_kind(tch::Kind::Float) * m.default,
            };
            // `scale` is clamped to the level's default; other keys are scaled by 1000.
            let v = if m.key == "scale" {
                (v / m.default).clamp_max(1.0) * m.default
            } else {
                v * 1000.0
            };
            let e = mlp.forward(&v);
            trace.put(prefix, &format!("cond_layers.{}.1", m.key), &e);
            temb = temb + e;
        }
        if sh.frames > 1 {
            temb = temb.repeat_interleave_self_int(sh.frames, Some(0), None);
        }
        match sh.cond_emb {
            Some(c) => temb + c,
            None => temb,
        }
    }

    /// One level's forward (ml-mdm's `forward_denoising`). `x_t` holds this level's input and
    /// the inner levels' inputs; `feat` the outer features (nesting). Returns the predictions
    /// from this level inwards and this level's pre-`norm_out` features.
    pub(crate) fn forward_level(&self, x_t: &[Tensor], feat: Option<&Tensor>, sh: &Shared, trace: &mut Trace, prefix: &str) -> (Vec<Tensor>, Tensor) {
        // 1. time embedding (full batch; per frame for clips), then this level's share of it.
        let temb_full = self.time_embedding(sh, trace, prefix);
        let bh = x_t[0].size()[0];
        let temb = temb_full.narrow(0, 0, bh);
        let cond_h = sh.tokens.map(|c| c.narrow(0, 0, bh));
        let mask_h = sh.mask.map(|m| m.narrow(0, 0, bh));
        let ctx = Ctx {
            temb: &temb,
            cond: cond_h.as_ref(),
            cond_mask: mask_h.as_ref(),
            train: sh.train,
            frames: sh.frames,
        };

        // 2. input layer (outer nested levels may normalise their input).
        let mut x0 = x_t[0].shallow_clone();
        if let Some(n) = &self.nest {
            if !n.skip_normalization {
                x0 = &x0 / x0.std_dim([1i64, 2, 3].as_slice(), true, true);
            }
        }
        let mut x = self.conv_in.forward(&x0);
        trace.put(prefix, "conv_in", &x);
        if let Some(f) = feat {
            x = x + f;
        }

        // 3. down blocks, collecting skips.
        let mut skips = vec![x.shallow_clone()];
        for (i, b) in self.down_blocks.iter().enumerate() {
            let (y, acts) = b.forward(&x, &ctx, None);
            x = y;
            skips.extend(acts);
            trace.put(prefix, &format!("down_blocks.{i}"), &x);
        }

        // 4. inner level (nested) or mid blocks.
        let mut inner_outs = vec![];
        if let Some(n) = &self.nest {
            let bl = x_t[1].size()[0];
            let x_inner = n.in_adapter.as_ref().map(|a| {
                let y = a.forward(&x);
                trace.put(prefix, "in_adapter", &y);
                if bl > bh {
                    // Samples that train only the inner levels get no outer features.
                    let mut shape = y.size();
                    shape[0] = bl - bh;
                    // (Also when no sample trains the outer level: `y` may have no rows.)
                    Tensor::cat(&[&y, &Tensor::zeros(shape.as_slice(), (y.kind(), y.device()))], 0)
                } else {
                    y
                }
            });
            let ip = format!("{prefix}inner_unet.");
            let (outs, f) = n.inner.forward_level(&x_t[1..], x_inner.as_ref(), sh, trace, &ip);
            let f = n.out_adapter.forward(&f);
            trace.put(prefix, "out_adapter", &f);
            x = x + f.narrow(0, 0, bh);
            inner_outs = outs;
        }
        if let Some((m0, m1)) = &self.mid_blocks {
            x = m0.forward(&x, &ctx, None).0;
            trace.put(prefix, "mid_blocks.0", &x);
            x = m1.forward(&x, &ctx, None).0;
            trace.put(prefix, "mid_blocks.1", &x);
        }

        // 5. up blocks: each takes num_resnets + 1 skips, most recent first.
        let n = self.spec.resolutions.len();
        for (k, b) in self.up_blocks.iter().enumerate() {
            let take = self.spec.resolutions[n - 1 - k].resnets + 1;
            let mut mine: Vec<Tensor> = skips.split_off(skips.len().saturating_sub(take));
            mine.reverse();
            x = b.forward(&x, &ctx, Some(&mut mine)).0;
            trace.put(prefix, &format!("up_blocks.{k}"), &x);
        }

        // 6. output layer.
        let out = self.conv_out.forward(&self.norm_out.forward(&x).silu());
        trace.put(prefix, "conv_out", &out);
        let mut outs = vec![out];
        outs.extend(inner_outs);
        (outs, x)
    }
}
