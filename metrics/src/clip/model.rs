//! Hugging Face `CLIPModel` in tch: the text transformer and the vision ViT with their
//! projections, under the checkpoint's own key names (`text_model.*`, `vision_model.*`,
//! `text_projection.weight`, `visual_projection.weight`, `logit_scale`).
//!
//! Computation is in f32 whatever the checkpoint stores, as `CLIPModel.from_pretrained` does by
//! default. Attention is the eager formula (softmax of scaled dot products plus an additive mask).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::error::{io, Error, Result};

/// The activation of the MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI's CLIP.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
        }
    }
}

/// `text_config` of `config.json`; each field defaults to `CLIPTextConfig`'s default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Decides the pooled token: `2` (old checkpoints) means the largest id of each row, as
    /// transformers keeps for them; any other value the first occurrence of this id.
    pub eos_token_id: i64,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// `vision_config` of `config.json`; each field defaults to `CLIPVisionConfig`'s default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// The fields of a `CLIPConfig` this model needs. Other keys of the file are ignored: it is
/// Hugging Face's file, not ours.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub projection_dim: i64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            projection_dim: 512,
        }
    }
}

impl ClipConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let invalid = |msg: String| Error::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let cfg: ClipConfig =
            serde_json::from_str(&text).map_err(|e| invalid(format!("not a CLIPConfig: {e}")))?;
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        let positive = [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.max_position_embeddings", t.max_position_embeddings),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
            ("projection_dim", cfg.projection_dim),
        ];
        if let Some((k, x)) = positive.iter().find(|(_, x)| *x <= 0) {
            return Err(invalid(format!("{k} = {x} must be positive")));
        }
        if t.num_hidden_layers < 0 || v.num_hidden_layers < 0 {
            return Err(invalid("num_hidden_layers must not be negative".into()));
        }
        for (k, d, h) in [
            ("text_config", t.hidden_size, t.num_attention_heads),
            ("vision_config", v.hidden_size, v.num_attention_heads),
        ] {
            if d % h != 0 {
                return Err(invalid(format!(
                    "{k}.hidden_size {d} is not a multiple of num_attention_heads {h}"
                )));
            }
        }
        if v.image_size % v.patch_size != 0 {
            return Err(invalid(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        Ok(cfg)
    }
}

/// One pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
struct EncoderLayer {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    ln1: nn::LayerNorm,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    act: Activation,
}

fn layer_norm(p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![d], cfg)
}

impl EncoderLayer {
    fn new(p: &nn::Path, d: i64, ff: i64, heads: i64, eps: f64, act: Activation) -> Self {
        let a = p / "self_attn";
        let lin = Default::default();
        EncoderLayer {
            q: nn::linear(&a / "q_proj", d, d, lin),
            k: nn::linear(&a / "k_proj", d, d, lin),
            v: nn::linear(&a / "v_proj", d, d, lin),
            out: nn::linear(&a / "out_proj", d, d, lin),
            ln1: layer_norm(p / "layer_norm1", d, eps),
            ln2: layer_norm(p / "layer_norm2", d, eps),
            fc1: nn::linear(p / "mlp" / "fc1", d, ff, lin),
            fc2: nn::linear(p / "mlp" / "fc2", ff, d, lin),
            heads,
            act,
        }
    }

    /// `mask`: additive, broadcastable to `[B, heads, L, L]`.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, l, d) = x.size3().expect("encoder input is [B, L, D]");
        let hd = d / self.heads;
        let split = |t: Tensor| t.view([b, l, self.heads, hd]).transpose(1, 2);
        let h = self.ln1.forward(x);
        let (q, k, v) = (split(self.q.forward(&h)), split(self.k.forward(&h)), split(self.v.forward(&h)));
        let mut w = q.matmul(&k.transpose(-1, -2)) * (hd as f64).powf(-0.5);
        if let Some(m) = mask {
            w += m;
        }
        let a = w.softmax(-1, Kind::Float).matmul(&v).transpose(1, 2).reshape([b, l, d]);
        let x = x + self.out.forward(&a);
        let h = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.ln2.forward(&x))));
        x + h
    }
}

