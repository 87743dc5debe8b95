//! The forward FLOP counter (`mdm_trainer::flops`), checked against an independent count
//! from the parameter table, against hand-computed toy models, and for its scaling laws.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use mdm_trainer::config::ModelConfig;
use mdm_trainer::flops::{forward_flops, level_sides, FlopCount, Flops, TRAIN_FACTOR};
use mdm_trainer::model::parameter_shapes;

fn model(name: &str) -> ModelConfig {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/models/{name}.toml"));
    ModelConfig::from_file(p).expect("config")
}

/// (conv, linear) FLOPs derived from the parameter table alone: every 4-D weight is a conv,
/// `2·numel·(output pixels)·rows`; every 2-D weight a linear, `2·numel·rows`. The output
/// resolution and the rows come from the module's name (ml-mdm's), the level sides and
/// batch sizes: `down_blocks.i` runs at side/2^i, `up_blocks.k` at side/2^(n-1-k),
/// `mid_blocks` and the adapters at side/2^(n-1); a down resample halves, an up resample
/// doubles; a temporal block's `down_conv` and its linears run at half resolution.
fn table_flops(cfg: &ModelConfig, sides: &[i64], batch: &[i64], tokens: i64, frames: i64) -> (u128, u128) {
    let table = parameter_shapes(cfg).expect("table");
    let depth = cfg.top.depth();
    let clips = batch[depth - 1] as u128;
    // Resolutions per level: 1 + the largest down_blocks index under the level's prefix.
    let split = |name: &str| -> (usize, String) {
        let mut d = 0;
        let mut rest = name;
        while let Some(r) = rest.strip_prefix("inner_unet.") {
            d += 1;
            rest = r;
        }
        (d, rest.to_string())
    };
    let mut nres: BTreeMap<usize, i64> = BTreeMap::new();
    for (name, _, _) in &table {
        let (d, rest) = split(name);
        if let Some(r) = rest.strip_prefix("down_blocks.") {
            let i: i64 = r.split('.').next().unwrap().parse().unwrap();
            let e = nres.entry(d).or_insert(0);
            *e = (*e).max(i + 1);
        }
    }
    let (mut conv, mut linear) = (0u128, 0u128);
    for (name, shape, numel) in &table {
        if !name.ends_with(".weight") || !(shape.len() == 2 || shape.len() == 4) {
            continue;
        }
        let (d, rest) = split(name);
        let parts: Vec<&str> = rest.split('.').collect();
        let n = nres[&d];
        let side = sides[d];
        let rows = (batch[d] * frames) as u128;
        let low = side >> (n - 1);
        let numel = *numel as u128;
        // The side a block-level module runs at.
        let base = match parts[0] {
            "down_blocks" => Some(side >> parts[1].parse::<i64>().unwrap()),
            "up_blocks" => Some(side >> (n - 1 - parts[1].parse::<i64>().unwrap())),
            "mid_blocks" => Some(low),
            _ => None,
        };
        if shape.len() == 4 {
            let (out, r) = match (parts[0], base) {
                ("conv_in" | "conv_out", _) => (side, rows),
                ("in_adapter", _) => (low, rows),
                // Runs on every row of the inner level.
                ("out_adapter", _) => (low, (batch[d + 1] * frames) as u128),
                (_, Some(b)) => match (parts[0], parts[2]) {
                    ("down_blocks", "resample") => (b / 2, rows),
                    ("up_blocks", "resample") => (b * 2, rows),
                    (_, "t_attn") if parts[4] == "down_conv" => (b / 2, rows),
                    _ => (b, rows),
                },
                _ => panic!("unplaced conv {name}"),
            };
            conv += 2 * numel * (out * out) as u128 * r;
        } else {
            let r = match (parts[0], base) {
                ("temb_layer1" | "temb_layer2" | "cond_layers", _) => clips,
                // The text modules run only in the innermost level (which conditions all).
                ("cond_emb", _) if d == depth - 1 => clips,
                ("lm_proj" | "lm_head", _) if d == depth - 1 => clips * tokens as u128,
                ("cond_emb" | "lm_proj" | "lm_head", _) => 0,
                ("class_emb", _) => 0, // an embedding table, not a linear
                (_, Some(b)) if parts[2] == "t_attn" => rows * ((b / 2) * (b / 2)) as u128,
                (_, Some(_)) if parts.last() == Some(&"weight") && parts[parts.len() - 2] == "time_layer" => rows,
                (_, Some(_)) if parts[parts.len() - 2] == "kv_cond" => rows * tokens as u128,
                _ => panic!("unplaced linear {name}"),
            };
            linear += 2 * numel * r;
        }
    }
    (conv, linear)
}

