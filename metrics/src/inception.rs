//! pytorch-fid's FID Inception (the TensorFlow `2015-12-05` graph) in tch.
//!
//! The network is torchvision's Inception-v3 with the FID patches of pytorch-fid
//! (`FIDInceptionA/C/E_1/E_2`: average pools that exclude the padding, a max pool in the last
//! block) and BatchNorm eps 1e-3. torch-fidelity's `FeatureExtractorInceptionV3` (used by
//! torchmetrics, and the graph clean-fid runs) is the same network with the same tensor names, so
//! one implementation serves every protocol; the protocols differ only in how the 299×299 input is
//! made ([`crate::resize::Mode`]).
//!
//! Variable names are exactly the checkpoint keys of `pt_inception-2015-12-05-6726825d.pth`
//! (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch_pool.bn.running_var`, …);
//! `tools/convert_inception.py` turns that file into safetensors. [`FidInception::load`] is strict:
//! every tensor must be present with its shape, and the error lists every one that is not.
//!
//! Features ([`Dims`]): 64 (after the first max pool), 192 (after the second), 768 (after
//! `Mixed_6e`, before the aux classifier), 2048 (pool3), each spatially averaged to `[N, dims]`
//! as pytorch-fid's `get_activations` and torch-fidelity do.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{io, Error, Result};

/// Which block's output is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dims {
    D64,
    D192,
    D768,
    D2048,
}

impl Dims {
    pub const ALL: [Dims; 4] = [Dims::D64, Dims::D192, Dims::D768, Dims::D2048];

    /// Number of feature values (never zero).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Dims::D64 => 64,
            Dims::D192 => 192,
            Dims::D768 => 768,
            Dims::D2048 => 2048,
        }
    }

    /// The `Dims` with `n` values, if there is one.
    pub fn from_len(n: usize) -> Option<Dims> {
        Dims::ALL.into_iter().find(|d| d.len() == n)
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.len())
    }
}

/// Conv (no bias) → BatchNorm (eval, eps 1e-3) → ReLU: torchvision's `BasicConv2d`.
#[derive(Debug)]
struct BasicConv {
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    mean: Tensor,
    var: Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
    /// The BatchNorm folded into the convolution (weight in channels-last layout, bias),
    /// made by [`FidInception::fuse`].
    fused: Option<(Tensor, Tensor)>,
}

/// The same values in channels-last (NHWC) memory layout, still indexed as NCHW: oneDNN's
/// convolutions run on it without reordering to and from their blocked layout.
fn channels_last(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}

impl BasicConv {
    fn new(p: &nn::Path, cin: i64, cout: i64, k: [i64; 2], stride: i64, padding: [i64; 2]) -> Self {
        let c = p / "conv";
        let bn = p / "bn";
        BasicConv {
            weight: c.zeros_no_train("weight", &[cout, cin, k[0], k[1]]),
            bn_weight: bn.ones_no_train("weight", &[cout]),
            bn_bias: bn.zeros_no_train("bias", &[cout]),
            mean: bn.zeros_no_train("running_mean", &[cout]),
            var: bn.ones_no_train("running_var", &[cout]),
            stride: [stride, stride],
            padding,
            fused: None,
        }
    }

    /// Folds the BatchNorm into the convolution: `w·s` and `β − μ·s` with `s = γ / √(σ² + ε)`
    /// (in f64, then f32), as inference frameworks do; equal to conv → BN up to rounding.
    fn fuse(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let d = |t: &Tensor| t.f_to_kind(Kind::Double);
        let s = d(&self.bn_weight)?.f_div(&d(&self.var)?.f_add_scalar(1e-3)?.f_sqrt()?)?;
        let w = d(&self.weight)?.f_mul(&s.f_view([-1, 1, 1, 1])?)?.f_to_kind(Kind::Float)?;
        let b = d(&self.bn_bias)?.f_sub(&d(&self.mean)?.f_mul(&s)?)?.f_to_kind(Kind::Float)?;
        self.fused = Some((channels_last(&w)?, b));
        Ok(())
    }

