//! Model FLOPs of a forward pass, counted from the level tree of a [`ModelConfig`], for the
//! MFU (model FLOPs utilisation) of training benchmarks (issue 8).
//!
//! Counted, as 2 FLOPs per multiply-add (the usual convention):
//! - every `Conv2d` (`2·Cin·Cout·k²·Hout·Wout` per row; all convs here have groups = 1):
//!   `conv_in`/`conv_out`, the ResNets' `conv1`/`conv2`/`conv3`, the resamples (stride-2 down,
//!   nearest ×2 then conv up), the attention layers' 1×1 `qkv`/`proj_out`/FFN convs, the
//!   temporal blocks' `down_conv`/`up_conv`, the nested levels' `in_adapter`/`out_adapter`;
//! - every `Linear` (`2·in·out` per row): the time and micro-conditioning MLPs (per clip, at
//!   every level, on the whole batch: each level embeds all the times), the ResNets'
//!   `time_layer` (per row of the level), `kv_cond` (per token of every row of the level),
//!   `lm_proj`/`lm_head`/`cond_emb` (innermost level, per clip and token), the temporal
//!   blocks' `qkv`/`proj_out`/MLP (per pixel-frame at half resolution);
//! - the attention matmuls `QKᵀ` and `AV`: `4·L·S·C` per sequence, where L queries attend
//!   to S keys of total width C (all heads): pixel self-attention (L = S = H·W),
//!   cross-attention to the text (S = `tokens`), text self-attention (L = S = `tokens`),
//!   temporal attention (one sequence per half-resolution pixel, L = S = `frames`).
//!
//! Not counted (each is O(elements), negligible next to the above): normalisations,
//! activations, softmax, biases, residual additions, up/down-sampling copies, rotary
//! encodings, embedding look-ups, the diffusion loss.
//!
//! A training step costs [`TRAIN_FACTOR`] = 3 forward passes (forward + backward, whose input
//! and weight gradients each cost about one forward): the standard convention of MFU
//! figures (e.g. PaLM's appendix B). It does not discount frozen levels
//! (`freeze_inner_unet`) or the input gradient `conv_in` does not need.

use crate::config::{LevelSpec, ModelConfig, Resample};
use crate::error::{Error, Result};
use crate::config::TEMPORAL_HEAD_CHANNELS;

/// Training FLOPs per forward FLOP (forward + backward).
pub const TRAIN_FACTOR: u128 = 3;

/// FLOPs of one part of the model, by kind of operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flops {
    pub conv: u128,
    pub linear: u128,
    /// `QKᵀ` and `AV` matmuls.
    pub attention: u128,
}

impl Flops {
    pub fn total(&self) -> u128 {
        self.conv + self.linear + self.attention
    }

    fn add(&mut self, o: &Flops) {
        self.conv += o.conv;
        self.linear += o.linear;
        self.attention += o.attention;
    }
}

/// The forward FLOPs of a batch: per level, outermost first. The innermost level's entry
/// includes the text conditioning (`lm_proj`, `lm_head`, `cond_emb`), which it computes for
/// every level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlopCount {
    pub levels: Vec<Flops>,
}

impl FlopCount {
    /// All levels together.
    pub fn sum(&self) -> Flops {
        let mut s = Flops::default();
        for l in &self.levels {
            s.add(l);
        }
        s
    }

    /// Forward FLOPs of the whole model.
    pub fn forward(&self) -> u128 {
        self.sum().total()
    }

    /// FLOPs of a training step on this batch: [`TRAIN_FACTOR`] × forward.
    pub fn training_step(&self) -> u128 {
        TRAIN_FACTOR * self.forward()
    }
}

/// Each level's input side for an outermost side `top_side`, outermost first (the nest
/// ratios of the config: level i has side `top_side · scales[i] / scales[0]`).
pub fn level_sides(cfg: &ModelConfig, top_side: i64) -> Vec<i64> {
    let scales = cfg.top.scales();
    scales.iter().map(|s| top_side / scales[0] * s).collect()
}

