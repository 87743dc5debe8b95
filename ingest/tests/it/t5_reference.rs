//! Encoder numerics against `shared/reference/t5/` (HF transformers T5EncoderModel outputs):
//! hidden states and per-block debug tensors within max|a−b| ≤ 1e-4 in fp32 (the README's
//! tolerance), relative position buckets exact, and bf16 close to fp32.

use crate::t5_common;

use mdm_ingest::t5::{
    relative_position_buckets, Checkpoint, EncodeOptions, LongCaptions, T5Config, T5Device,
    T5Dtype, T5Encoder, TextEncoder,
};
use t5_common::{max_abs_diff, read_tensor, t5_reference, tiny_model_dir};
use tch::{nn, Kind, Tensor};

/// The README's fp32 tolerance for T5 tensors.
const TOL: f64 = 1e-4;

fn build(dir: &std::path::Path, kind: Kind) -> (nn::VarStore, T5Encoder) {
    let cfg = T5Config::from_file(&dir.join("tiny_t5_config.json")).unwrap();
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    vs.set_kind(kind);
    let mut enc = T5Encoder::new(&vs.root(), &cfg).unwrap();
    enc.load(&Checkpoint::open_file(&dir.join("tiny_t5.safetensors")).unwrap())
        .unwrap();
    (vs, enc)
}

#[test]
fn relative_position_buckets_match_exactly() {
    let Some(dir) = t5_reference() else { return };
    let want = read_tensor(
        &dir.join("tiny_t5_io.safetensors"),
        "relative_position_buckets",
    );
    assert_eq!(want.size(), [150, 150]);
    let got = relative_position_buckets(150, 150, 32, 128);
    let want: Vec<i64> = Vec::<i64>::try_from(want.flatten(0, -1)).unwrap();
    assert_eq!(got, want);
}

#[test]
fn hidden_states_and_debug_tensors_match_hf_fp32() {
    let Some(dir) = t5_reference() else { return };
    let io = dir.join("tiny_t5_io.safetensors");
    let ids = read_tensor(&io, "input_ids");
    let mask = read_tensor(&io, "attention_mask");
    let (_vs, mut enc) = build(&dir, Kind::Float);
    for fused in [true, false] {
        enc.fused_attention = fused;
        let (out, dbg) = enc.forward_debug(&ids, &mask).unwrap();
        let mut diffs = vec![
            (
                "debug.embed",
                max_abs_diff(&dbg.embed, &read_tensor(&io, "debug.embed")),
            ),
            (
                "debug.position_bias",
                max_abs_diff(&dbg.position_bias, &read_tensor(&io, "debug.position_bias")),
            ),
            (
                "last_hidden_state",
                max_abs_diff(&out, &read_tensor(&io, "last_hidden_state")),
            ),
        ];
        // Packed rows (linear layers on real tokens only) equal the padded pass there.
        let packed = enc.forward_packed(&ids, &mask).unwrap();
        let real = mask.reshape([-1]).nonzero().squeeze_dim(1);
        let at_real = out.reshape([-1, out.size()[2]]).index_select(0, &real);
        assert_eq!(packed.size(), at_real.size());
        diffs.push(("forward_packed vs forward", max_abs_diff(&packed, &at_real)));
        let masked = &out * mask.unsqueeze(-1).to_kind(Kind::Float);
        diffs.push((
            "last_hidden_state_masked",
            max_abs_diff(&masked, &read_tensor(&io, "last_hidden_state_masked")),
        ));
        assert_eq!(dbg.blocks.len(), 2);
        for (i, b) in dbg.blocks.iter().enumerate() {
            let want = read_tensor(&io, &format!("debug.block.{i}"));
            diffs.push((
                if i == 0 {
                    "debug.block.0"
                } else {
                    "debug.block.1"
                },
                max_abs_diff(b, &want),
            ));
        }
        for (name, d) in diffs {
            eprintln!("fused_attention={fused} {name}: max|a-b| = {d:.3e}");
            assert!(d <= TOL, "{name} (fused={fused}): {d:e} > {TOL:e}");
        }
    }
}

