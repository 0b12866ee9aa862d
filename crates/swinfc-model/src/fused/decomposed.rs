//! The fused ops' kernels written with Burn tensor ops: the default of every backend without
//! its own kernels (CUDA, wgpu; with fusion, the element-wise chains become few kernels), and the
//! reference the Flex kernels are tested against.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// x [rows, C] → [y, x̂, rstd [rows, 1]].
pub fn layer_norm_forward<B: Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> [Tensor<B, 2>; 3] {
    let centered = x.clone() - x.mean_dim(1);
    let var = centered.clone().square().mean_dim(1);
    let rstd = var.add_scalar(eps).sqrt().recip();
    let xhat = centered * rstd.clone();
    let y = xhat.clone() * gamma.unsqueeze();
    let y = match beta {
        Some(beta) => y + beta.unsqueeze(),
        None => y,
    };
    [y, xhat, rstd]
}

pub fn layer_norm_backward<B: Backend>(
    g: Tensor<B, 2>,
    xhat: Tensor<B, 2>,
    rstd: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let c = g.dims()[1];
    let dgamma = (g.clone() * xhat.clone()).sum_dim(0).reshape([c]);
    let dbeta = g.clone().sum_dim(0).reshape([c]);
    let a = g * gamma.unsqueeze();
    let m1 = a.clone().mean_dim(1);
    let m2 = (a.clone() * xhat.clone()).mean_dim(1);
    let dx = (a - m1 - xhat * m2) * rstd;
    (dx, dgamma, dbeta)
}

/// Over dim 1 of [outer, len, inner].
pub fn softmax_backward<B: Backend>(y: Tensor<B, 3>, g: Tensor<B, 3>) -> Tensor<B, 3> {
    // Over one element softmax is the constant 1, whose gradient is 0: said outright, because
    // Burn 0.21's fusion (CubeBackend: CUDA, wgpu) computes `g − (g·y).sum_dim(1)` wrongly when
    // that axis has length 1, reading another row's element (tests/wgpu.rs), which made EACA's
    // gradient on a one-token stage non-zero on the GPU path.
    if y.dims()[1] == 1 {
        return g.zeros_like();
    }
    let dot = (g.clone() * y.clone()).sum_dim(1);
    y * (g - dot)
}

pub fn window_softmax_forward<B: Backend>(
    scores: Tensor<B, 4>,
    bias: Tensor<B, 3>,
    mask: Option<Tensor<B, 3>>,
) -> Tensor<B, 4> {
    let [bw, h, n, _] = scores.dims();
    let mut s = scores + bias.unsqueeze::<4>();
    if let Some(mask) = mask {
        let nw = mask.dims()[0];
        s = (s.reshape([bw / nw, nw, h, n, n]) + mask.unsqueeze_dim::<4>(1).unsqueeze::<5>())
            .reshape([bw, h, n, n]);
    }
    burn::tensor::activation::softmax(s, 3)
}

/// Σ over the windows of ds [B·nW, heads, N, N].
pub fn window_bias_backward<B: Backend>(ds: Tensor<B, 4>) -> Tensor<B, 3> {
    let [_, h, n, _] = ds.dims();
    ds.sum_dim(0).reshape([h, n, n])
}

/// Φ(x) = ½·(1 + erf(x/√2)), the standard normal CDF.
fn normal_cdf<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5)
}

pub fn gelu_exact<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    x.clone() * normal_cdf(x)
}

/// g·(Φ(x) + x·φ(x)).
pub fn gelu_exact_backward<B: Backend>(x: Tensor<B, 1>, g: Tensor<B, 1>) -> Tensor<B, 1> {
    // 1/√(2π)
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    let pdf = x.clone().square().mul_scalar(-0.5).exp().mul_scalar(INV_SQRT_2PI);
    g * (normal_cdf(x.clone()) + x * pdf)
}

pub fn write_flat<B: Backend>(
    len: usize,
    parts: Vec<(usize, Tensor<B, 1>)>,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 1> {
    let zeros = Tensor::zeros([len], (device, dtype));
    parts.into_iter().fold(zeros, |flat, (offset, part)| {
        let range = offset..offset + part.dims()[0];
        flat.slice_assign([range], part)
    })
}

pub fn mean_backward<B: Backend>(g: Tensor<B, 3>, len: usize) -> Tensor<B, 3> {
    let [outer, _, inner] = g.dims();
    Tensor::ones([outer, len, inner], (&g.device(), g.dtype())) * g.div_scalar(len as f64)
}