/// Forward FLOPs of `cfg` on a batch (see the module doc for what is counted).
///
/// - `sides`: each level's input side, outermost first ([`level_sides`]);
/// - `batch`: samples (clips for video) each level runs on, outermost first, non-decreasing
///   inwards (ml-mdm's mixed-resolution batches: the outer level sees only its share, the
///   innermost the whole batch);
/// - `tokens`: text tokens per sample for cross-attention and the text layers (a class
///   label is one token; 0 without conditioning);
/// - `frames`: frames per clip (1 for images); every level sees every frame.
pub fn forward_flops(cfg: &ModelConfig, sides: &[i64], batch: &[i64], tokens: i64, frames: i64) -> Result<FlopCount> {
    let depth = cfg.top.depth();
    if sides.len() != depth || batch.len() != depth {
        return Err(Error::input(format!(
            "{depth} levels: need {depth} sides and batch sizes, got {} and {}",
            sides.len(),
            batch.len()
        )));
    }
    if tokens < 0 || frames < 1 || batch.iter().any(|&b| b < 0) || batch.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::input(
            "tokens >= 0, frames >= 1, batch sizes >= 0 and not shrinking inwards",
        ));
    }
    let clips = batch[depth - 1];
    let mut levels = vec![];
    let mut level = Some(&cfg.top);
    // Every level takes and returns the image channels (see UNetLevel::new).
    let (cin, cout) = (cfg.input_channels, cfg.output_channels);
    let mut i = 0;
    while let Some(s) = level {
        let side = sides[i];
        let n = s.resolutions.len();
        let f = s.downsampling();
        if side <= 0 || side % f != 0 {
            return Err(Error::input(format!("level {i}: side {side} is not a positive multiple of {f}")));
        }
        let mut fl = level_flops(s, side, batch[i] * frames, clips, tokens, frames, cin, cout);
        if let Some(ns) = &s.nested {
            let inner_side = sides[i + 1];
            let low = side >> (n - 1);
            if inner_side != low {
                return Err(Error::input(format!(
                    "level {}: side {inner_side}, but level {i} (side {side}) hands it {low}",
                    i + 1
                )));
            }
            let last = s.resolutions[n - 1].channels as u128;
            let inner_ch = ns.inner.resolutions[0].channels as u128;
            let px = (low * low) as u128;
            if ns.in_adapter {
                fl.conv += 2 * last * inner_ch * 9 * px * (batch[i] * frames) as u128;
            }
            // The out_adapter runs on every row of the inner level before the narrowing.
            fl.conv += 2 * inner_ch * last * 9 * px * (batch[i + 1] * frames) as u128;
        } else {
            fl.add(&conditioning_flops(s, clips, tokens));
        }
        levels.push(fl);
        level = s.inner();
        i += 1;
    }
    Ok(FlopCount { levels })
}

fn lin(fin: i64, fout: i64, rows: i64) -> u128 {
    2 * fin as u128 * fout as u128 * rows as u128
}

/// `k×k` conv producing `out_side²` pixels on `rows` rows.
fn conv(cin: i64, cout: i64, k: i64, out_side: i64, rows: i64) -> u128 {
    2 * cin as u128 * cout as u128 * (k * k) as u128 * (out_side * out_side) as u128 * rows as u128
}

/// The innermost level's text conditioning (`forward_conditioning`), per clip.
fn conditioning_flops(s: &LevelSpec, clips: i64, tokens: i64) -> Flops {
    let mut fl = Flops::default();
    let Some(t) = s.text.filter(|t| t.cond_emb && tokens > 0) else {
        return fl;
    };
    let d = t.dim;
    let rows = clips * tokens;
    if t.lm_proj {
        fl.linear += lin(t.input_dim, d, rows);
    }
    for _ in 0..t.lm_head_layers {
        fl.linear += lin(d, 3 * d, rows) + lin(d, d, rows) + lin(d, 4 * d, rows) + lin(4 * d, d, rows);
        fl.attention += 4 * (tokens * tokens) as u128 * d as u128 * clips as u128;
    }
    fl.linear += lin(d, s.temporal_dim, clips);
    fl
}

