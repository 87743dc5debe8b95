//! Time and micro-conditioning embeddings (ml-mdm's `create_temporal_embedding`).

use tch::{nn, nn::Module, Kind, Tensor};

use super::Init;

/// Sinusoidal features followed by a two-layer MLP:
/// `layer2(silu(layer1([sin(t·f), cos(t·f)])))`, `f_k = exp(-ln(10000)·k/half)`,
/// `half = temporal_dim / 8`, so the sinusoid has width `temporal_dim / 4`.
#[derive(Debug)]
pub struct TimeMlp {
    freqs: Tensor,
    pub layer1: nn::Linear,
    pub layer2: nn::Linear,
}

/// The frequencies `f_k`, computed in fp32 exactly as ml-mdm does (the product `t·f` with
/// t up to 1000 amplifies any rounding difference).
pub fn sinusoid_freqs(temporal_dim: i64, device: tch::Device) -> Tensor {
    let half = temporal_dim / 8;
    let step = (10000f64).ln() / half as f64;
    (Tensor::arange(half, (Kind::Float, device)) * (-step))
        .exp()
        .unsqueeze(0)
}

/// `[sin(t·f), cos(t·f)]` for a (B,) tensor of times (any numeric kind).
pub fn sinusoid(times: &Tensor, freqs: &Tensor) -> Tensor {
    let t = times.to_kind(Kind::Float).view([-1, 1]) * freqs;
    Tensor::cat(&[t.sin(), t.cos()], 1)
}

impl TimeMlp {
    /// `p / name1` and `p / name2` are the two layers (`temb_layer1/2` or `cond_layers.<key>.0/1`).
    pub fn new(l1: nn::Path, l2: nn::Path, temporal_dim: i64, zero_last: bool, init: Init) -> Self {
        let freqs = sinusoid_freqs(temporal_dim, l1.device());
        let layer1 = nn::linear(l1, temporal_dim / 4, temporal_dim, init.linear());
        let cfg2 = if zero_last { Init::Zeros } else { init }.linear();
        let layer2 = nn::linear(l2, temporal_dim, temporal_dim, cfg2);
        TimeMlp {
            freqs,
            layer1,
            layer2,
        }
    }

    pub fn forward(&self, times: &Tensor) -> Tensor {
        let e = sinusoid(times, &self.freqs.to_device(times.device()));
        self.layer2.forward(
            &self
                .layer1
                .forward(&e.to_kind(self.layer1.ws.kind()))
                .silu(),
        )
    }
}