fn count(cfg: &ModelConfig, sides: &[i64], batch: &[i64], tokens: i64, frames: i64) -> FlopCount {
    forward_flops(cfg, sides, batch, tokens, frames).expect("flops")
}

fn check_against_table(name: &str, top_side: i64, batch: &[i64], tokens: i64, frames: i64) {
    let cfg = model(name);
    let sides = level_sides(&cfg, top_side);
    let f = count(&cfg, &sides, batch, tokens, frames).sum();
    let (conv, linear) = table_flops(&cfg, &sides, batch, tokens, frames);
    assert_eq!((f.conv, f.linear), (conv, linear), "{name} sides {sides:?} batch {batch:?}");
    assert!(f.attention > 0, "{name}: attention counted");
}

#[test]
fn tiny_configs_match_the_parameter_table() {
    let _rng = common::torch_rng();
    // Class models: the label is one token.
    check_against_table("tiny_32x32", 32, &[3], 1, 1);
    check_against_table("tiny_64x64", 64, &[2, 2], 1, 1);
    // Mixed batch: the outer level sees 1 sample, the inner 3 (adapters on different rows).
    check_against_table("tiny_64x64", 64, &[1, 3], 1, 1);
    check_against_table("tiny_64x64", 64, &[0, 3], 1, 1);
    check_against_table("tiny_video_32x32", 32, &[2], 7, 4);
    check_against_table("tiny_video_32x32", 32, &[1], 7, 1);
}

#[test]
fn published_configs_match_the_parameter_table() {
    let _rng = common::torch_rng();
    check_against_table("cc12m_64x64", 64, &[4], 128, 1);
    check_against_table("cc12m_256x256", 256, &[3, 8], 128, 1);
    check_against_table("cc12m_1024x1024", 1024, &[1, 2, 2], 128, 1);
    check_against_table("webvid_64x64", 64, &[2], 128, 16);
}

const TOY: &str = r#"
model = "unet"
[unet_config]
num_resnets_per_resolution = [1]
attention_levels = []
num_attention_layers = [0]
conditioning_feature_dim = -1
resolution_channels = [32]
skip_mid_blocks = true
temporal_dim = 32
resnet_config = { num_groups_norm = 32 }
"#;

#[test]
fn toy_model_by_hand() {
    let _rng = common::torch_rng();
    // One resolution of 32 channels, side 8 (64 pixels), one sample, no text, no mid blocks:
    //   conv_in 3→32 3×3:                     2·3·32·9·64            =    110,592
    //   down ResNet 32→32: conv1 + conv2      2·(2·32·32·9·64)       =  2,359,296
    //   up ResNets (skips conv_in and the down ResNet), each 64→32:
    //     conv1 2·64·32·9·64 = 2,359,296, conv2 1,179,648, conv3 (1×1) 2·64·32·64 = 262,144
    //     → 3,801,088 each, two of them                             =  7,602,176
    //   conv_out 32→3 3×3:                    2·32·3·9·64            =    110,592
    //   conv total                                                   = 10,182,656
    //   linear: temb_layer1 8→32 (2·8·32 = 512), temb_layer2 32→32 (2,048), three
    //   time_layers 32→64 (3·4,096 = 12,288)                         =     14,848
    let cfg = ModelConfig::from_toml_str(TOY).expect("toy");
    let f = count(&cfg, &[8], &[1], 0, 1).sum();
    assert_eq!(f, Flops { conv: 10_182_656, linear: 14_848, attention: 0 });

    // The same with one self-attention layer (no FFN) after each ResNet at 8² (L = 64):
    //   per layer: qkv 1×1 2·32·96·64 = 393,216 + proj_out 2·32·32·64 = 131,072 (conv),
    //   QKᵀ + AV 4·64·64·32 = 524,288 (attention); three layers.
    let attn = TOY.replace("attention_levels = []", "attention_levels = [0]").replace("num_attention_layers = [0]", "num_attention_layers = [1]");
    let cfg = ModelConfig::from_toml_str(&attn).expect("toy with attention");
    let f = count(&cfg, &[8], &[1], 0, 1);
    assert_eq!(f.sum(), Flops { conv: 10_182_656 + 3 * 524_288, linear: 14_848, attention: 3 * 524_288 });
    assert_eq!(f.training_step(), TRAIN_FACTOR * (10_182_656 + 6 * 524_288 + 14_848));
    // Self-attention is quadratic in the pixels: side 16 has 4× the pixels, 16× the matmuls.
    let f16 = count(&cfg, &[16], &[1], 0, 1).sum();
    assert_eq!(f16.attention, 16 * 3 * 524_288);
    assert_eq!(f16.conv, 4 * (10_182_656 + 3 * 524_288));
}

