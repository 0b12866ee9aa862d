//! EACA (swinfc-model.md §1.3): external-dependency attention (EA) in parallel with
//! cross-spatial attention (CA); the output is X + X̃ + X ⊙ (A_H + A_W).

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig1d, PaddingConfig2d};
use burn::tensor::{Tensor, backend::Backend};

use crate::fused::{FusedOps, mean_dim, permute, softmax};

/// EA (eq. 1–3): a k=3 conv to M memory units over the raster token sequence, EANet's double
/// normalisation, a k=1 conv back to D, and a residual.
#[derive(Module, Debug)]
pub struct ExternalAttention<B: Backend> {
    /// W1: [M, D, 3], no bias.
    pub mk: Conv1d<B>,
    /// W2: [D, M, 1], no bias.
    pub mv: Conv1d<B>,
}

impl<B: Backend> ExternalAttention<B> {
    pub fn new(dim: usize, memory: usize, dev: &B::Device) -> Self {
        // EANet's init: N(0, sqrt(2 / (k · out_channels))).
        let normal = |k: usize, out: usize| Initializer::Normal {
            mean: 0.0,
            std: (2.0 / (k * out) as f64).sqrt(),
        };
        Self {
            mk: Conv1dConfig::new(dim, memory, 3)
                .with_padding(PaddingConfig1d::Explicit(1, 1))
                .with_bias(false)
                .with_initializer(normal(3, memory))
                .init(dev),
            mv: Conv1dConfig::new(memory, dim, 1)
                .with_bias(false)
                .with_initializer(normal(1, dim))
                .init(dev),
        }
    }
}

impl<B: FusedOps> ExternalAttention<B> {
    /// x [B, N, D] → X̃ [B, N, D] (the residual is added by [`Eaca`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let a = self.mk.forward(permute(x, [0, 2, 1])); // [B, M, N]
        let a = softmax(a, 2);
        let a = a.clone() / (a.sum_dim(1) + 1e-9); // L1 over the memory units
        permute(self.mv.forward(a), [0, 2, 1]) // [B, N, D]
    }
}

/// CA (eq. 4–6): per-channel softmax attention along H and along W from pooled profiles.
#[derive(Module, Debug)]
pub struct CrossSpatialAttention<B: Backend> {
    /// [D, D, 3, 1] with bias, over the H profile.
    pub conv_h: Conv2d<B>,
    /// [D, D, 1, 3] with bias, over the W profile.
    pub conv_w: Conv2d<B>,
}

impl<B: Backend> CrossSpatialAttention<B> {
    pub fn new(dim: usize, dev: &B::Device) -> Self {
        Self {
            conv_h: Conv2dConfig::new([dim, dim], [3, 1])
                .with_padding(PaddingConfig2d::Explicit(1, 0, 1, 0))
                .init(dev),
            conv_w: Conv2dConfig::new([dim, dim], [1, 3])
                .with_padding(PaddingConfig2d::Explicit(0, 1, 0, 1))
                .init(dev),
        }
    }
}

impl<B: FusedOps> CrossSpatialAttention<B> {
    /// x [B, N, D] on an H×W grid → X ⊙ (A_H + A_W) [B, N, D].
    pub fn forward(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 3> {
        // A softmax over one cell is the constant 1, with no gradient: on a 1×1 grid (the last
        // stage of a small input) the attention is X ⊙ 2, said outright and on X as it comes,
        // because Burn 0.21's CubeBackend (CUDA, wgpu) computed this branch wrongly there: the
        // forward as X ⊙ (0·conv + 2), and the backward of X ⊙ 2 through the permute and reshapes
        // below dropped its gradient (tests/wgpu.rs). The convs then have no gradient; the flat
        // SGD takes a missing gradient as zeros, so weight decay still shrinks them as PyTorch's
        // zero gradients do.
        if h == 1 && w == 1 {
            return x * 2.0;
        }
        let [b, n, d] = x.dims();
        let x2 = permute(x, [0, 2, 1]).reshape([b, d, h, w]);
        let a_h = softmax(self.conv_h.forward(mean_dim(x2.clone(), 3)), 2); // [B, D, H, 1]
        let a_w = softmax(self.conv_w.forward(mean_dim(x2.clone(), 2)), 3); // [B, D, 1, W]
        permute((x2 * (a_h + a_w)).reshape([b, d, n]), [0, 2, 1])
    }
}

#[derive(Module, Debug)]
pub struct Eaca<B: Backend> {
    pub ea: ExternalAttention<B>,
    pub ca: CrossSpatialAttention<B>,
}

impl<B: Backend> Eaca<B> {
    pub fn new(dim: usize, memory: usize, dev: &B::Device) -> Self {
        Self {
            ea: ExternalAttention::new(dim, memory, dev),
            ca: CrossSpatialAttention::new(dim, dev),
        }
    }
}

impl<B: FusedOps> Eaca<B> {
    /// x [B, H·W, D] → X_ea + X_ca = X + X̃ + X ⊙ (A_H + A_W), [B, H·W, D].
    pub fn forward(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 3> {
        x.clone() + self.ea.forward(x.clone()) + self.ca.forward(x, h, w)
    }
}
