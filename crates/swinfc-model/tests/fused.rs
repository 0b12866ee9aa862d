//! The fused ops (LayerNorm, softmax, the window attention's masked softmax, GELU, permute, mean,
//! matmul) against PyTorch's values (tests/fixtures/fused, from make_fused.py: f64 references)
//! and against Burn's own decomposed ops, forward and gradient; and bit-identical on 1 and 4
//! threads.

use burn::backend::{Autodiff, Flex, flex::FlexDevice};
use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation;
use burn::tensor::{Distribution, Tensor, TensorData};
use safetensors::SafeTensors;
use swinfc_model::fused::{self, LAYER_NORM_EPS};

type B = Autodiff<Flex>;

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/fused/ops.safetensors"
        );
        Self(std::fs::read(path).expect("tests/fixtures/fused/ops.safetensors"))
    }

    fn tensor<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let st = SafeTensors::deserialize(&self.0).expect("a safetensors file");
        let view = st.tensor(name).unwrap_or_else(|_| panic!("no tensor {name}"));
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::from_data(TensorData::new(values, view.shape().to_vec()), &FlexDevice)
    }
}

/// max |a − b| ≤ tol · max |b|: relative to the reference's scale.
fn assert_close<const D: usize>(what: &str, a: Tensor<B, D>, b: Tensor<B, D>, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let a = a.into_data().to_vec::<f32>().unwrap();
    let b = b.into_data().to_vec::<f32>().unwrap();
    let scale = b
        .iter()
        .fold(0.0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(a.iter().all(|x| x.is_finite()), "{what}: non-finite values");
    assert!(
        diff <= tol * scale,
        "{what}: max diff {diff:e} > {tol:e} × {scale:e}"
    );
}

/// y = op(x…) and the gradients of sum(y · g) for each input, which are made leaves here.
fn run<const D: usize, const N: usize, const DO: usize>(
    inputs: [Tensor<B, D>; N],
    g: Tensor<B, DO>,
    op: impl Fn([Tensor<B, D>; N]) -> Tensor<B, DO>,
) -> (Tensor<B, DO>, [Tensor<B, D>; N]) {
    let leaves = inputs.map(|x| x.detach().require_grad());
    let y = op(leaves.clone());
    let grads = (y.clone() * g).sum().backward();
    let dx = leaves.map(|x| Tensor::from_inner(x.grad(&grads).expect("a gradient")));
    (y, dx)
}

fn norm_with(gamma: Tensor<B, 1>, beta: Tensor<B, 1>) -> LayerNorm<B> {
    let mut norm = LayerNormConfig::new(gamma.dims()[0])
        .with_epsilon(LAYER_NORM_EPS)
        .init(&FlexDevice);
    norm.gamma = Param::from_tensor(gamma);
    norm.beta = Some(Param::from_tensor(beta));
    norm
}

/// PyTorch's LayerNorm: gamma ≠ 1, beta ≠ 0, an odd width; x, γ and β all get gradients.
#[test]
fn layer_norm_matches_pytorch_and_burn() {
    let f = Fixture::load();
    let x: Tensor<B, 3> = f.tensor("layer_norm.in0");
    let (gamma, beta) = (f.tensor::<1>("layer_norm.in1"), f.tensor::<1>("layer_norm.in2"));
    let g: Tensor<B, 3> = f.tensor("layer_norm.g");
    let x_flat = x.clone().reshape([-1]);
    let rebuild = |[x, gamma, beta]: [Tensor<B, 1>; 3]| (x.reshape([3, 5, 37]), norm_with(gamma, beta));
    let (y, [dx, dgamma, dbeta]) = run(
        [x_flat.clone(), gamma.clone(), beta.clone()],
        g.clone(),
        |inputs| {
            let (x, norm) = rebuild(inputs);
            fused::layer_norm(&norm, x)
        },
    );
    assert_close("y vs torch", y, f.tensor("layer_norm.out"), 1e-5);
    assert_close(
        "dx vs torch",
        dx.clone().reshape([3, 5, 37]),
        f.tensor("layer_norm.grad0"),
        1e-5,
    );
    assert_close(
        "dgamma vs torch",
        dgamma.clone(),
        f.tensor("layer_norm.grad1"),
        1e-5,
    );
    assert_close(
        "dbeta vs torch",
        dbeta.clone(),
        f.tensor("layer_norm.grad2"),
        1e-5,
    );

    let (y_burn, [dx_burn, dgamma_burn, dbeta_burn]) = run([x_flat, gamma, beta], g, |inputs| {
        let (x, norm) = rebuild(inputs);
        norm.forward(x)
    });
    assert_close(
        "y vs burn",
        fused::layer_norm(
            &norm_with(f.tensor("layer_norm.in1"), f.tensor("layer_norm.in2")),
            x,
        ),
        y_burn,
        1e-5,
    );
    assert_close("dx vs burn", dx, dx_burn, 1e-5);
    assert_close("dgamma vs burn", dgamma, dgamma_burn, 1e-5);
    assert_close("dbeta vs burn", dbeta, dbeta_burn, 1e-5);
}

#[test]
fn softmax_over_a_middle_and_the_last_dimension_matches_pytorch_and_burn() {
    let f = Fixture::load();
    let (x, g): (Tensor<B, 4>, Tensor<B, 4>) = (f.tensor("softmax_mid.in0"), f.tensor("softmax_mid.g"));
    let (y, [dx]) = run([x.clone()], g.clone(), |[x]| fused::softmax(x, 1));
    assert_close("mid y vs torch", y.clone(), f.tensor("softmax_mid.out"), 1e-6);
    assert_close("mid dx vs torch", dx.clone(), f.tensor("softmax_mid.grad0"), 1e-5);
    let (y_burn, [dx_burn]) = run([x], g, |[x]| activation::softmax(x, 1));
    assert_close("mid y vs burn", y, y_burn, 1e-6);
    assert_close("mid dx vs burn", dx, dx_burn, 1e-5);

    let (x, g): (Tensor<B, 3>, Tensor<B, 3>) = (f.tensor("softmax_last.in0"), f.tensor("softmax_last.g"));
    let (y, [dx]) = run([x.clone()], g.clone(), |[x]| fused::softmax(x, 2));
    assert_close("last y vs torch", y, f.tensor("softmax_last.out"), 1e-6);
    assert_close(
        "last dx vs torch",
        dx.clone(),
        f.tensor("softmax_last.grad0"),
        1e-5,
    );
    let (_, [dx_burn]) = run([x], g, |[x]| activation::softmax(x, 2));
    assert_close("last dx vs burn", dx, dx_burn, 1e-5);
}

/// softmax(scores + bias + mask) with −1e9 masked entries, 3 windows repeating over 2 images.
#[test]
fn window_softmax_with_bias_and_mask_matches_pytorch_and_burn() {
    let f = Fixture::load();
    let scores: Tensor<B, 4> = f.tensor("window_softmax.in0");
    let bias: Tensor<B, 3> = f.tensor("window_softmax.in1");
    let mask: Tensor<B, 3> = f.tensor("window_softmax.mask");
    let g: Tensor<B, 4> = f.tensor("window_softmax.g");
    let [bw, h, n, _] = scores.dims();
    let nw = mask.dims()[0];
    let as_4d = |b: Tensor<B, 4>| b.reshape([h, n, n]);
    let inputs = [scores, bias.unsqueeze::<4>()];
    let (y, [ds, dbias]) = run(inputs.clone(), g.clone(), |[s, b]| {
        fused::window_softmax(s, as_4d(b), Some(mask.clone()))
    });
    assert_close("y vs torch", y, f.tensor("window_softmax.out"), 1e-6);
    assert_close(
        "dscores vs torch",
        ds.clone(),
        f.tensor("window_softmax.grad0"),
        1e-5,
    );
    assert_close(
        "dbias vs torch",
        as_4d(dbias.clone()),
        f.tensor("window_softmax.grad1"),
        1e-5,
    );

    let (_, [ds_burn, dbias_burn]) = run(inputs, g, |[s, b]| {
        let s = s + b;
        let s = (s.reshape([bw / nw, nw, h, n, n]) + mask.clone().unsqueeze_dim::<4>(1).unsqueeze::<5>())
            .reshape([bw, h, n, n]);
        activation::softmax(s, 3)
    });
    assert_close("dscores vs burn", ds, ds_burn, 1e-5);
    assert_close("dbias vs burn", dbias, dbias_burn, 1e-5);
}

#[test]
fn gelu_matches_pytorch_and_burn() {
    let f = Fixture::load();
    let (x, g): (Tensor<B, 1>, Tensor<B, 1>) = (f.tensor("gelu.in0"), f.tensor("gelu.g"));
    let (y, [dx]) = run([x.clone()], g.clone(), |[x]| fused::gelu(x));
    assert_close("y vs torch", y, f.tensor("gelu.out"), 1e-6);
    assert_close("dx vs torch", dx.clone(), f.tensor("gelu.grad0"), 1e-5);
    let (_, [dx_burn]) = run([x], g, |[x]| activation::gelu(x));
    assert_close("dx vs burn", dx, dx_burn, 1e-5);
}

/// The mean over a dimension, first, middle and last, on a contiguous input and a transposed view:
/// Burn's values, and PyTorch's gradient g / n, which is exact arithmetic here (each element is
/// one division), so it is written out and compared bit for bit.
#[test]
fn mean_dim_equals_burns_forward_and_pytorchs_gradient() {
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<B, 3>::random([5, 7, 9], normal, &FlexDevice);
    for x in [x.clone(), x.swap_dims(0, 2)] {
        for dim in 0..3 {
            let mut out_dims = x.dims();
            let n = out_dims[dim];
            out_dims[dim] = 1;
            let g = Tensor::<B, 3>::random(out_dims, normal, &FlexDevice);
            let (y, [dx]) = run([x.clone()], g.clone(), |[x]| fused::mean_dim(x, dim));
            let (y_burn, [dx_burn]) = run([x.clone()], g.clone(), |[x]| x.mean_dim(dim));
            assert_eq!(bits(y), bits(y_burn), "dim {dim}: values");
            assert_close("dx vs burn", dx.clone(), dx_burn, 1e-6);
            let torch = g.div_scalar(n as f64).expand(x.dims()) + Tensor::zeros(x.dims(), &FlexDevice);
            assert_eq!(bits(dx), bits(torch), "dim {dim}: gradient");
        }
    }
}

/// Our matmul gives Burn's matmul's values and gradients bit for bit: one matrix (small, and
/// large enough for gemm to use the pool), batches of transposed views (small enough to run a
/// matrix per task), leading dims that do not nest (copied first), and K = 0.
#[test]
fn matmul_equals_burns_forward_and_backward() {
    let normal = Distribution::Normal(0.0, 1.0);
    let random = |shape: [usize; 4]| Tensor::<B, 4>::random(shape, normal, &FlexDevice);
    let cases: Vec<(&str, Tensor<B, 4>, Tensor<B, 4>)> = vec![
        ("small", random([1, 1, 7, 5]), random([1, 1, 5, 3])),
        (
            "gemm on the pool",
            random([1, 1, 200, 210]),
            random([1, 1, 210, 190]),
        ),
        (
            "batch of transposes",
            random([8, 8, 49, 32]),
            random([8, 8, 49, 32]).swap_dims(2, 3),
        ),
        (
            "leading dims swapped",
            random([3, 4, 6, 5]).swap_dims(0, 1),
            random([4, 3, 5, 2]),
        ),
        ("K = 0", random([2, 3, 4, 0]), random([2, 3, 0, 5])),
    ];
    for (what, lhs, rhs) in cases {
        let [b0, b1, m, _] = lhs.dims();
        let g = random([b0, b1, m, rhs.dims()[3]]);
        let (y, [dl, dr]) = run([lhs.clone(), rhs.clone()], g.clone(), |[l, r]| {
            fused::matmul(l, r)
        });
        let (y_burn, [dl_burn, dr_burn]) = run([lhs, rhs], g, |[l, r]| l.matmul(r));
        assert_eq!(bits(y), bits(y_burn), "{what}: values");
        assert_eq!(bits(dl), bits(dl_burn), "{what}: lhs gradient");
        assert_eq!(bits(dr), bits(dr_burn), "{what}: rhs gradient");
    }
}

/// The materialised permute gives Burn's permute's values and gradient exactly, on contiguous
/// inputs and on strided views (a transpose, a narrowed slice), for runs of every kind: a
/// contiguous tail (window partition), a strided last dim (patch embedding's NCHW → NHWC).
#[test]
fn permute_equals_burns_permute_forward_and_backward() {
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<B, 4>::random([3, 6, 10, 5], normal, &FlexDevice);
    let strided = [
        x.clone(),
        x.clone().swap_dims(1, 2).reshape([3, 6, 10, 5]), // contiguous again after the copy
        x.clone()
            .swap_dims(2, 3)
            .narrow(3, 1, 6)
            .narrow(2, 0, 5)
            .swap_dims(2, 3),
    ];
    let axes = [
        [0, 2, 1, 3],
        [0, 2, 3, 1],
        [3, 2, 1, 0],
        [0, 1, 2, 3],
        [1, 0, 3, 2],
    ];
    for (i, x) in strided.into_iter().enumerate() {
        for axes in axes {
            let dims = x.dims();
            let out_dims = axes.map(|a| dims[a]);
            let g = Tensor::<B, 4>::random(out_dims, normal, &FlexDevice);
            let (y, [dx]) = run([x.clone()], g.clone(), |[x]| fused::permute(x, axes));
            let axes_signed = axes.map(|a| a as isize);
            let (y_burn, [dx_burn]) = run([x.clone()], g, |[x]| x.permute(axes_signed));
            assert_eq!(bits(y), bits(y_burn), "input {i}, axes {axes:?}: values");
            assert_eq!(bits(dx), bits(dx_burn), "input {i}, axes {axes:?}: gradient");
        }
    }
}

fn bits<const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Every fused op's forward and backward on many rows (several parallel blocks) gives the same
/// bits on 1 thread and on 4.
#[test]
fn fused_ops_are_bit_identical_on_1_and_4_threads() {
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<B, 3>::random([7, 173, 40], normal, &FlexDevice);
    let g = Tensor::<B, 3>::random([7, 173, 40], normal, &FlexDevice);
    let scores = Tensor::<B, 4>::random([12, 3, 16, 16], normal, &FlexDevice);
    let gs = Tensor::<B, 4>::random([12, 3, 16, 16], normal, &FlexDevice);
    let bias = Tensor::<B, 3>::random([3, 16, 16], normal, &FlexDevice);
    let mask = Tensor::<B, 3>::random([4, 16, 16], normal, &FlexDevice).mul_scalar(-100.0);
    let big = Tensor::<B, 2>::random([200, 200], normal, &FlexDevice);
    let norm = norm_with(
        Tensor::random([40], normal, &FlexDevice),
        Tensor::random([40], normal, &FlexDevice),
    );
    let all = || -> Vec<Vec<u32>> {
        let (y1, [d1]) = run([x.clone()], g.clone(), |[x]| fused::layer_norm(&norm, x));
        let (y2, [d2]) = run([x.clone()], g.clone(), |[x]| fused::softmax(x, 1));
        let (y3, [d3]) = run([x.clone()], g.clone(), |[x]| fused::gelu(x));
        let (y4, [d4, d5]) = run(
            [scores.clone(), bias.clone().unsqueeze::<4>()],
            gs.clone(),
            |[s, b]| fused::window_softmax(s, b.reshape([3, 16, 16]), Some(mask.clone())),
        );
        let (y6, [d6]) = run([x.clone()], g.clone().swap_dims(0, 2), |[x]| {
            fused::permute(x, [2, 1, 0])
        });
        let (y7, [d7]) = run([x.clone()], g.clone().narrow(1, 0, 1), |[x]| {
            fused::mean_dim(x, 1)
        });
        let mut out: Vec<_> = [y1, d1, y2, d2, y3, d3, y6, d6].into_iter().map(bits).collect();
        let (y8, [d8, d9]) = run([big.clone(), big.clone()], big.clone(), |[l, r]| {
            fused::matmul(l, r)
        });
        out.extend([y7, d7].into_iter().map(bits));
        out.extend([y8, d8, d9].into_iter().map(bits));
        out.extend([y4, d4, d5].into_iter().map(bits));
        out
    };
    let on = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool")
            .install(all)
    };
    assert_eq!(on(1), on(4));
}
