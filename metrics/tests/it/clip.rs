//! CLIP score against torchmetrics and transformers on a tiny random `CLIPModel`
//! (fixtures by `tools/metrics_fixtures/clip.py`): tokenizer ids exact, the processor's Pillow
//! crops exact, embeddings ≤ 1e-4, scores ≤ 1e-3.

use std::path::{Path, PathBuf};

use mdm_metrics::clip::preprocess::resize_bicubic;
use mdm_metrics::clip::{clip_score, mean_score, ClipModel, ClipTokenizer, Preprocess};
use serde_json::Value;
use tch::{Device, Tensor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(dir().join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn matrix_i64(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect())
        .collect()
}

fn matrix_f64(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(t.to_kind(tch::Kind::Double)).unwrap()
}

/// Largest |a - b| over two matrices of one shape.
fn max_err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

fn images(g: &Value) -> Vec<image::RgbImage> {
    strings(&g["images"])
        .iter()
        .map(|n| image::open(dir().join("images").join(n)).unwrap().to_rgb8())
        .collect()
}

#[test]
fn tokenizer_ids_are_exact() {
    let g = golden();
    let tok = ClipTokenizer::from_folder(&dir().join("model"), 77).unwrap();
    let caps = strings(&g["captions"]);
    for (c, want) in caps.iter().zip(matrix_i64(&g["token_ids"])) {
        let got: Vec<i64> = tok.encode(c).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(got, want, "{c:?}");
    }
    let b = tok.batch(&caps).unwrap();
    assert_eq!(b.ids, matrix_i64(&g["batch_input_ids"]));
    assert_eq!(b.mask, matrix_i64(&g["batch_attention_mask"]));
    assert_eq!(b.truncated, vec![4], "only the long caption is cut");
    // without the long caption the batch is padded to the next longest, not to 77
    let short = tok.batch(&caps[..4]).unwrap();
    let longest = matrix_i64(&g["token_ids"])[..4].iter().map(Vec::len).max().unwrap();
    assert!(short.ids.iter().all(|r| r.len() == longest) && short.truncated.is_empty());
}

#[test]
fn crops_equal_the_processors_pillow_bicubic() {
    let g = golden();
    let pre = Preprocess::from_file(&dir().join("model/preprocessor_config.json")).unwrap();
    assert_eq!(pre, Preprocess::clip(224));
    for (name, img) in strings(&g["images"]).iter().zip(images(&g)) {
        let want = image::open(dir().join("crops").join(name)).unwrap().to_rgb8();
        let got = pre.crop_image(&img).unwrap();
        assert_eq!(got.dimensions(), (224, 224));
        let diff = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} bytes differ from Pillow");
    }
    // a resize to the same size is the identity, as in Pillow
    let img = images(&g).remove(0);
    let (w, h) = img.dimensions();
    assert_eq!(resize_bicubic(&img, w, h), img);
}

#[test]
fn embeddings_and_scores_match_transformers_and_torchmetrics() {
    let g = golden();
    let clip = ClipModel::load(&dir().join("model"), Device::Cpu).unwrap();
    let imgs = images(&g);
    let caps = strings(&g["captions"]);

    let img = clip.image_embeds(&clip.pixel_values(&imgs).unwrap()).unwrap();
    let e_img = max_err(&rows(&img), &matrix_f64(&g["image_embeds"]));
    let txt = clip.text_embeds(&caps).unwrap();
    let e_txt = max_err(&rows(&txt), &matrix_f64(&g["text_embeds"]));

    let scores = clip_score(&clip, &imgs, &caps).unwrap();
    let want: Vec<f64> = g["per_sample_scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let e_score = scores.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let e_mean = (mean_score(&scores) - g["clip_score"].as_f64().unwrap()).abs();
    eprintln!("clip max errors: image embeds {e_img:.2e}, text embeds {e_txt:.2e}, scores {e_score:.2e}, mean {e_mean:.2e}");
    assert!(e_img <= 1e-4, "image embeddings differ by {e_img}");
    assert!(e_txt <= 1e-4, "text embeddings differ by {e_txt}");
    assert!(e_score <= 1e-3, "per-sample scores differ by {e_score}");
    assert!(e_mean <= 1e-3, "CLIPScore differs by {e_mean}");
    assert!(want.iter().any(|&s| s.abs() > 1.0), "the fixture's scores are not all near zero");

    // one by one gives the same scores as the batch (padding does not leak into the pooled token)
    for i in 0..imgs.len() {
        let s = clip_score(&clip, &imgs[i..=i], &caps[i..=i]).unwrap()[0];
        assert!((s - scores[i]).abs() <= 1e-3, "sample {i}: {s} alone, {} in the batch", scores[i]);
    }
}

/// Copies the model folder into a temporary one, `edit` changing what it likes.
fn model_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir().join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    edit(tmp.path());
    tmp
}

