//! `mdm t5 encode`: run the T5 encoder on caption lines and write ids, mask and last hidden
//! states to a safetensors file, to compare against another implementation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use mdm_ingest::t5::{
    write_safetensors, EncodeOptions, LongCaptions, T5Device, T5Dtype, TensorBytes, TextEncoder,
};

#[derive(Subcommand)]
pub enum T5Cmd {
    /// Encode each line of FILE; write input_ids [N,L] i64, attention_mask [N,L] i64,
    /// last_hidden_state [N,L,D] f32 (zero at padding) and kept [N] i64 (0 = rejected).
    Encode {
        /// Hugging Face model folder: config.json, model.safetensors (or sharded), tokenizer.json.
        #[arg(long)]
        model: PathBuf,
        /// Text file, one caption per line.
        #[arg(long)]
        captions: PathBuf,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Compute dtype: f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: T5Dtype,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: T5Device,
        /// Token limit per caption, </s> included.
        #[arg(long, default_value_t = mdm_ingest::t5::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
        /// What to do with longer captions: truncate or reject.
        #[arg(long, default_value = "truncate")]
        long_captions: LongCaptions,
        /// Captions per forward pass.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
}

pub fn run(cmd: T5Cmd) -> Result<ExitCode> {
    match cmd {
        T5Cmd::Encode {
            model,
            captions,
            out,
            dtype,
            device,
            max_tokens,
            long_captions,
            batch_size,
        } => {
            let text = std::fs::read_to_string(&captions)
                .with_context(|| format!("reading captions from {}", captions.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            let opts = EncodeOptions {
                dtype,
                device,
                max_tokens,
                long_captions,
                batch_size,
                ..EncodeOptions::default()
            };
            let mut enc = TextEncoder::from_dir(&model, opts)?;
            let encoded = enc.encode(&lines)?;
            let (n, d) = (encoded.len(), enc.dim());
            let l = encoded
                .iter()
                .flatten()
                .map(|e| e.tokens())
                .max()
                .unwrap_or(0);
            let mut ids = vec![0i64; n * l];
            let mut mask = vec![0i64; n * l];
            let mut kept = vec![0i64; n];
            let mut states = vec![0f32; n * l * d];
            for (i, e) in encoded.iter().enumerate() {
                let Some(e) = e else { continue };
                kept[i] = 1;
                for (j, &id) in e.ids.iter().enumerate() {
                    ids[i * l + j] = i64::from(id);
                    mask[i * l + j] = 1;
                }
                states[i * l * d..i * l * d + e.states.len()].copy_from_slice(&e.states);
            }
            let le64 = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let (n, l, d) = (n as i64, l as i64, d as i64);
            let tensors = vec![
                (
                    "input_ids".to_string(),
                    TensorBytes {
                        dtype: "I64",
                        shape: vec![n, l],
                        data: le64(&ids),
                    },
                ),
                (
                    "attention_mask".to_string(),
                    TensorBytes {
                        dtype: "I64",
                        shape: vec![n, l],
                        data: le64(&mask),
                    },
                ),
                (
                    "last_hidden_state".to_string(),
                    TensorBytes {
                        dtype: "F32",
                        shape: vec![n, l, d],
                        data: states.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    },
                ),
                (
                    "kept".to_string(),
                    TensorBytes {
                        dtype: "I64",
                        shape: vec![n],
                        data: le64(&kept),
                    },
                ),
            ];
            let mut meta = BTreeMap::new();
            meta.insert(
                "provenance".to_string(),
                serde_json::to_string(enc.provenance())?,
            );
            write_safetensors(&out, &tensors, Some(&meta))?;
            let st = enc.stats();
            println!(
                "{}: {} captions, {} encoded, {} truncated, {} rejected, {} tokens ({} computed with padding); model {} ({}, {})",
                out.display(),
                st.captions,
                st.encoded,
                st.truncated,
                st.rejected,
                st.tokens,
                st.padded_tokens,
                enc.provenance().model_id,
                enc.provenance().dtype,
                enc.provenance().weights_sha256.get(..12).unwrap_or(""),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
