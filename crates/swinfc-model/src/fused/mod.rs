//! LayerNorm, softmax (over any dimension, and the window attention's softmax with its bias and
//! shift mask added) and GELU as single operations with their own backward, so that under
//! autodiff each is one forward pass and one closed-form backward pass instead of Burn's
//! decompositions of 5–9 element-wise passes (performance.md §4).
//!
//! Two traits split the work:
//! - [`FusedKernels`]: what a plain backend computes — forward values plus what the backward
//!   needs, and the closed-form backward. Its default methods are written with Burn tensor ops,
//!   so every backend (CUDA, wgpu) has them; Flex overrides them with one-pass row kernels.
//! - [`FusedOps`]: what the model calls. A plain backend runs the forward kernel; `Autodiff<B>`
//!   records one graph node per op whose backward calls `B`'s backward kernel.
//!
//! The model calls the functions of this module ([`layer_norm`], [`softmax`], [`window_softmax`],
//! [`gelu`]) rather than `burn::nn::LayerNorm::forward` or `burn::tensor::activation`.

mod autodiff;
mod decomposed;
mod flex;
mod math;

use burn::nn::LayerNorm;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};

/// Epsilon of every LayerNorm of the model (timm's default; `swin::layer_norm` builds them with it).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// The forward and backward kernels of the fused ops on a plain (non-autodiff) backend.
pub trait FusedKernels: Backend {
    /// LayerNorm over the last dimension of x [rows, C] → (y, x̂ = (x − mean)·rstd, rstd [rows, 1]).
    fn layer_norm_forward(
        x: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
        beta: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> [Tensor<Self, 2>; 3] {
        decomposed::layer_norm_forward(x, gamma, beta, eps)
    }

    /// From the output gradient g [rows, C]: (dx [rows, C], dγ [C], dβ [C]), with
    /// dx = rstd·(g·γ − mean(g·γ) − x̂·mean(g·γ·x̂)), dγ = Σ g·x̂, dβ = Σ g.
    fn layer_norm_backward(
        g: Tensor<Self, 2>,
        xhat: Tensor<Self, 2>,
        rstd: Tensor<Self, 2>,
        gamma: Tensor<Self, 1>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>, Tensor<Self, 1>) {
        decomposed::layer_norm_backward(g, xhat, rstd, gamma)
    }

    /// Softmax over dim 1 of x [outer, len, inner].
    fn softmax_forward(x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        burn::tensor::activation::softmax(x, 1)
    }

    /// dx = y·(g − Σ g·y) over dim 1 of [outer, len, inner].
    fn softmax_backward(y: Tensor<Self, 3>, g: Tensor<Self, 3>) -> Tensor<Self, 3> {
        decomposed::softmax_backward(y, g)
    }

    /// softmax(scores + bias + mask) over the last dimension: scores [B·nW, heads, N, N], bias
    /// [heads, N, N] shared by every window, mask [nW, N, N] repeating over the batch.
    fn window_softmax_forward(
        scores: Tensor<Self, 4>,
        bias: Tensor<Self, 3>,
        mask: Option<Tensor<Self, 3>>,
    ) -> Tensor<Self, 4> {
        decomposed::window_softmax_forward(scores, bias, mask)
    }

    /// The bias gradient from the scores' gradient ds [B·nW, heads, N, N]: the sum over windows.
    fn window_bias_backward(ds: Tensor<Self, 4>) -> Tensor<Self, 3> {
        decomposed::window_bias_backward(ds)
    }

    /// GELU with the exact erf, as timm's `nn.GELU()`: 0.5·x·(1 + erf(x/√2)).
    fn gelu_exact(x: Tensor<Self, 1>) -> Tensor<Self, 1> {
        decomposed::gelu_exact(x)
    }

    /// x's dims in the order `axes` (Burn's `permute`), for a caller that reshapes next: Flex copies
    /// into the new order at once, in parallel, so the reshape is free (Flex would otherwise copy
    /// inside the reshape, element by element on one thread). Other backends keep Burn's view.
    fn permute_contiguous(x: FloatTensor<Self>, axes: &[usize]) -> FloatTensor<Self> {
        Self::float_permute(x, axes)
    }

    /// lhs [..., M, K] · rhs [..., K, N] with equal leading dims (Burn's `matmul`).
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// The gradient of a mean over dim 1 of [outer, len, inner]: g [outer, 1, inner] → dx
    /// [outer, len, inner] = g / len (PyTorch's `mean_backward`).
    fn mean_backward(g: Tensor<Self, 3>, len: usize) -> Tensor<Self, 3> {
        decomposed::mean_backward(g, len)
    }

    /// A [len] buffer of `dtype` zeros with each `(offset, part [n])` written from `offset` on
    /// (parts not overlapping): the optimizer's flat buffers. One fill and one `slice_assign`
    /// per part, each in place on CubeBackend, where the buffer has one owner.
    fn write_flat(
        len: usize,
        parts: Vec<(usize, Tensor<Self, 1>)>,
        device: &Self::Device,
        dtype: DType,
    ) -> Tensor<Self, 1> {
        decomposed::write_flat(len, parts, device, dtype)
    }

    /// g·(Φ(x) + x·φ(x)): the exact derivative (CubeBackend's own `gelu_backward` is the tanh
    /// approximation's, performance.md §4).
    fn gelu_exact_backward(x: Tensor<Self, 1>, g: Tensor<Self, 1>) -> Tensor<Self, 1> {
        decomposed::gelu_exact_backward(x, g)
    }
}

/// CUDA (fusion over CubeBackend) takes the decomposed kernels: fusion turns their element-wise
/// chains into few kernels. bf16 runs on this same backend, with bf16 as the device's default
/// float type.
#[cfg(feature = "cuda")]
impl FusedKernels for burn::backend::Cuda {}

/// wgpu (fusion over CubeBackend, as CUDA): the same decomposed kernels, so the GPU code path
/// runs under test without a GPU.
#[cfg(feature = "wgpu")]
impl FusedKernels for burn::backend::Wgpu {}

/// The GPU backends without fusion (the probe's fusion-off side): the same decomposed kernels.
#[cfg(feature = "cuda")]
impl FusedKernels for crate::backend::CudaUnfused {}
#[cfg(feature = "wgpu")]
impl FusedKernels for crate::backend::WgpuUnfused {}

/// The fused ops as the model calls them, on primitives of any rank (see the module functions).
pub trait FusedOps: Backend {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self>;
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self>;
    fn fused_window_softmax(
        scores: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self>;
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn fused_permute(x: FloatTensor<Self>, axes: &[usize]) -> FloatTensor<Self>;
    fn fused_mean_dim(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self>;
    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// A backend that trains SwinFC: autodiff over a backend with the fused kernels.
pub trait TrainBackend: AutodiffBackend<InnerBackend: FusedKernels> + FusedOps {}
impl<B: AutodiffBackend<InnerBackend: FusedKernels> + FusedOps> TrainBackend for B {}

/// Without autodiff the ops are their forward kernels.
impl<B: FusedKernels> FusedOps for B {
    fn fused_layer_norm(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: Option<FloatTensor<B>>,
        eps: f64,
    ) -> FloatTensor<B> {
        // Nothing to keep for a backward: the backend's own LayerNorm (fused on Flex).
        B::layer_norm(x, gamma, beta, eps)
    }

    fn fused_softmax(x: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
        let shape = x.shape();
        let y = B::softmax_forward(around::<B>(x, dim));
        B::float_reshape(y.into_primitive().tensor(), shape)
    }

    fn fused_window_softmax(
        scores: FloatTensor<B>,
        bias: FloatTensor<B>,
        mask: Option<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        B::window_softmax_forward(float(scores), float(bias), mask.map(float))
            .into_primitive()
            .tensor()
    }

    fn fused_gelu(x: FloatTensor<B>) -> FloatTensor<B> {
        let shape = x.shape();
        let y = B::gelu_exact(flat::<B>(x));
        B::float_reshape(y.into_primitive().tensor(), shape)
    }

    fn fused_permute(x: FloatTensor<B>, axes: &[usize]) -> FloatTensor<B> {
        B::permute_contiguous(x, axes)
    }

    fn fused_mean_dim(x: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
        B::float_mean_dim(x, dim)
    }

    fn fused_matmul(lhs: FloatTensor<B>, rhs: FloatTensor<B>) -> FloatTensor<B> {
        B::matmul(lhs, rhs)
    }
}

/// LayerNorm of `x` [..., C] with `norm`'s γ and β (and [`LAYER_NORM_EPS`]).
pub fn layer_norm<B: FusedOps, const D: usize>(norm: &LayerNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let beta = norm.beta.as_ref().map(|b| b.val().into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_layer_norm(
        x.into_primitive().tensor(),
        norm.gamma.val().into_primitive().tensor(),
        beta,
        LAYER_NORM_EPS,
    )))
}

/// Softmax of `x` over `dim`.
pub fn softmax<B: FusedOps, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    assert!(dim < D, "softmax over dim {dim} of a rank-{D} tensor");
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_softmax(
        x.into_primitive().tensor(),
        dim,
    )))
}