#[test]
fn first_occurrence_pooling_matches_transformers() {
    // eos_token_id other than 2: the first occurrence of that id is pooled (position 0 without
    // one); the fixture names `a</w>` so that every caption pools somewhere else than at EOS
    let g = golden();
    let eos = g["pool_token_id"].as_i64().unwrap();
    let tmp = model_copy(|d| {
        let p = d.join("config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg["text_config"]["eos_token_id"] = eos.into();
        std::fs::write(&p, cfg.to_string()).unwrap();
    });
    let clip = ClipModel::load(tmp.path(), Device::Cpu).unwrap();
    let txt = clip.text_embeds(&strings(&g["captions"])).unwrap();
    let e = max_err(&rows(&txt), &matrix_f64(&g["text_embeds_first_occurrence_pooling"]));
    eprintln!("clip max error, text embeds with first-occurrence pooling: {e:.2e}");
    assert!(e <= 1e-4, "text embeddings with first-occurrence pooling differ by {e}");
}

#[test]
fn loading_is_strict_and_names_file_and_keys() {
    let edit_weights = |f: fn(&mut Vec<(String, Tensor)>)| {
        model_copy(move |d| {
            let p = d.join("model.safetensors");
            let mut t = Tensor::read_safetensors(&p).unwrap();
            f(&mut t);
            let v: Vec<(&str, &Tensor)> = t.iter().map(|(k, t)| (k.as_str(), t)).collect();
            Tensor::write_safetensors(&v, &p).unwrap();
        })
    };
    let err = |d: &Path| ClipModel::load(d, Device::Cpu).unwrap_err().to_string();

    let missing = edit_weights(|t| t.retain(|(k, _)| k != "text_projection.weight"));
    let e = err(missing.path());
    assert!(e.contains("model.safetensors") && e.contains("missing") && e.contains("text_projection.weight"), "{e}");

    let extra = edit_weights(|t| t.push(("vision_model.extra".into(), Tensor::zeros([2], tch::kind::FLOAT_CPU))));
    let e = err(extra.path());
    assert!(e.contains("unexpected") && e.contains("vision_model.extra"), "{e}");

    // the position_ids buffers of older checkpoints are accepted and ignored
    let old = edit_weights(|t| {
        t.push(("text_model.embeddings.position_ids".into(), Tensor::arange(77, tch::kind::INT64_CPU).view([1, 77])))
    });
    ClipModel::load(old.path(), Device::Cpu).unwrap();

    let shape = model_copy(|d| {
        let p = d.join("config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg["projection_dim"] = 8.into();
        std::fs::write(&p, cfg.to_string()).unwrap();
    });
    let e = err(shape.path());
    assert!(e.contains("shapes differ") && e.contains("visual_projection.weight"), "{e}");

    let no_tok = model_copy(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(err(no_tok.path()).contains("tokenizer.json"));
}

#[test]
fn inputs_are_checked() {
    let g = golden();
    let clip = ClipModel::load(&dir().join("model"), Device::Cpu).unwrap();
    let imgs = images(&g);
    assert!(clip_score(&clip, &imgs[..2], &strings(&g["captions"])[..1]).is_err());
    assert!(clip.image_embeds(&Tensor::zeros([1, 3, 32, 32], tch::kind::FLOAT_CPU)).is_err());
    assert!(mean_score(&[]).is_nan());
    assert_eq!(mean_score(&[-3.0, 1.0]), 0.0);
    assert_eq!(mean_score(&[3.0, 1.0]), 2.0);
}
