//! A loader [`Batch`] as tensors: images grouped by the level they train from, the condition
//! in the same sample order.

use mdm_loader::{Batch, TextBatch};
use mdm_shards::EmbeddingDType;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::denoiser::TrainBatch;
use crate::model::Conditioning;
use crate::run_config::CondKind;

/// Converts `batch`; `sides` are the model's level sides, outermost first; `frames` the
/// clip length a video model expects (1: an image model).
pub fn to_tensors(batch: &Batch, sides: &[u32], cond: CondKind, frames: i64, device: Device) -> Result<TrainBatch> {
    let mut order = vec![];
    let mut groups = vec![];
    for (res, px) in &batch.pixels {
        match (px.frames, frames) {
            (None, 1) => {}
            (Some(f), _) if f as i64 == frames && frames > 1 => {}
            (Some(_), 1) => return Err(Error::Batch("the loader gave video clips: an image model cannot train on them".into())),
            (None, _) => return Err(Error::Batch("the loader gave images: a video model trains on video shards".into())),
            (Some(f), _) => return Err(Error::Batch(format!("the loader gave clips of {f} frames, the run expects {frames}"))),
        }
        if !sides.contains(res) {
            return Err(Error::Batch(format!("the loader gave {res}² samples; the model's levels are {sides:?}")));
        }
    }
    for side in sides {
        let n = batch.pixels.get(side).map_or(0, |p| p.len());
        let s = *side as i64;
        let t = match batch.pixels.get(side) {
            Some(px) if n > 0 => {
                order.extend(px.rows.iter().copied());
                // Clips (n, T, 3, S, S) fold into (n·T, 3, S, S), each clip's frames consecutive.
                Tensor::from_slice(&px.data).view([n as i64 * frames, 3, s, s]).to_device(device)
            }
            _ => Tensor::zeros([0, 3, s, s], (Kind::Uint8, device)),
        };
        groups.push(t.to_kind(Kind::Float) / 127.5 - 1.0);
    }
    if order.len() != batch.len() {
        return Err(Error::Batch(format!("batch has {} samples but {} pixel rows", batch.len(), order.len())));
    }
    let perm = Tensor::from_slice(&order.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(device);
    let cond = match cond {
        CondKind::None => Conditioning::None,
        CondKind::Class => {
            let labels: Vec<i64> = order
                .iter()
                .map(|&r| {
                    batch.labels[r]
                        .map(i64::from)
                        .ok_or_else(|| Error::Batch(format!("sample {} has no class label", batch.ids[r])))
                })
                .collect::<Result<_>>()?;
            Conditioning::Class(Tensor::from_slice(&labels).to_device(device))
        }
        CondKind::Text => {
            let text = batch
                .text
                .as_ref()
                .ok_or_else(|| Error::Batch("the shards have no T5 embeddings (t5_emb): run `mdm embed` first".into()))?;
            let (tokens, mask) = text_tensors(text, batch.len())?;
            Conditioning::Text {
                tokens: tokens.to_device(device).index_select(0, &perm),
                mask: mask.to_device(device).index_select(0, &perm),
            }
        }
    };
    let index = order.iter().map(|&r| batch.positions[r].saturating_sub(batch.position)).collect();
    Ok(TrainBatch { groups, cond, ids: order.iter().map(|&r| batch.ids[r].clone()).collect(), index, frames })
}

/// (B,T,D) float states and (B,T) float mask; a sample without an embedding gets the null
/// condition (one zero token).
fn text_tensors(text: &TextBatch, b: usize) -> Result<(Tensor, Tensor)> {
    let t = text.max_tokens.max(1) as i64;
    let d = text.dim as i64;
    let kind = match text.dtype {
        EmbeddingDType::F16 => Kind::Half,
        EmbeddingDType::Bf16 => Kind::BFloat16,
    };
    let want = b * text.max_tokens * text.dim * 2;
    if text.data.len() != want || text.mask.len() != b * text.max_tokens {
        return Err(Error::Batch("T5 embedding buffer has the wrong size for the batch".into()));
    }
    let tokens = if text.max_tokens == 0 {
        Tensor::zeros([b as i64, 1, d], (Kind::Float, Device::Cpu))
    } else {
        Tensor::from_data_size(&text.data, &[b as i64, t, d], kind).to_kind(Kind::Float)
    };
    let mut mask: Vec<f32> = vec![0.0; b * t as usize];
    for i in 0..b {
        let row = &mut mask[i * t as usize..(i + 1) * t as usize];
        if text.tokens[i] == 0 {
            row[0] = 1.0;
        } else {
            for (j, m) in row.iter_mut().enumerate().take(text.max_tokens) {
                *m = text.mask[i * text.max_tokens + j] as f32;
            }
        }
    }
    Ok((tokens, Tensor::from_slice(&mask).view([b as i64, t])))
}