/// Window attention's softmax(scores + bias + mask) over the last dimension: scores
/// [B·nW, heads, N, N], bias [heads, N, N], mask [nW, N, N] (constant: no gradient).
pub fn window_softmax<B: FusedOps>(
    scores: Tensor<B, 4>,
    bias: Tensor<B, 3>,
    mask: Option<Tensor<B, 3>>,
) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_window_softmax(
        scores.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        mask.map(|m| m.detach().into_primitive().tensor()),
    )))
}

/// GELU with the exact erf.
pub fn gelu<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_gelu(x.into_primitive().tensor())))
}

/// `x.permute(axes)`, materialised in the new order where the backend gains from it (Flex): use it
/// where a reshape follows, as in window partition and the q/k/v split.
pub fn permute<B: FusedOps, const D: usize>(x: Tensor<B, D>, axes: [usize; D]) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_permute(
        x.into_primitive().tensor(),
        &axes,
    )))
}

/// The mean of `x` over `dim`, kept as a dimension of 1 (Burn's `mean_dim`), whose backward is one
/// pass (Burn's fills a tensor of ones, scales it and multiplies it by the broadcast gradient,
/// element by element on one thread on Flex).
pub fn mean_dim<B: FusedOps, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    assert!(dim < D, "mean over dim {dim} of a rank-{D} tensor");
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_mean_dim(
        x.into_primitive().tensor(),
        dim,
    )))
}