/// One level without its inner level: time embedding, conv_in, down, mid, up, conv_out.
/// `rows` = the level's samples × frames, `clips` = the whole batch's samples.
#[allow(clippy::too_many_arguments)]
fn level_flops(s: &LevelSpec, side: i64, rows: i64, clips: i64, tokens: i64, frames: i64, cin: i64, cout: i64) -> Flops {
    let mut fl = Flops::default();
    let td = s.temporal_dim;
    // Time and micro MLPs: per clip of the whole batch, at every level.
    let mlp = lin(td / 4, td, clips) + lin(td, td, clips);
    fl.linear += mlp * (1 + s.micros.len() as u128);

    fl.conv += conv(cin, s.resolutions[0].channels, 3, side, rows);
    // The blocks UNetLevel::new builds, skip widths included.
    let blocks = s.blocks();
    let mid = blocks.mid.iter().flatten();
    for b in blocks.down.iter().chain(mid).chain(&blocks.up) {
        let si = side >> b.resolution;
        for &(ci, co) in &b.channels {
            fl.conv += conv(ci, co, 3, si, rows) + conv(co, co, 3, si, rows);
            if ci != co {
                fl.conv += conv(ci, co, 1, si, rows);
            }
            fl.linear += lin(td, 2 * co, rows);
            if let Some(a) = b.attention {
                for _ in 0..a.layers {
                    fl.add(&attention_flops(co, si, rows, a.cross, tokens, a.ffn));
                }
            }
            if let Some(t) = b.temporal {
                for _ in 0..t.layers {
                    fl.add(&temporal_flops(co, si, rows, frames));
                }
            }
        }
        let ch = b.channels.last().map_or(0, |c| c.1);
        match b.resample {
            Resample::None => {}
            Resample::Down => fl.conv += conv(ch, ch, 3, si / 2, rows),
            Resample::Up => fl.conv += conv(ch, ch, 3, 2 * si, rows),
        }
    }
    fl.conv += conv(blocks.out_channels, cout, 3, side, rows);
    fl
}

/// ml-mdm's 2D `SelfAttention` of `c` channels on `side²` pixels: qkv, self-attention,
/// cross-attention of width `cross` to `tokens` tokens, proj_out, optional FFN.
fn attention_flops(c: i64, side: i64, rows: i64, cross: Option<i64>, tokens: i64, ffn: bool) -> Flops {
    let mut fl = Flops::default();
    let l = (side * side) as u128;
    let r = rows as u128;
    fl.conv += conv(c, 3 * c, 1, side, rows) + conv(c, c, 1, side, rows);
    fl.attention += 4 * l * l * c as u128 * r;
    if let (Some(d), true) = (cross, tokens > 0) {
        fl.linear += lin(d, 2 * c, rows * tokens);
        fl.attention += 4 * l * tokens as u128 * c as u128 * r;
    }
    if ffn {
        fl.conv += conv(c, 4 * c, 1, side, rows) + conv(4 * c, c, 1, side, rows);
    }
    fl
}

/// ml-mdm's `TemporalAttentionBlock` on `rows` frames of `side²` pixels: stride-2 conv,
/// attention over the frames of each half-resolution pixel, MLP, ×2 and a conv.
fn temporal_flops(c: i64, side: i64, rows: i64, frames: i64) -> Flops {
    debug_assert!(c % TEMPORAL_HEAD_CHANNELS == 0);
    let mut fl = Flops::default();
    let half = side / 2;
    let seq_rows = rows * half * half; // pixel-frames
    fl.conv += conv(c, c, 3, half, rows) + conv(c, c, 3, side, rows);
    fl.linear += lin(c, 3 * c, seq_rows) + lin(c, c, seq_rows) + lin(c, 4 * c, seq_rows) + lin(4 * c, c, seq_rows);
    // (rows / frames)·half² sequences of `frames` positions: 4·F·F·C each.
    fl.attention += 4 * seq_rows as u128 * frames as u128 * c as u128;
    fl
}
