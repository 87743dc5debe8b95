//! Attention layers, on libtorch's `scaled_dot_product_attention` (flash kernels on GPU).
//!
//! ml-mdm scales q and k each by `ch^(-1/4)` and runs an explicit softmax; that is the
//! standard `1/sqrt(ch)` attention, which SDPA computes (`tests/it/model_features.rs` checks the two
//! agree). Heads are fixed at 8, each taking a contiguous block of `C/8` channels.

use tch::{nn, nn::Module, Tensor};

use super::{conv1x1, conv3, group_norm, Init};

/// Heads of every attention layer (fixed in ml-mdm).
pub const HEADS: i64 = 8;
/// Groups of the attention GroupNorms (fixed in ml-mdm).
pub const ATTN_GROUPS: i64 = 32;

/// Multi-head attention of channel-first tensors: q (B,C,L), k/v (B,C,S) → (B,C,L).
/// `mask` (B,S): non-zero = attend.
pub fn attend_channels_first(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (b, c, l) = q.size3().unwrap_or((0, 0, 0));
    let s = k.size()[2];
    let ch = c / HEADS;
    // (B,H,N,ch) with a contiguous last dim, which the flash / memory-efficient kernels need.
    let heads = |t: &Tensor, n: i64| t.reshape([b, HEADS, ch, n]).transpose(2, 3).contiguous();
    let m = mask.map(|m| m.view([b, 1, 1, s]).ne(0i64));
    let a = Tensor::scaled_dot_product_attention(
        &heads(q, l),
        &heads(k, s),
        &heads(v, s),
        m,
        0.0,
        false,
        None,
        false,
    );
    a.transpose(2, 3).reshape([b, c, l])
}

/// The explicit-softmax attention of ml-mdm (`SelfAttention.attention`), kept as the
/// reference for tests: q and k each scaled by `ch^(-1/4)`, masked keys at −inf.
pub fn attend_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (b, c, l) = q.size3().unwrap_or((0, 0, 0));
    let s = k.size()[2];
    let ch = c / HEADS;
    let scale = 1.0 / (ch as f64).sqrt().sqrt();
    let q = (q * scale).reshape([b * HEADS, ch, l]);
    let k = (k * scale).reshape([b * HEADS, ch, s]);
    let mut w = q.transpose(1, 2).matmul(&k); // (bH, L, S)
    if let Some(m) = mask {
        let m = m
            .view([b, 1, 1, s])
            .repeat([1, HEADS, 1, 1])
            .flatten(0, 1)
            .eq(0i64);
        w = w.masked_fill(&m, f64::NEG_INFINITY);
    }
    let w = w.softmax(-1, w.kind());
    let a = v.reshape([b * HEADS, ch, s]).matmul(&w.transpose(1, 2)); // (bH, ch, L)
    a.reshape([b, c, l])
}

/// ml-mdm's 2D `SelfAttention`: self-attention over pixels plus, with a text width `cross`,
/// cross-attention to the text tokens; the two softmax outputs are added, then
/// `x += proj_out(h)` and optionally `x += ffn(x)`.
#[derive(Debug)]
pub struct SelfAttention {
    norm: nn::GroupNorm,
    qkv: nn::Conv2D,
    cond: Option<(nn::LayerNorm, nn::Linear)>,
    proj_out: nn::Conv2D,
    ffn: Option<(nn::GroupNorm, nn::Conv2D, nn::Conv2D)>,
}

impl SelfAttention {
    pub fn new(p: &nn::Path, channels: i64, cross: Option<i64>, use_ffn: bool, init: Init) -> Self {
        let cond = cross.map(|d| {
            (
                nn::layer_norm(p / "norm_cond", vec![d], Default::default()),
                nn::linear(p / "kv_cond", d, 2 * channels, init.linear()),
            )
        });
        let ffn = use_ffn.then(|| {
            let f = p / "ffn";
            (
                group_norm(&(&f / 0), ATTN_GROUPS, channels),
                conv1x1(&(&f / 1), channels, 4 * channels, init),
                conv1x1(&(&f / 3), 4 * channels, channels, Init::Zeros),
            )
        });
        SelfAttention {
            norm: group_norm(&(p / "norm"), ATTN_GROUPS, channels),
            qkv: conv1x1(&(p / "qkv"), channels, 3 * channels, init),
            cond,
            proj_out: conv1x1(&(p / "proj_out"), channels, channels, Init::Zeros),
            ffn,
        }
    }

    /// `x` (B,C,H,W); `cond` (B,T,D) text tokens; `mask` (B,T) or `None` (unmasked).
    pub fn forward(&self, x: &Tensor, cond: Option<&Tensor>, mask: Option<&Tensor>) -> Tensor {
        let size = x.size();
        let (b, c) = (size[0], size[1]);
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x))
            .reshape([b, 3 * c, -1]);
        let qkv = qkv.chunk(3, 1);
        let mut h = attend_channels_first(&qkv[0], &qkv[1], &qkv[2], None);
        if let (Some((ln, kv)), Some(cond)) = (&self.cond, cond) {
            let kv = kv.forward(&ln.forward(cond)).transpose(-2, -1); // (B, 2C, T)
            let kv = kv.chunk(2, 1);
            h = h + attend_channels_first(&qkv[0], &kv[0], &kv[1], mask);
        }
        let x = x + self.proj_out.forward(&h.reshape(size.as_slice()));
        match &self.ffn {
            Some((n, c1, c2)) => &x + c2.forward(&c1.forward(&n.forward(&x)).gelu("none")),
            None => x,
        }
    }
}