#[derive(Debug)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(p: &nn::Path, n: i64, d: i64, ff: i64, heads: i64, eps: f64, act: Activation) -> Self {
        let p = p / "layers";
        let layers = (0..n)
            .map(|i| EncoderLayer::new(&(&p / i), d, ff, heads, eps, act))
            .collect();
        Encoder { layers }
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let mut x = x.shallow_clone();
        for l in &self.layers {
            x = l.forward(&x, mask);
        }
        x
    }
}

#[derive(Debug)]
struct TextModel {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
}

impl TextModel {
    fn new(p: &nn::Path, c: &TextConfig) -> Self {
        let e = p / "embeddings";
        let d = c.hidden_size;
        TextModel {
            token_embedding: nn::embedding(&e / "token_embedding", c.vocab_size, d, Default::default()),
            position_embedding: nn::embedding(&e / "position_embedding", c.max_position_embeddings, d, Default::default()),
            encoder: Encoder::new(
                &(p / "encoder"),
                c.num_hidden_layers,
                d,
                c.intermediate_size,
                c.num_attention_heads,
                c.layer_norm_eps,
                c.hidden_act,
            ),
            final_layer_norm: layer_norm(p / "final_layer_norm", d, c.layer_norm_eps),
        }
    }

    /// Pooled output `[B, D]` at `pool[i]` of each row. `ids`, `mask`: `[B, L]` int64.
    fn forward(&self, ids: &Tensor, mask: &Tensor, pool: &Tensor) -> Tensor {
        // 1. token and position embeddings
        let (b, l) = ids.size2().expect("ids are [B, L]");
        let dev = ids.device();
        let pos = Tensor::arange(l, (Kind::Int64, dev));
        let x = self.token_embedding.forward(ids) + self.position_embedding.forward(&pos);
        // 2. causal mask, and padding keys masked out, as one additive [B, 1, L, L] mask
        let causal = Tensor::ones([l, l], (Kind::Bool, dev)).triu(1);
        let pad = mask.eq(0).view([b, 1, 1, l]);
        let masked = pad.logical_or(&causal.view([1, 1, l, l]));
        let add = Tensor::zeros([b, 1, l, l], (Kind::Float, dev)).masked_fill(&masked, f32::MIN as f64);
        // 3. encoder, final norm, the pooled token of each row
        let h = self.final_layer_norm.forward(&self.encoder.forward(&x, Some(&add)));
        let rows = Tensor::arange(b, (Kind::Int64, dev));
        h.index(&[Some(rows), Some(pool.shallow_clone())])
    }
}

#[derive(Debug)]
struct VisionModel {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
    pre_layrnorm: nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
}

impl VisionModel {
    fn new(p: &nn::Path, c: &VisionConfig) -> Self {
        let e = p / "embeddings";
        let d = c.hidden_size;
        let n_pos = (c.image_size / c.patch_size).pow(2) + 1;
        let conv = nn::ConvConfig {
            stride: c.patch_size,
            bias: false,
            ..Default::default()
        };
        VisionModel {
            class_embedding: e.var("class_embedding", &[d], nn::Init::Const(0.)),
            patch_embedding: nn::conv2d(&e / "patch_embedding", c.num_channels, d, c.patch_size, conv),
            position_embedding: nn::embedding(&e / "position_embedding", n_pos, d, Default::default()),
            pre_layrnorm: layer_norm(p / "pre_layrnorm", d, c.layer_norm_eps),
            encoder: Encoder::new(
                &(p / "encoder"),
                c.num_hidden_layers,
                d,
                c.intermediate_size,
                c.num_attention_heads,
                c.layer_norm_eps,
                c.hidden_act,
            ),
            post_layernorm: layer_norm(p / "post_layernorm", d, c.layer_norm_eps),
        }
    }

    /// Pooled output `[B, D]`: the class token after `post_layernorm`.
    fn forward(&self, pixels: &Tensor) -> Tensor {
        // 1. patches, the class token in front, positions
        let b = pixels.size()[0];
        let patches = self.patch_embedding.forward(pixels).flatten(2, -1).transpose(1, 2);
        let d = self.class_embedding.size()[0];
        let cls = self.class_embedding.view([1, 1, d]).expand([b, 1, d], false);
        let n = patches.size()[1] + 1;
        let pos = Tensor::arange(n, (Kind::Int64, pixels.device()));
        let x = Tensor::cat(&[cls, patches], 1) + self.position_embedding.forward(&pos);
        // 2. pre-norm, encoder, post-norm of the class token
        let h = self.encoder.forward(&self.pre_layrnorm.forward(&x), None);
        self.post_layernorm.forward(&h.select(1, 0))
    }
}