    /// Square kernel `k`, stride 1, padding `pad`.
    fn sq(p: &nn::Path, cin: i64, cout: i64, k: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], 1, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((w, b)) = &self.fused {
            return Ok(x.f_conv2d(w, Some(b), self.stride, self.padding, [1, 1], 1)?.f_relu()?);
        }
        let y = x.f_conv2d(&self.weight, None::<Tensor>, self.stride, self.padding, [1, 1], 1)?;
        let y = y.f_batch_norm(
            Some(&self.bn_weight),
            Some(&self.bn_bias),
            Some(&self.mean),
            Some(&self.var),
            false,
            0.1,
            1e-3,
            true,
        )?;
        Ok(y.f_relu()?)
    }
}

/// TensorFlow's average pool: 3×3, stride 1, padding 1, the padding not counted.
fn avg_pool_tf(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)?)
}

fn max_pool_3s2(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)?)
}

fn cat(xs: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::f_cat(xs, 1)?)
}

/// `FIDInceptionA` (Mixed_5b/5c/5d).
#[derive(Debug)]
struct BlockA {
    b1: BasicConv,
    b5_1: BasicConv,
    b5_2: BasicConv,
    b3_1: BasicConv,
    b3_2: BasicConv,
    b3_3: BasicConv,
    pool: BasicConv,
}