#[test]
fn scaling_in_batch_pixels_tokens_and_frames() {
    let _rng = common::torch_rng();
    // Linear in the batch (every level scaled together, text and time MLPs included).
    let cfg = model("cc12m_256x256");
    let sides = level_sides(&cfg, 256);
    assert_eq!(sides, vec![256, 64]);
    let a = count(&cfg, &sides, &[3, 8], 128, 1);
    let b = count(&cfg, &sides, &[6, 16], 128, 1);
    assert_eq!(b.forward(), 2 * a.forward());
    // Mixed batches: fewer outer samples cost less, the inner level's share is unchanged.
    let c = count(&cfg, &sides, &[1, 8], 128, 1);
    assert!(c.levels[0].total() < a.levels[0].total());
    assert_eq!(c.levels[1], a.levels[1]);

    // Attention matmuls: self-attention ∝ L², cross-attention ∝ L·T.
    let cfg = model("cc12m_64x64");
    let self_only = |side: i64| count(&cfg, &[side], &[1], 0, 1).sum().attention;
    let with_text = |side: i64, t: i64| count(&cfg, &[side], &[1], t, 1).sum().attention;
    assert_eq!(self_only(128), 16 * self_only(64));
    let cross = |side: i64, t: i64| with_text(side, t) - self_only(side);
    assert_eq!(cross(128, 128), 4 * cross(64, 128));
    assert_eq!(cross(64, 256), 2 * cross(64, 128));

    // Temporal attention ∝ frames² per pixel; everything else ∝ frames (with clips fixed,
    // except the per-clip time MLPs).
    let cfg = model("webvid_64x64");
    let img = model("cc12m_64x64");
    let f1 = count(&cfg, &[64], &[1], 128, 1).sum();
    let f16 = count(&cfg, &[64], &[1], 128, 16).sum();
    let i16 = count(&img, &[64], &[16], 128, 1).sum();
    let temporal = |f: &Flops, g: &Flops| f.attention - g.attention;
    // webvid = cc12m_64 + temporal blocks: its extra attention at 16 frames is 16× that at 1
    // frame (16× the pixel-frames, each attending to 16 frames instead of 1).
    let img1 = count(&img, &[64], &[1], 128, 1).sum();
    assert_eq!(temporal(&f16, &i16), 256 * temporal(&f1, &img1));
}

#[test]
fn rejects_inconsistent_inputs() {
    let _rng = common::torch_rng();
    let cfg = model("cc12m_256x256");
    assert!(forward_flops(&cfg, &[256], &[1], 128, 1).is_err());
    assert!(forward_flops(&cfg, &[256, 32], &[1, 1], 128, 1).is_err());
    assert!(forward_flops(&cfg, &[256, 64], &[2, 1], 128, 1).is_err());
    assert!(forward_flops(&cfg, &[256, 64], &[1, 1], 128, 0).is_err());
}

#[test]
fn published_configs_per_image() {
    let _rng = common::torch_rng();
    // For the record (bench/RESULTS.md): forward GFLOPs per sample, T5 states of 128 tokens.
    for (name, side, frames) in [("cc12m_64x64", 64, 1), ("cc12m_256x256", 256, 1), ("cc12m_1024x1024", 1024, 1), ("webvid_64x64", 64, 16)] {
        let cfg = model(name);
        let sides = level_sides(&cfg, side);
        let f = count(&cfg, &sides, &vec![1; sides.len()], 128, frames);
        let s = f.sum();
        let g = |x: u128| x as f64 / 1e9;
        let per_level: Vec<String> = f.levels.iter().map(|l| format!("{:.1}", g(l.total()))).collect();
        eprintln!(
            "{name}: forward {:.1} GFLOP per {} (conv {:.1}, linear {:.1}, attention {:.1}; per level {}), training step {:.1} GFLOP",
            g(s.total()),
            if frames > 1 { format!("clip of {frames} frames") } else { "image".into() },
            g(s.conv),
            g(s.linear),
            g(s.attention),
            per_level.join(" / "),
            g(f.training_step())
        );
        assert!(s.total() > 0);
    }
}
