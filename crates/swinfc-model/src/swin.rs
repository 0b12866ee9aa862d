//! The Swin Transformer backbone: patch embedding, (shifted) window attention with relative
//! position bias, patch merging. Field names are timm ≥ 0.9 state_dict keys (swinfc-model.md §2.1),
//! so official weights load by name.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::config::StageGeometry;
use crate::drop_path::{DropMasks, drop_path};
use crate::fused::{FusedOps, LAYER_NORM_EPS, gelu, layer_norm as norm, matmul, permute, window_softmax};

/// The mask value timm adds between tokens of different shifted regions.
const MASKED: f32 = -100.0;

/// `linear` applied to `x` [..., d_in]: see [`affine`].
pub(crate) fn apply<B: FusedOps, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    affine(x, linear.weight.val(), linear.bias.as_ref().map(|b| b.val()))
}

/// x [..., d_in] · weight [d_in, d_out] + bias as one 2-D matmul over the flattened leading
/// dimensions. The same arithmetic as `Linear::forward`'s batched form, which Burn 0.21's
/// CubeBackend with fusion (CUDA, wgpu) got wrong when a leading dimension is 1 and `x` is a
/// lazily fused element-wise result: a one-token stage's MLP was off by O(1) (tests/wgpu.rs).
pub(crate) fn affine<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    let y = matmul(x.reshape([rows, dims[D - 1]]), weight);
    let y = match bias {
        Some(bias) => y + bias.unsqueeze(),
        None => y,
    };
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// timm's `_init_weights`: weights N(0, 0.02) (its truncation at ±2 never bites at that std),
/// biases zero.
pub(crate) fn linear<B: Backend>(d_in: usize, d_out: usize, bias: bool, dev: &B::Device) -> Linear<B> {
    Linear {
        weight: Initializer::Normal { mean: 0.0, std: 0.02 }.init([d_in, d_out], dev),
        bias: bias.then(|| Initializer::Zeros.init([d_out], dev)),
    }
}

pub(crate) fn layer_norm<B: Backend>(d: usize, dev: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(LAYER_NORM_EPS).init(dev)
}

#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv2d<B>,
    pub norm: LayerNorm<B>,
}

impl<B: Backend> PatchEmbed<B> {
    pub fn new(patch: usize, dim: usize, dev: &B::Device) -> Self {
        Self {
            proj: Conv2dConfig::new([3, dim], [patch, patch])
                .with_stride([patch, patch])
                .init(dev),
            norm: layer_norm(dim, dev),
        }
    }
}

impl<B: FusedOps> PatchEmbed<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.proj.forward(images); // [B, C, H/p, W/p]
        norm(&self.norm, permute(x, [0, 2, 3, 1])) // [B, H/p, W/p, C]
    }
}

/// W-MSA: multi-head self-attention inside each window, with a learned relative position bias.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    /// [(2w−1)², heads]
    pub relative_position_bias_table: Param<Tensor<B, 2>>,
    /// [N·N] indices into the table (a constant, not saved).
    relative_position_index: Tensor<B, 1, Int>,
    heads: usize,
}

impl<B: Backend> WindowAttention<B> {
    pub fn new(dim: usize, heads: usize, window: usize, dev: &B::Device) -> Self {
        let side = 2 * window - 1;
        let index = relative_position_index(window);
        let n = index.len();
        Self {
            qkv: linear(dim, 3 * dim, true, dev),
            proj: linear(dim, dim, true, dev),
            relative_position_bias_table: Initializer::Normal { mean: 0.0, std: 0.02 }
                .init([side * side, heads], dev),
            relative_position_index: Tensor::from_data(TensorData::new(index, [n]), dev),
            heads,
        }
    }
}