/// ml-mdm's `SelfAttention1DBlock` over text tokens: `SelfAttention1D` (LayerNorm, qkv,
/// masked attention, `proj_out`) followed by a residual MLP (LayerNorm, 4D, GELU, D).
/// Names: `attn.{norm,qkv,proj_out}`, `mlp.main.{0,1,3}`.
#[derive(Debug)]
pub struct TextSelfAttention {
    norm: nn::LayerNorm,
    qkv: nn::Linear,
    proj_out: nn::Linear,
    mlp_norm: nn::LayerNorm,
    mlp_in: nn::Linear,
    mlp_out: nn::Linear,
}

impl TextSelfAttention {
    pub fn new(p: &nn::Path, dim: i64, init: Init) -> Self {
        let a = p / "attn";
        let m = p / "mlp" / "main";
        TextSelfAttention {
            norm: nn::layer_norm(&a / "norm", vec![dim], Default::default()),
            qkv: nn::linear(&a / "qkv", dim, 3 * dim, init.linear()),
            proj_out: nn::linear(&a / "proj_out", dim, dim, Init::Zeros.linear()),
            mlp_norm: nn::layer_norm(&m / 0, vec![dim], Default::default()),
            mlp_in: nn::linear(&m / 1, dim, 4 * dim, init.linear()),
            mlp_out: nn::linear(&m / 3, 4 * dim, dim, Init::Zeros.linear()),
        }
    }

    /// `x` (B,T,D); `mask` (B,T) or `None`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let qkv = self.qkv.forward(&self.norm.forward(x)).transpose(1, 2); // (B,3D,T)
        let qkv = qkv.chunk(3, 1);
        let h = attend_channels_first(&qkv[0], &qkv[1], &qkv[2], mask).transpose(1, 2);
        let x = x + self.proj_out.forward(&h);
        &x + self
            .mlp_out
            .forward(&self.mlp_in.forward(&self.mlp_norm.forward(&x)).gelu("none"))
    }
}

pub use crate::config::TEMPORAL_HEAD_CHANNELS;

/// Multi-head attention of sequence-first tensors q/k/v (N,L,C), `heads` contiguous channel
/// blocks, with rotary position encoding of the sequence index when `rotary` holds the
/// frequencies (head_ch/2,).
fn attend_seq(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, rotary: Option<&Tensor>) -> Tensor {
    let (n, l, c) = q.size3().unwrap_or((0, 0, 0));
    let ch = c / heads;
    let split = |t: &Tensor| t.reshape([n, l, heads, ch]).transpose(1, 2); // (N,H,L,ch)
    let (mut q, mut k, v) = (split(q), split(k), split(v).contiguous());
    if let Some(f) = rotary {
        let (cos, sin) = rotary_cos_sin(l, f, q.kind());
        q = rotate(&q, &cos, &sin);
        k = rotate(&k, &cos, &sin);
    }
    let a = Tensor::scaled_dot_product_attention(&q.contiguous(), &k.contiguous(), &v, None::<Tensor>, 0.0, false, None, false);
    a.transpose(1, 2).reshape([n, l, c])
}

/// cos and sin of the rotary angles `pos·f_k` for positions 0..l, each frequency repeated for
/// its channel pair: (l, 2·len(freqs)), f0 f0 f1 f1 … (angles in fp32, results in `kind`).
fn rotary_cos_sin(l: i64, freqs: &Tensor, kind: tch::Kind) -> (Tensor, Tensor) {
    let pos = Tensor::arange(l, (tch::Kind::Float, freqs.device()));
    let ang = (pos.unsqueeze(1) * freqs.unsqueeze(0)).repeat_interleave_self_int(2, Some(1), None);
    (ang.cos().to_kind(kind), ang.sin().to_kind(kind))
}

/// Rotary embedding of `rotary_embedding_torch` (the library ml-mdm's `pos_emb` uses) on
/// (…, L, ch) with [`rotary_cos_sin`]'s tables: each frequency turns an adjacent channel pair,
/// `(x_{2k}, x_{2k+1}) → (x_{2k}·cos − x_{2k+1}·sin, x_{2k+1}·cos + x_{2k}·sin)`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let size = x.size();
    let mut pairs = size.clone();
    let ch = pairs.pop().unwrap_or(0);
    pairs.extend([ch / 2, 2]);
    let xp = x.reshape(pairs.as_slice());
    let (x1, x2) = (xp.select(-1, 0), xp.select(-1, 1));
    let rot = Tensor::stack(&[x2.neg(), x1], -1).reshape(size.as_slice());
    x * cos + rot * sin
}