/// The high-level API on the fixture's id rows: ragged states equal the HF states at the
/// real tokens, whatever the batching (sorting reorders rows, batches pad differently).
#[test]
fn text_encoder_ragged_states_match_under_any_batching() {
    let Some(dir) = t5_reference() else { return };
    let io = dir.join("tiny_t5_io.safetensors");
    let ids = read_tensor(&io, "input_ids");
    let mask = read_tensor(&io, "attention_mask");
    let want = read_tensor(&io, "last_hidden_state");
    let lens: Vec<i64> =
        Vec::<i64>::try_from(mask.sum_dim_intlist(-1, false, Kind::Int64)).unwrap();
    assert_eq!(lens, [7, 65, 150]);
    let rows: Vec<Vec<u32>> = (0..3)
        .map(|r| {
            let row: Vec<i64> =
                Vec::<i64>::try_from(ids.get(r).narrow(0, 0, lens[r as usize])).unwrap();
            row.into_iter().map(|x| x as u32).collect()
        })
        .collect();
    // Repeat rows so windows and batches mix lengths: order 150, 7, 65, 7, 150, 65.
    let order = [2usize, 0, 1, 0, 2, 1];
    let inputs: Vec<Option<&[u32]>> = order.iter().map(|&r| Some(rows[r].as_slice())).collect();
    let model = tiny_model_dir(&dir);
    for (batch_size, sort_window) in [(1, 1), (2, 6), (4, 3), (6, 6)] {
        let opts = EncodeOptions {
            dtype: T5Dtype::F32,
            device: T5Device::Cpu,
            max_tokens: 256,
            long_captions: LongCaptions::Truncate,
            batch_size,
            sort_window,
        };
        let mut te = TextEncoder::from_dir(model.path(), opts).unwrap();
        let out = te.encode_ids(&inputs).unwrap();
        let mut worst = 0f64;
        for (k, &r) in order.iter().enumerate() {
            let states = out[k].as_ref().unwrap();
            let len = lens[r];
            assert_eq!(states.len(), len as usize * 64);
            let got = Tensor::from_slice(states).view([len, 64]);
            let d = max_abs_diff(&got, &want.get(r as i64).narrow(0, 0, len));
            worst = worst.max(d);
        }
        eprintln!("batch {batch_size} window {sort_window}: max|a-b| = {worst:.3e}");
        assert!(
            worst <= TOL,
            "batch {batch_size} window {sort_window}: {worst:e}"
        );
        let st = te.stats();
        assert_eq!(st.tokens, 2 * (7 + 65 + 150));
        assert!(st.padded_tokens >= st.tokens);
        if (batch_size, sort_window) == (2, 6) {
            // Sorted pairs (7,7), (65,65), (150,150): no padding at all.
            assert_eq!(st.padded_tokens, st.tokens);
        }
    }
}

/// bf16 weights and compute against the fp32 HF output. bf16 keeps 8 mantissa bits
/// (relative step 2^-8 ≈ 0.004); through two blocks on outputs of std ≈ 1 we allow
/// max|a−b| ≤ 0.15 and mean|a−b| ≤ 0.02.
#[test]
fn bf16_is_close_to_fp32() {
    let Some(dir) = t5_reference() else { return };
    let io = dir.join("tiny_t5_io.safetensors");
    let ids = read_tensor(&io, "input_ids");
    let mask = read_tensor(&io, "attention_mask");
    let want = read_tensor(&io, "last_hidden_state_masked");
    let (_vs, enc) = build(&dir, Kind::BFloat16);
    let out = enc.forward(&ids, &mask).unwrap();
    assert_eq!(out.kind(), Kind::BFloat16);
    let out = out.to_kind(Kind::Float) * mask.unsqueeze(-1).to_kind(Kind::Float);
    let max = max_abs_diff(&out, &want);
    let mean = (&out - &want).abs().mean(Kind::Double).double_value(&[]);
    eprintln!("bf16 vs fp32 reference: max|a-b| = {max:.3e}, mean|a-b| = {mean:.3e}");
    assert!(max <= 0.15 && mean <= 0.02, "max {max}, mean {mean}");
}