impl<B: FusedOps> WindowAttention<B> {
    /// x [B·nW, N, C] → (output [B·nW, N, C], post-softmax attention [B·nW, heads, N, N]).
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 3>>) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let [bw, n, c] = x.dims();
        let (h, hd) = (self.heads, c / self.heads);
        // q, k and v each from its third of qkv's columns (timm's order q | k | v) rather than as
        // slices of one [.., 3C] product: the gradient of a slice is a zero-filled tensor of the
        // whole product per part, three of them summed, where a third of the weights has a
        // [C, C] one.
        let third = |i: usize| {
            let weight = self.qkv.weight.val().narrow(1, i * c, c);
            let bias = self.qkv.bias.as_ref().map(|b| b.val().narrow(0, i * c, c));
            affine(x.clone(), weight, bias).reshape([bw, n, h, hd])
        };
        let q = permute(third(0), [0, 2, 1, 3]); // [B·nW, heads, N, hd]
        let k_t = permute(third(1), [0, 2, 3, 1]); // [B·nW, heads, hd, N]
        let v = permute(third(2), [0, 2, 1, 3]);

        let bias = self
            .relative_position_bias_table
            .val()
            .select(0, self.relative_position_index.clone()) // [N·N, heads]
            .reshape([n, n, h])
            .permute([2, 0, 1]); // [heads, N, N]
        let scores = matmul(q.mul_scalar((hd as f64).powf(-0.5)), k_t);
        // softmax(scores + bias + mask): mask [nW, N, N] repeats for every image of the batch.
        let attn = window_softmax(scores, bias, mask);
        let out = permute(matmul(attn.clone(), v), [0, 2, 1, 3]).reshape([bw, n, c]);
        (apply(&self.proj, out), attn)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: FusedOps> Mlp<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        apply(&self.fc2, gelu(apply(&self.fc1, x)))
    }
}

/// One Swin block: (S)W-MSA then MLP, each pre-norm with a residual and stochastic depth.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: WindowAttention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    /// [nW, N, N] of 0 / −100 for shifted blocks (a constant, not saved).
    attn_mask: Option<Tensor<B, 3>>,
    window: usize,
    shift: usize,
    drop_rate: f64,
    /// Position among all blocks of the network: selects this block's drop-path streams.
    index: usize,
}

impl<B: Backend> SwinBlock<B> {
    pub fn new(
        geom: StageGeometry,
        shifted: bool,
        mlp_ratio: f64,
        drop_rate: f64,
        index: usize,
        dev: &B::Device,
    ) -> Self {
        let c = geom.channels;
        let hidden = (c as f64 * mlp_ratio) as usize;
        let shift = if shifted { geom.shift } else { 0 };
        let attn_mask = (shift > 0).then(|| {
            let mask = shift_attention_mask(geom.resolution, geom.window, shift);
            let n = geom.window * geom.window;
            Tensor::from_data(TensorData::new(mask, [mask_windows(geom), n, n]), dev)
        });
        Self {
            norm1: layer_norm(c, dev),
            attn: WindowAttention::new(c, geom.heads, geom.window, dev),
            norm2: layer_norm(c, dev),
            mlp: Mlp {
                fc1: linear(c, hidden, true, dev),
                fc2: linear(hidden, c, true, dev),
            },
            attn_mask,
            window: geom.window,
            shift,
            drop_rate,
            index,
        }
    }

    pub fn shift(&self) -> usize {
        self.shift
    }

    pub fn drop_rate(&self) -> f64 {
        self.drop_rate
    }
}

impl<B: FusedOps> SwinBlock<B> {
    /// x [B, H, W, C] → (x [B, H, W, C], attention [B·nW, heads, N, N]).
    pub fn forward(&self, x: Tensor<B, 4>, drop: Option<&DropMasks<B>>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [_, h, w, _] = x.dims();
        let s = self.shift as i64;
        let mut y = norm(&self.norm1, x.clone());
        if s > 0 {
            y = roll_back(y, s);
        }
        let windows = window_partition(y, self.window); // [B·nW, N, C]
        let (windows, attn) = self.attn.forward(windows, self.attn_mask.clone());
        let mut y = window_reverse(windows, self.window, h, w); // [B, H, W, C]
        if s > 0 {
            y = roll_forward(y, s);
        }
        let stream = 2 * self.index;
        let x = x + drop_path(y, self.drop_rate, drop, stream);
        let y = self.mlp.forward(norm(&self.norm2, x.clone()));
        (x + drop_path(y, self.drop_rate, drop, stream + 1), attn)
    }
}

/// Halves the resolution and doubles the channels: 2×2 neighbours concatenated, LN, linear.
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    pub norm: LayerNorm<B>,
    pub reduction: Linear<B>,
}

impl<B: Backend> PatchMerging<B> {
    pub fn new(dim: usize, dev: &B::Device) -> Self {
        Self {
            norm: layer_norm(4 * dim, dev),
            reduction: linear(4 * dim, 2 * dim, false, dev),
        }
    }
}