/// lhs [..., M, K] · rhs [..., K, N] (Burn's `matmul`), through the backend's own kernel where the
/// leading dims are equal (Flex writes the product without its zero fill and realigning copy).
pub fn matmul<B: FusedOps, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    if lhs.dims()[..D - 2] != rhs.dims()[..D - 2] {
        return lhs.matmul(rhs);
    }
    Tensor::from_primitive(TensorPrimitive::Float(B::fused_matmul(
        lhs.into_primitive().tensor(),
        rhs.into_primitive().tensor(),
    )))
}

/// A primitive as a tensor of the rank it has.
fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    debug_assert_eq!(t.shape().num_dims(), D);
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// [..., C] → [rows, C].
fn as_rows<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 2> {
    let shape = x.shape();
    let c = shape.as_slice().last().copied().unwrap_or(1).max(1);
    float(B::float_reshape(x, Shape::new([shape.num_elements() / c, c])))
}

/// [d0, …, d_dim, …] → [outer, d_dim, inner] around `dim`.
fn around<B: Backend>(x: FloatTensor<B>, dim: usize) -> Tensor<B, 3> {
    let dims = x.shape().to_vec();
    let outer = dims[..dim].iter().product::<usize>();
    let inner = dims[dim + 1..].iter().product::<usize>();
    float(B::float_reshape(x, Shape::new([outer, dims[dim], inner])))
}

fn flat<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    float(B::float_reshape(x, Shape::new([n])))
}