impl BlockA {
    fn new(p: &nn::Path, cin: i64, pool_features: i64) -> Self {
        BlockA {
            b1: BasicConv::sq(&(p / "branch1x1"), cin, 64, 1, 0),
            b5_1: BasicConv::sq(&(p / "branch5x5_1"), cin, 48, 1, 0),
            b5_2: BasicConv::sq(&(p / "branch5x5_2"), 48, 64, 5, 2),
            b3_1: BasicConv::sq(&(p / "branch3x3dbl_1"), cin, 64, 1, 0),
            b3_2: BasicConv::sq(&(p / "branch3x3dbl_2"), 64, 96, 3, 1),
            b3_3: BasicConv::sq(&(p / "branch3x3dbl_3"), 96, 96, 3, 1),
            pool: BasicConv::sq(&(p / "branch_pool"), cin, pool_features, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1.forward(x)?;
        let b = self.b5_2.forward(&self.b5_1.forward(x)?)?;
        let c = self.b3_3.forward(&self.b3_2.forward(&self.b3_1.forward(x)?)?)?;
        let d = self.pool.forward(&avg_pool_tf(x)?)?;
        cat(&[a, b, c, d])
    }
}

/// torchvision's `InceptionB` (Mixed_6a): grid reduction 35 → 17.
#[derive(Debug)]
struct BlockB {
    b3: BasicConv,
    d1: BasicConv,
    d2: BasicConv,
    d3: BasicConv,
}

impl BlockB {
    fn new(p: &nn::Path, cin: i64) -> Self {
        BlockB {
            b3: BasicConv::new(&(p / "branch3x3"), cin, 384, [3, 3], 2, [0, 0]),
            d1: BasicConv::sq(&(p / "branch3x3dbl_1"), cin, 64, 1, 0),
            d2: BasicConv::sq(&(p / "branch3x3dbl_2"), 64, 96, 3, 1),
            d3: BasicConv::new(&(p / "branch3x3dbl_3"), 96, 96, [3, 3], 2, [0, 0]),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b3.forward(x)?;
        let b = self.d3.forward(&self.d2.forward(&self.d1.forward(x)?)?)?;
        cat(&[a, b, max_pool_3s2(x)?])
    }
}

/// `FIDInceptionC` (Mixed_6b..6e): factorised 7×7 convolutions.
#[derive(Debug)]
struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    d7: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(p: &nn::Path, cin: i64, c7: i64) -> Self {
        let h = |name: &str, i, o| BasicConv::new(&(p / name), i, o, [1, 7], 1, [0, 3]);
        let v = |name: &str, i, o| BasicConv::new(&(p / name), i, o, [7, 1], 1, [3, 0]);
        BlockC {
            b1: BasicConv::sq(&(p / "branch1x1"), cin, 192, 1, 0),
            b7: [
                BasicConv::sq(&(p / "branch7x7_1"), cin, c7, 1, 0),
                h("branch7x7_2", c7, c7),
                v("branch7x7_3", c7, 192),
            ],
            d7: [
                BasicConv::sq(&(p / "branch7x7dbl_1"), cin, c7, 1, 0),
                v("branch7x7dbl_2", c7, c7),
                h("branch7x7dbl_3", c7, c7),
                v("branch7x7dbl_4", c7, c7),
                h("branch7x7dbl_5", c7, 192),
            ],
            pool: BasicConv::sq(&(p / "branch_pool"), cin, 192, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let chain = |convs: &[BasicConv]| -> Result<Tensor> {
            let mut y = convs[0].forward(x)?;
            for c in &convs[1..] {
                y = c.forward(&y)?;
            }
            Ok(y)
        };
        let a = self.b1.forward(x)?;
        let b = chain(&self.b7)?;
        let c = chain(&self.d7)?;
        let d = self.pool.forward(&avg_pool_tf(x)?)?;
        cat(&[a, b, c, d])
    }
}

/// torchvision's `InceptionD` (Mixed_7a): grid reduction 17 → 8.
#[derive(Debug)]
struct BlockD {
    b3: [BasicConv; 2],
    b7: [BasicConv; 4],
}

impl BlockD {
    fn new(p: &nn::Path, cin: i64) -> Self {
        BlockD {
            b3: [
                BasicConv::sq(&(p / "branch3x3_1"), cin, 192, 1, 0),
                BasicConv::new(&(p / "branch3x3_2"), 192, 320, [3, 3], 2, [0, 0]),
            ],
            b7: [
                BasicConv::sq(&(p / "branch7x7x3_1"), cin, 192, 1, 0),
                BasicConv::new(&(p / "branch7x7x3_2"), 192, 192, [1, 7], 1, [0, 3]),
                BasicConv::new(&(p / "branch7x7x3_3"), 192, 192, [7, 1], 1, [3, 0]),
                BasicConv::new(&(p / "branch7x7x3_4"), 192, 192, [3, 3], 2, [0, 0]),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b3[1].forward(&self.b3[0].forward(x)?)?;
        let mut b = self.b7[0].forward(x)?;
        for c in &self.b7[1..] {
            b = c.forward(&b)?;
        }
        cat(&[a, b, max_pool_3s2(x)?])
    }
}

/// The pool branch of an E block: TF average pool (`FIDInceptionE_1`, Mixed_7b) or the 3×3
/// stride-1 max pool of the TF graph (`FIDInceptionE_2`, Mixed_7c).
#[derive(Clone, Copy, Debug)]
enum EPool {
    Avg,
    Max,
}

/// `FIDInceptionE_1` / `FIDInceptionE_2` (Mixed_7b, Mixed_7c): expanded filter banks.
#[derive(Debug)]
struct BlockE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2a: BasicConv,
    b3_2b: BasicConv,
    d1: BasicConv,
    d2: BasicConv,
    d3a: BasicConv,
    d3b: BasicConv,
    pool: BasicConv,
    pool_kind: EPool,
}

impl BlockE {
    fn new(p: &nn::Path, cin: i64, pool_kind: EPool) -> Self {
        let h = |name: &str, i, o| BasicConv::new(&(p / name), i, o, [1, 3], 1, [0, 1]);
        let v = |name: &str, i, o| BasicConv::new(&(p / name), i, o, [3, 1], 1, [1, 0]);
        BlockE {
            b1: BasicConv::sq(&(p / "branch1x1"), cin, 320, 1, 0),
            b3_1: BasicConv::sq(&(p / "branch3x3_1"), cin, 384, 1, 0),
            b3_2a: h("branch3x3_2a", 384, 384),
            b3_2b: v("branch3x3_2b", 384, 384),
            d1: BasicConv::sq(&(p / "branch3x3dbl_1"), cin, 448, 1, 0),
            d2: BasicConv::sq(&(p / "branch3x3dbl_2"), 448, 384, 3, 1),
            d3a: h("branch3x3dbl_3a", 384, 384),
            d3b: v("branch3x3dbl_3b", 384, 384),
            pool: BasicConv::sq(&(p / "branch_pool"), cin, 192, 1, 0),
            pool_kind,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.b1.forward(x)?;
        let t = self.b3_1.forward(x)?;
        let b = cat(&[self.b3_2a.forward(&t)?, self.b3_2b.forward(&t)?])?;
        let t = self.d2.forward(&self.d1.forward(x)?)?;
        let c = cat(&[self.d3a.forward(&t)?, self.d3b.forward(&t)?])?;
        let pooled = match self.pool_kind {
            EPool::Avg => avg_pool_tf(x)?,
            EPool::Max => x.f_max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)?,
        };
        let d = self.pool.forward(&pooled)?;
        cat(&[a, b, c, d])
    }
}

/// The FID Inception network up to pool3 (the 1008-class `fc` layer is not built: a weights
/// file's `fc.*` tensors are ignored).
#[derive(Debug)]
pub struct FidInception {
    conv1a: BasicConv,
    conv2a: BasicConv,
    conv2b: BasicConv,
    conv3b: BasicConv,
    conv4a: BasicConv,
    mixed5: [BlockA; 3],
    mixed6a: BlockB,
    mixed6: [BlockC; 4],
    mixed7a: BlockD,
    mixed7b: BlockE,
    mixed7c: BlockE,
    device: Device,
}

impl FidInception {
    /// Declares every tensor under `p` (zeros / ones until loaded) with pytorch-fid's names.
    pub fn new(p: &nn::Path) -> Self {
        FidInception {
            conv1a: BasicConv::new(&(p / "Conv2d_1a_3x3"), 3, 32, [3, 3], 2, [0, 0]),
            conv2a: BasicConv::sq(&(p / "Conv2d_2a_3x3"), 32, 32, 3, 0),
            conv2b: BasicConv::sq(&(p / "Conv2d_2b_3x3"), 32, 64, 3, 1),
            conv3b: BasicConv::sq(&(p / "Conv2d_3b_1x1"), 64, 80, 1, 0),
            conv4a: BasicConv::sq(&(p / "Conv2d_4a_3x3"), 80, 192, 3, 0),
            mixed5: [
                BlockA::new(&(p / "Mixed_5b"), 192, 32),
                BlockA::new(&(p / "Mixed_5c"), 256, 64),
                BlockA::new(&(p / "Mixed_5d"), 288, 64),
            ],
            mixed6a: BlockB::new(&(p / "Mixed_6a"), 288),
            mixed6: [
                BlockC::new(&(p / "Mixed_6b"), 768, 128),
                BlockC::new(&(p / "Mixed_6c"), 768, 160),
                BlockC::new(&(p / "Mixed_6d"), 768, 160),
                BlockC::new(&(p / "Mixed_6e"), 768, 192),
            ],
            mixed7a: BlockD::new(&(p / "Mixed_7a"), 768),
            mixed7b: BlockE::new(&(p / "Mixed_7b"), 1280, EPool::Avg),
            mixed7c: BlockE::new(&(p / "Mixed_7c"), 2048, EPool::Max),
            device: p.device(),
        }
    }

    /// A `VarStore` on `device` holding the network, filled strictly from a safetensors file,
    /// and the network with its BatchNorms folded ([`FidInception::fuse`]).
    pub fn load(path: &Path, device: Device) -> Result<(FidInception, nn::VarStore)> {
        let mut vs = nn::VarStore::new(device);
        let mut net = FidInception::new(&vs.root());
        load_strict(&mut vs, path)?;
        net.fuse()?;
        Ok((net, vs))
    }

    /// Folds every BatchNorm into its convolution, from the variables' current values (call
    /// it again after loading other weights). About 1.7× faster on CPU, where
    /// the folded weights are also kept channels-last; the features agree with the unfolded
    /// network to about 1e-6 relative (tested).
    pub fn fuse(&mut self) -> Result<()> {
        for c in self.convs() {
            c.fuse()?;
        }
        Ok(())
    }

    /// Every `BasicConv`, in no particular order.
    fn convs(&mut self) -> Vec<&mut BasicConv> {
        let mut v = vec![&mut self.conv1a, &mut self.conv2a, &mut self.conv2b, &mut self.conv3b, &mut self.conv4a];
        for b in &mut self.mixed5 {
            v.extend([&mut b.b1, &mut b.b5_1, &mut b.b5_2, &mut b.b3_1, &mut b.b3_2, &mut b.b3_3, &mut b.pool]);
        }
        let b = &mut self.mixed6a;
        v.extend([&mut b.b3, &mut b.d1, &mut b.d2, &mut b.d3]);
        for b in &mut self.mixed6 {
            v.push(&mut b.b1);
            v.extend(b.b7.iter_mut());
            v.extend(b.d7.iter_mut());
            v.push(&mut b.pool);
        }
        let b = &mut self.mixed7a;
        v.extend(b.b3.iter_mut());
        v.extend(b.b7.iter_mut());
        for b in [&mut self.mixed7b, &mut self.mixed7c] {
            v.extend([&mut b.b1, &mut b.b3_1, &mut b.b3_2a, &mut b.b3_2b, &mut b.d1, &mut b.d2, &mut b.d3a, &mut b.d3b, &mut b.pool]);
        }
        v
    }

    /// The device the network's tensors live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Features `[N, dims]` (f32, on the network's device) of a batch `[N, 3, 299, 299]` that is
    /// already resized and scaled to the network's range (see [`crate::resize::Mode`]).
    /// Runs under `no_grad`; the input is moved to the network's device and cast to f32.
    pub fn features(&self, x: &Tensor, dims: Dims) -> Result<Tensor> {
        let mut all = self.features_upto(x, dims)?;
        Ok(all.pop().expect("at least one block"))
    }

    /// The features of every block up to and including `last`, in the order 64, 192, 768, 2048
    /// (one pass through the network).
    pub fn features_upto(&self, x: &Tensor, last: Dims) -> Result<Vec<Tensor>> {
        let size = x.size();
        if size.len() != 4 || size[1] != 3 || size[2] != 299 || size[3] != 299 || size[0] == 0 {
            return Err(Error::Input(format!("Inception input must be [N>0, 3, 299, 299], got {size:?}")));
        }
        let _guard = tch::no_grad_guard();
        let x = channels_last(&x.f_to_device(self.device)?.f_to_kind(Kind::Float)?)?;
        let mut out = Vec::new();
        let mut keep = |y: &Tensor, d: Dims| -> Result<bool> {
            out.push(y.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?);
            Ok(d == last)
        };
        // 1. stem to the first max pool: 64 × 73 × 73
        let y = self.conv2b.forward(&self.conv2a.forward(&self.conv1a.forward(&x)?)?)?;
        let y = max_pool_3s2(&y)?;
        if keep(&y, Dims::D64)? {
            return Ok(out);
        }
        // 2. to the second max pool: 192 × 35 × 35
        let y = max_pool_3s2(&self.conv4a.forward(&self.conv3b.forward(&y)?)?)?;
        if keep(&y, Dims::D192)? {
            return Ok(out);
        }
        // 3. Mixed_5b..Mixed_6e: 768 × 17 × 17
        let mut y = y;
        for b in &self.mixed5 {
            y = b.forward(&y)?;
        }
        y = self.mixed6a.forward(&y)?;
        for b in &self.mixed6 {
            y = b.forward(&y)?;
        }
        if keep(&y, Dims::D768)? {
            return Ok(out);
        }
        // 4. Mixed_7a..7c and the final average pool: 2048
        let y = self.mixed7c.forward(&self.mixed7b.forward(&self.mixed7a.forward(&y)?)?)?;
        keep(&y, Dims::D2048)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_reaches_every_convolution() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = FidInception::new(&vs.root());
        let n = vs.variables().keys().filter(|k| k.ends_with("conv.weight")).count();
        let mut ptrs: Vec<*const BasicConv> = net.convs().into_iter().map(|c| c as *const BasicConv).collect();
        ptrs.sort();
        ptrs.dedup();
        assert_eq!((ptrs.len(), n), (94, 94));
        net.fuse().unwrap();
        assert!(net.convs().iter().all(|c| c.fused.is_some()));
    }
}

/// Keys of a checkpoint that the network does not use and that may be present.
fn ignorable(key: &str) -> bool {
    key.starts_with("fc.") || key.ends_with(".num_batches_tracked")
}

/// Fills every variable of `vs` from the safetensors file at `path`: all must be present with the
/// variable's shape (f32, f16, bf16 or f64 values); keys the store lacks are an error too, except
/// `fc.*` and `*.num_batches_tracked`. The error names the file and lists every problem.
pub fn load_strict(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let werr = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| werr(format!("not a safetensors file: {e}")))?;
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut missing = Vec::new();
    let mut misshapen = Vec::new();
    let mut loaded = Vec::new();
    for (name, var) in &vars {
        let view = match st.tensor(name) {
            Ok(v) => v,
            Err(_) => {
                missing.push(name.clone());
                continue;
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            misshapen.push(format!("{name}: {shape:?} in the file, {:?} expected", var.size()));
            continue;
        }
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::F16 => Kind::Half,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::F64 => Kind::Double,
            d => {
                misshapen.push(format!("{name}: dtype {d:?}, a float type expected"));
                continue;
            }
        };
        loaded.push((var.shallow_clone(), Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    let unexpected: Vec<String> =
        st.names().into_iter().filter(|k| !vars.contains_key(*k) && !ignorable(k)).map(|k| k.to_string()).collect();
    if !missing.is_empty() || !misshapen.is_empty() || !unexpected.is_empty() {
        let mut msg = String::from("not the FID Inception's weights (pytorch-fid's pt_inception-2015-12-05 names):");
        let list = |msg: &mut String, what: &str, v: &[String]| {
            if !v.is_empty() {
                let shown: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
                let more = if v.len() > 12 { format!(" … and {} more", v.len() - 12) } else { String::new() };
                msg.push_str(&format!(" {} {what}: {}{more};", v.len(), shown.join(", ")));
            }
        };
        list(&mut msg, "missing", &missing);
        list(&mut msg, "misshapen", &misshapen);
        list(&mut msg, "unexpected", &unexpected);
        msg.pop();
        return Err(werr(msg));
    }
    let _guard = tch::no_grad_guard();
    for (mut var, src) in loaded {
        var.f_copy_(&src)?;
    }
    Ok(())
}

/// Deterministic stand-in weights for tests and benchmarks (not a trained network), computed bit
/// for bit the same by `tools/metrics_fixtures/inception.py`, so goldens from the reference
/// packages can be checked without committing 24M parameters.
///
/// Tensor `t` (its index among the network's names in sorted order; `fc.*` excluded) gets
/// `v = 2·unit(1000 + t, i) − 1` for element `i`, where `unit` is [`formula::unit`], then:
/// conv weights `v·√(6 / fan_in)` (f32 product), BN weight `1 + v/4`, bias `v/10`,
/// running mean `v/10`, running var `1 + v/2`.
pub mod formula {
    use std::path::Path;

    use tch::{nn, Tensor};

    use crate::error::{Error, Result};

    /// murmur3's finaliser of `a·0x9E3779B1 + b·0x85EBCA77 + 0x165667B1` (mod 2³²).
    pub fn hash_u32(a: u32, b: u32) -> u32 {
        let mut h = a.wrapping_mul(0x9E37_79B1).wrapping_add(b.wrapping_mul(0x85EB_CA77)).wrapping_add(0x1656_67B1);
        h ^= h >> 16;
        h = h.wrapping_mul(0x85EB_CA6B);
        h ^= h >> 13;
        h = h.wrapping_mul(0xC2B2_AE35);
        h ^ (h >> 16)
    }

    /// `n` values in [0, 1), exact in f32: `(hash_u32(a, i) >> 8) / 2²⁴`.
    pub fn unit(a: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (hash_u32(a, i as u32) >> 8) as f32 * (1.0 / 16_777_216.0)).collect()
    }

    /// The values of tensor `name` (index `t` in sorted order) of shape `shape`, row-major.
    pub fn values(name: &str, t: usize, shape: &[i64]) -> Vec<f32> {
        let n: i64 = shape.iter().product();
        let v = unit(1000 + t as u32, n as usize).into_iter().map(|u| 2.0 * u - 1.0);
        if name.ends_with("conv.weight") {
            let fan_in: i64 = shape[1..].iter().product();
            let s = (6.0f64 / fan_in as f64).sqrt() as f32;
            v.map(|v| v * s).collect()
        } else if name.ends_with("bn.weight") {
            v.map(|v| 1.0 + 0.25 * v).collect()
        } else if name.ends_with("running_var") {
            v.map(|v| 1.0 + 0.5 * v).collect()
        } else {
            // bn.bias, bn.running_mean
            v.map(|v| 0.1 * v).collect()
        }
    }

    fn tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
            .into_iter()
            .enumerate()
            .map(|(t, (name, var))| {
                let shape = var.size();
                let vals = values(&name, t, &shape);
                (name, Tensor::from_slice(&vals).reshape(&shape))
            })
            .collect()
    }

    /// Writes the formula weights of every tensor of the FID Inception to a safetensors file.
    pub fn write(path: &Path) -> Result<()> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _net = super::FidInception::new(&vs.root());
        let ts = tensors(&vs);
        Tensor::write_safetensors(&ts, path)
            .map_err(|e| Error::Weights { path: path.to_path_buf(), msg: format!("cannot write: {e}") })
    }
}