impl<B: FusedOps> PatchMerging<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, w, c] = x.dims();
        // timm: reshape(B,H/2,2,W/2,2,C).permute(0,1,3,4,2,5): channel blocks in the order
        // (0,0), (1,0), (0,1), (1,1) of (row, col) offsets, as the official concat.
        let x = permute(x.reshape([b, h / 2, 2, w / 2, 2, c]), [0, 1, 3, 4, 2, 5]).reshape([
            b,
            h / 2,
            w / 2,
            4 * c,
        ]);
        apply(&self.reduction, norm(&self.norm, x))
    }
}

/// A stage (timm `layers.i`): optional patch merging at its start, then its blocks.
#[derive(Module, Debug)]
pub struct SwinStage<B: Backend> {
    pub downsample: Option<PatchMerging<B>>,
    pub blocks: Vec<SwinBlock<B>>,
}

impl<B: FusedOps> SwinStage<B> {
    /// x [B, H, W, C] → (x [B, H', W', C'], each block's attention).
    pub fn forward(&self, x: Tensor<B, 4>, drop: Option<&DropMasks<B>>) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut x = match &self.downsample {
            Some(merge) => merge.forward(x),
            None => x,
        };
        let mut maps = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, attn) = block.forward(x, drop);
            x = y;
            maps.push(attn);
        }
        (x, maps)
    }
}

/// x [B, H, W, C] → windows [B·nW, w², C], row-major over the window grid, batch-major.
pub fn window_partition<B: FusedOps>(x: Tensor<B, 4>, w: usize) -> Tensor<B, 3> {
    let [b, h, wd, c] = x.dims();
    permute(x.reshape([b, h / w, w, wd / w, w, c]), [0, 1, 3, 2, 4, 5]).reshape([
        b * (h / w) * (wd / w),
        w * w,
        c,
    ])
}

/// The exact inverse of [`window_partition`]: windows [B·nW, w², C] → [B, H, W, C].
pub fn window_reverse<B: FusedOps>(windows: Tensor<B, 3>, w: usize, h: usize, wd: usize) -> Tensor<B, 4> {
    let [bw, _, c] = windows.dims();
    let b = bw / ((h / w) * (wd / w));
    permute(windows.reshape([b, h / w, wd / w, w, w, c]), [0, 1, 3, 2, 4, 5]).reshape([b, h, wd, c])
}

/// torch.roll(x, (−s, −s), dims=(1, 2)): the cyclic shift before shifted-window attention.
/// Burn 0.21's roll has the opposite sign to torch (burn.md).
pub fn roll_back<B: Backend>(x: Tensor<B, 4>, s: i64) -> Tensor<B, 4> {
    x.roll(&[s, s], &[1, 2])
}

/// torch.roll(x, (s, s), dims=(1, 2)): undoes [`roll_back`].
pub fn roll_forward<B: Backend>(x: Tensor<B, 4>, s: i64) -> Tensor<B, 4> {
    x.roll(&[-s, -s], &[1, 2])
}

/// idx[p, q] = (y_p − y_q + w − 1)(2w − 1) + (x_p − x_q + w − 1), flattened row-major.
pub fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let side = 2 * w - 1;
    let mut index = Vec::with_capacity(n * n);
    for p in 0..n {
        for q in 0..n {
            let dy = p / w + w - 1 - q / w;
            let dx = p % w + w - 1 - q % w;
            index.push((dy * side + dx) as i64);
        }
    }
    index
}

fn mask_windows(geom: StageGeometry) -> usize {
    (geom.resolution / geom.window).pow(2)
}

/// The SW-MSA mask [nW, N, N] (flattened): −100 between tokens from different regions of the
/// rolled image (regions from the slices (0,−w), (−w,−s), (−s,∞) on each axis), else 0.
pub fn shift_attention_mask(resolution: usize, w: usize, shift: usize) -> Vec<f32> {
    let band = |i: usize| {
        if i < resolution - w {
            0
        } else if i < resolution - shift {
            1
        } else {
            2
        }
    };
    let per_side = resolution / w;
    let n = w * w;
    let mut mask = Vec::with_capacity(per_side * per_side * n * n);
    for wy in 0..per_side {
        for wx in 0..per_side {
            let region = |p: usize| band(wy * w + p / w) * 3 + band(wx * w + p % w);
            for p in 0..n {
                for q in 0..n {
                    mask.push(if region(p) == region(q) { 0.0 } else { MASKED });
                }
            }
        }
    }
    mask
}