/// The network of a `CLIPModel` (no tokenizer, no preprocessing).
#[derive(Debug)]
pub struct ClipNet {
    vs: nn::VarStore,
    cfg: ClipConfig,
    text: TextModel,
    vision: VisionModel,
    text_projection: nn::Linear,
    visual_projection: nn::Linear,
}

/// Buffers that older checkpoints saved and transformers ignores on load.
const IGNORED_KEYS: [&str; 2] = [
    "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
];

impl ClipNet {
    /// A network with zero weights (to be loaded).
    fn new(cfg: ClipConfig) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let text = TextModel::new(&(&root / "text_model"), &cfg.text_config);
        let vision = VisionModel::new(&(&root / "vision_model"), &cfg.vision_config);
        let text_projection = nn::linear(
            &root / "text_projection",
            cfg.text_config.hidden_size,
            cfg.projection_dim,
            no_bias,
        );
        let visual_projection = nn::linear(
            &root / "visual_projection",
            cfg.vision_config.hidden_size,
            cfg.projection_dim,
            no_bias,
        );
        let _ = root.var("logit_scale", &[], nn::Init::Const(0.));
        ClipNet {
            vs,
            cfg,
            text,
            vision,
            text_projection,
            visual_projection,
        }
    }

    /// Builds the network of `cfg` and loads `weights` (safetensors) strictly: every tensor the
    /// network has must be there with its shape, and the file may hold nothing else (besides
    /// the `position_ids` buffers of older checkpoints). Then moves it to `device`.
    pub fn load(cfg: ClipConfig, weights: &Path, device: Device) -> Result<Self> {
        let bad = |msg: String| Error::Weights {
            path: weights.to_path_buf(),
            msg,
        };
        if !weights.is_file() {
            return Err(Error::Io {
                path: weights.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let file: BTreeMap<String, Tensor> = Tensor::read_safetensors(weights)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .filter(|(k, _)| !IGNORED_KEYS.contains(&k.as_str()))
            .collect();
        let mut net = ClipNet::new(cfg);
        let vars = net.vs.variables();
        let mut problems = vec![];
        let mut missing: Vec<&String> = vars.keys().filter(|k| !file.contains_key(*k)).collect();
        missing.sort();
        if !missing.is_empty() {
            problems.push(format!("{} missing: {}", missing.len(), list(&missing)));
        }
        let extra: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k)).collect();
        if !extra.is_empty() {
            problems.push(format!("{} unexpected: {}", extra.len(), list(&extra)));
        }
        let mut shapes: Vec<String> = vars
            .iter()
            .filter_map(|(k, v)| {
                let t = file.get(k)?;
                (t.size() != v.size()).then(|| format!("{k}: file {:?}, config {:?}", t.size(), v.size()))
            })
            .collect();
        shapes.sort();
        if !shapes.is_empty() {
            let refs: Vec<&String> = shapes.iter().collect();
            problems.push(format!("{} shapes differ from config.json: {}", shapes.len(), list(&refs)));
        }
        if let Some((k, t)) = file.iter().find(|(_, t)| !t.is_floating_point()) {
            problems.push(format!("{k} is {:?}, not floating point", t.kind()));
        }
        if !problems.is_empty() {
            return Err(bad(problems.join("; ")));
        }
        {
            let _g = tch::no_grad_guard();
            for (k, v) in &vars {
                let mut v = v.shallow_clone();
                v.copy_(&file[k].to_kind(Kind::Float));
            }
        }
        net.vs.set_device(device);
        net.vs.freeze();
        Ok(net)
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// `logit_scale` as stored (the similarity logits are scaled by its exponential).
    pub fn logit_scale(&self) -> f64 {
        self.vs.root().get("logit_scale").map_or(f64::NAN, |t| t.double_value(&[]))
    }

    /// Image embeddings `[B, projection_dim]` (not normalised) of `pixel_values`
    /// `[B, channels, image_size, image_size]` f32, as `CLIPModel.get_image_features`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let c = &self.cfg.vision_config;
        let want = [c.num_channels, c.image_size, c.image_size];
        let size = pixel_values.size();
        if size.len() != 4 || size[1..] != want {
            return Err(Error::Input(format!(
                "pixel values are {size:?}, the model takes [B, {}, {}, {}]",
                want[0], want[1], want[2]
            )));
        }
        let _g = tch::no_grad_guard();
        let x = pixel_values.to_device(self.device()).to_kind(Kind::Float);
        Ok(self.visual_projection.forward(&self.vision.forward(&x)))
    }

    /// Text embeddings `[B, projection_dim]` (not normalised) of token rows padded to one length
    /// ≤ `max_position_embeddings`, with `mask` 1 on real tokens, as
    /// `CLIPModel.get_text_features(input_ids, attention_mask)`.
    pub fn text_embeds_of_ids(&self, ids: &[Vec<i64>], mask: &[Vec<i64>]) -> Result<Tensor> {
        let c = &self.cfg.text_config;
        let l = ids.first().map_or(0, Vec::len);
        if ids.is_empty() || l == 0 {
            return Err(Error::Input("no token rows to embed".into()));
        }
        if ids.len() != mask.len() || ids.iter().chain(mask).any(|r| r.len() != l) {
            return Err(Error::Input("token rows and masks must all have one length".into()));
        }
        if l as i64 > c.max_position_embeddings {
            return Err(Error::Input(format!(
                "{l} tokens exceed max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        if let Some(id) = ids.iter().flatten().find(|&&i| i < 0 || i >= c.vocab_size) {
            return Err(Error::Input(format!("token id {id} outside the vocabulary of {}", c.vocab_size)));
        }
        let pool: Vec<i64> = ids.iter().map(|r| pooled_position(r, c.eos_token_id) as i64).collect();
        let dev = self.device();
        let b = ids.len() as i64;
        let ids = Tensor::from_slice(&ids.concat()).view([b, l as i64]).to_device(dev);
        let mask = Tensor::from_slice(&mask.concat()).view([b, l as i64]).to_device(dev);
        let pool = Tensor::from_slice(&pool).to_device(dev);
        let _g = tch::no_grad_guard();
        Ok(self.text_projection.forward(&self.text.forward(&ids, &mask, &pool)))
    }
}

/// The token whose final hidden state is the text's pooled output, as transformers picks it:
/// with `eos_token_id == 2` (checkpoints from before the field was fixed) the first largest id
/// of the row (OpenAI's vocabulary ends with `<|endoftext|>`); otherwise the first occurrence of
/// `eos_token_id`, or position 0 when the row has none (a caption cut at the limit).
pub fn pooled_position(ids: &[i64], eos_token_id: i64) -> usize {
    if eos_token_id == 2 {
        let mut best = 0;
        for (i, &x) in ids.iter().enumerate() {
            if x > ids[best] {
                best = i;
            }
        }
        best
    } else {
        ids.iter().position(|&x| x == eos_token_id).unwrap_or(0)
    }
}

fn list(v: &[&String]) -> String {
    let mut s: Vec<&str> = v.iter().take(6).map(|s| s.as_str()).collect();
    if v.len() > 6 {
        s.push("…");
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_position_follows_transformers() {
        // legacy: first largest id
        assert_eq!(pooled_position(&[5, 9, 3, 9], 2), 1);
        assert_eq!(pooled_position(&[7], 2), 0);
        // eos id: first occurrence, else 0
        assert_eq!(pooled_position(&[5, 1, 8, 1], 1), 1);
        assert_eq!(pooled_position(&[5, 6, 7], 1), 0);
    }

    #[test]
    fn config_defaults_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4}, "x": 1}"#).unwrap();
        let c = ClipConfig::from_file(&p).unwrap();
        assert_eq!(c.text_config.hidden_size, 64);
        assert_eq!(c.text_config.max_position_embeddings, 77);
        assert_eq!(c.vision_config.patch_size, 32);
        assert_eq!(c.projection_dim, 512);
        std::fs::write(&p, r#"{"vision_config": {"hidden_size": 30, "num_attention_heads": 4}}"#).unwrap();
        let e = ClipConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not a multiple"), "{e}");
        std::fs::write(&p, r#"{"text_config": {"hidden_act": "relu"}}"#).unwrap();
        assert!(ClipConfig::from_file(&p).is_err());
    }
}