/// The frequencies of `rotary_embedding_torch.RotaryEmbedding(dim)`: `10000^(−2k/dim)`.
pub fn rotary_freqs(dim: i64) -> Tensor {
    let k = Tensor::arange_start_step(0, dim, 2, (tch::Kind::Float, tch::Device::Cpu)).narrow(0, 0, dim / 2);
    (k / dim as f64 * -(10000f64.ln())).exp()
}

/// ml-mdm's `TemporalAttentionBlock` (with `down=True`, as it is always built): a stride-2
/// conv, per-pixel attention over the frames (`SelfAttention1D`: LayerNorm, qkv, heads of 32
/// channels, zero-init `proj_out`, optional rotary frame positions) and a residual MLP,
/// nearest ×2 and a conv, added to the input. Names: `down_conv`, `attn.{norm,qkv,proj_out,
/// pos_emb.freqs}`, `mlp.main.{0,1,3}`, `up_conv`.
///
/// One change to ml-mdm's formula: `up_conv` receives only what the attention and the MLP add
/// (`mlp(attn(s)) − s`), not `s = down_conv(x)` itself. ml-mdm's branch keeps the purely
/// linear path `up_conv(up(down_conv(x)))`, which nothing normalises: in training its gain
/// grows block after block (activations reached 1e4–1e5 within 300 steps of a tiny model, and
/// the loss stalled where the same model without temporal blocks fitted its clip). Here the
/// block is the identity at initialisation (`proj_out` and the MLP's last layer are zero) and
/// its branch always passes through the normalised attention and MLP.
#[derive(Debug)]
pub struct TemporalAttention {
    down_conv: nn::Conv2D,
    norm: nn::LayerNorm,
    qkv: nn::Linear,
    proj_out: nn::Linear,
    /// Rotary frequencies (fp32, on the model's device), made once here: the stored
    /// `pos_emb.freqs` is ml-mdm's non-trained copy, which a bf16 run would round.
    rotary: Option<Tensor>,
    mlp_norm: nn::LayerNorm,
    mlp_in: nn::Linear,
    mlp_out: nn::Linear,
    up_conv: nn::Conv2D,
    heads: i64,
}

impl TemporalAttention {
    pub fn new(p: &nn::Path, channels: i64, pos_emb: bool, init: Init) -> Self {
        let a = p / "attn";
        let m = p / "mlp" / "main";
        let heads = channels / TEMPORAL_HEAD_CHANNELS;
        let rotary = pos_emb.then(|| {
            let f = rotary_freqs(TEMPORAL_HEAD_CHANNELS).to_device(p.device());
            // A parameter in ml-mdm's state dict (`requires_grad=False`): stored, not trained.
            let stored = (&a / "pos_emb").zeros_no_train("freqs", &[TEMPORAL_HEAD_CHANNELS / 2]);
            tch::no_grad(|| stored.shallow_clone().copy_(&f));
            f
        });
        TemporalAttention {
            down_conv: conv3(&(p / "down_conv"), channels, channels, 2, init),
            norm: nn::layer_norm(&a / "norm", vec![channels], Default::default()),
            qkv: nn::linear(&a / "qkv", channels, 3 * channels, init.linear()),
            proj_out: nn::linear(&a / "proj_out", channels, channels, Init::Zeros.linear()),
            rotary,
            mlp_norm: nn::layer_norm(&m / 0, vec![channels], Default::default()),
            mlp_in: nn::linear(&m / 1, channels, 4 * channels, init.linear()),
            mlp_out: nn::linear(&m / 3, 4 * channels, channels, Init::Zeros.linear()),
            up_conv: conv3(&(p / "up_conv"), channels, channels, 1, init),
            heads,
        }
    }

    /// `x` ((B·T), C, H, W), frames of a clip consecutive.
    pub fn forward(&self, x: &Tensor, frames: i64) -> Tensor {
        let h = self.down_conv.forward(x);
        let (bt, c, hh, ww) = h.size4().unwrap_or((0, 0, 0, 0));
        let b = bt / frames;
        // (b t) c h w -> (b h w) t c
        let s = h.reshape([b, frames, c, hh, ww]).permute([0, 3, 4, 1, 2]).reshape([b * hh * ww, frames, c]);
        let qkv = self.qkv.forward(&self.norm.forward(&s)).chunk(3, -1);
        let a = attend_seq(&qkv[0], &qkv[1], &qkv[2], self.heads, self.rotary.as_ref());
        let a = self.proj_out.forward(&a);
        let m = self.mlp_out.forward(&self.mlp_in.forward(&self.mlp_norm.forward(&(&s + &a))).gelu("none"));
        // What attention and MLP add, (b h w) t c -> (b t) c h w.
        let h = (a + m).reshape([b, hh, ww, frames, c]).permute([0, 3, 4, 1, 2]).reshape([bt, c, hh, ww]);
        self.up_conv.forward(&h.upsample_nearest2d([2 * hh, 2 * ww], None, None)) + x
    }
}
