//! ResNet layers and ml-mdm's `ResNetBlock` (ResNets, optional attention, optional resample).

use tch::{nn, nn::Module, Tensor};

use super::attention::{SelfAttention, TemporalAttention};
use super::{conv1x1, conv3, group_norm, Ctx, Init};
use crate::config::{BlockSpec, Resample};

/// One ResNet layer, time-modulated:
/// `h = conv1(silu(GN1(x)))`, `(a, b) = chunk(time_layer(silu(temb)))`,
/// `h = conv2(dropout(silu(GN2(h)·(1+a)+b)))`, output `h + conv3?(x)`.
#[derive(Debug)]
pub struct ResNet {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_layer: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv3: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResNet {
    pub fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        temporal_dim: i64,
        groups: i64,
        dropout: f64,
        init: Init,
    ) -> Self {
        ResNet {
            norm1: group_norm(&(p / "norm1"), groups, cin),
            conv1: conv3(&(p / "conv1"), cin, cout, 1, init),
            time_layer: nn::linear(p / "time_layer", temporal_dim, 2 * cout, init.linear()),
            norm2: group_norm(&(p / "norm2"), groups, cout),
            conv2: conv3(&(p / "conv2"), cout, cout, 1, Init::Zeros),
            conv3: (cin != cout).then(|| conv1x1(&(p / "conv3"), cin, cout, init)),
            dropout,
        }
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let ab = self
            .time_layer
            .forward(&temb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
        let ab = ab.chunk(2, 1);
        let h = (self.norm2.forward(&h) * (ab[0].shallow_clone() + 1.0) + &ab[1]).silu();
        let h = self.conv2.forward(&h.dropout(self.dropout, train));
        match &self.conv3 {
            Some(c) => h + c.forward(x),
            None => h + x,
        }
    }
}

/// The layer after a block's ResNets ([`Resample`] built).
#[derive(Debug)]
enum ResampleLayer {
    None,
    Down(nn::Conv2D),
    Up(nn::Conv2D),
}

/// ml-mdm's `ResNetBlock`: `n` ResNets, each followed by `layers` attention layers
/// (`attn[i*layers + j]`) and, in video models, `t_layers` temporal attention blocks
/// (`t_attn[i*t_layers + j]`), then an optional resample.
#[derive(Debug)]
pub struct ResNetBlock {
    resnets: Vec<ResNet>,
    attn: Vec<SelfAttention>,
    layers: usize,
    t_attn: Vec<TemporalAttention>,
    t_layers: usize,
    resample: ResampleLayer,
}

impl ResNetBlock {
    pub fn new(p: &nn::Path, s: &BlockSpec, temporal_dim: i64, groups: i64, dropout: f64, init: Init) -> Self {
        let resnets = s
            .channels
            .iter()
            .enumerate()
            .map(|(i, &(cin, cout))| ResNet::new(&(p / "resnets" / i), cin, cout, temporal_dim, groups, dropout, init))
            .collect();
        let layers = s.attention.map_or(0, |a| a.layers);
        let t_layers = s.temporal.map_or(0, |t| t.layers);
        let (mut attn, mut t_attn) = (vec![], vec![]);
        if let Some(a) = s.attention {
            for (i, &(_, cout)) in s.channels.iter().enumerate() {
                for j in 0..layers {
                    attn.push(SelfAttention::new(&(p / "attn" / (i * layers + j)), cout, a.cross, a.ffn, init));
                }
            }
        }
        if let Some(t) = s.temporal {
            for (i, &(_, cout)) in s.channels.iter().enumerate() {
                for j in 0..t_layers {
                    t_attn.push(TemporalAttention::new(&(p / "t_attn" / (i * t_layers + j)), cout, t.pos_emb, init));
                }
            }
        }
        let last = s.channels.last().map_or(0, |c| c.1);
        let resample = match s.resample {
            Resample::Down => ResampleLayer::Down(conv3(&(p / "resample"), last, last, 2, init)),
            Resample::Up => ResampleLayer::Up(conv3(&(p / "resample"), last, last, 1, init)),
            Resample::None => ResampleLayer::None,
        };
        ResNetBlock { resnets, attn, layers, t_attn, t_layers, resample }
    }

    /// Runs the block. `skips` (up blocks) are consumed front first and concatenated as
    /// `cat([x, skip], 1)`; the returned activations (down blocks) are each ResNet(+attention)
    /// output, then the resample output.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &Ctx,
        mut skips: Option<&mut Vec<Tensor>>,
    ) -> (Tensor, Vec<Tensor>) {
        let mut x = x.shallow_clone();
        let mut acts = vec![];
        for (i, r) in self.resnets.iter().enumerate() {
            if let Some(s) = skips.as_deref_mut() {
                if !s.is_empty() {
                    let skip = s.remove(0);
                    x = Tensor::cat(&[&x, &skip], 1);
                }
            }
            x = r.forward(&x, ctx.temb, ctx.train);
            for j in 0..self.layers {
                x = self.attn[i * self.layers + j].forward(&x, ctx.cond, ctx.cond_mask);
            }
            for j in 0..self.t_layers {
                x = self.t_attn[i * self.t_layers + j].forward(&x, ctx.frames);
            }
            acts.push(x.shallow_clone());
        }
        match &self.resample {
            ResampleLayer::None => {}
            ResampleLayer::Down(c) => {
                x = c.forward(&x);
                acts.push(x.shallow_clone());
            }
            ResampleLayer::Up(c) => {
                let (h, w) = (x.size()[2], x.size()[3]);
                x = c.forward(&x.upsample_nearest2d([2 * h, 2 * w], None, None));
                acts.push(x.shallow_clone());
            }
        }
        (x, acts)
    }
}
