//! The GPU code path (CubeBackend with fusion, through Burn's wgpu backend on Mesa's software
//! Vulkan driver) against Flex, op by op, forward and backward: the model's fused ops, and the
//! shapes where `swinfc bench probe --backend wgpu` found the two apart (a one-token stage).
//! Built only with `--features wgpu` (CI installs the driver); tiny shapes, since lavapipe is slow.
//!
//! Found this way (2026-12-05): Burn 0.21's fusion computed `y·(g − (g·y).sum_dim(1))` wrongly
//! when axis 1 had length 1 and `y`, `g` were reshapes (`[2,4,1]` → `[8,1,1]`, `y` a softmax over
//! that axis), reading another row's element (`-0.178 = g[5] − g[1]` where 0 was due), while
//! reading each piece back gave the right values; whether it happened depended on what the
//! process had run before. Our softmax backward no longer reduces over a length-1 axis
//! (`fused/decomposed.rs`, `softmax_backward`); the first check below failed without that.
//! Also found: `Linear::forward` of a `[2,1,1,256]` input that is a lazily fused element-wise
//! result (`fc2.forward(x * 2.0)`) came out O(1) wrong, while the same input read from data, or
//! flattened to `[2,256]`, gave the right values. The model applies every Linear as one 2-D
//! matmul (`swin.rs`, `apply`); `a_one_token_stage_agrees_with_flex` failed without that.
#![cfg(feature = "wgpu")]

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu, flex::FlexDevice};
use burn::nn::LayerNormConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use swinfc_model::eaca::ExternalAttention;
use swinfc_model::fused::{gelu, layer_norm, permute, softmax, window_softmax};
use swinfc_model::{FusedOps, SwinFc, TrainBackend};

type Gpu = Autodiff<Wgpu>;
type Cpu = Autodiff<Flex>;

/// The minimal model (its last stage one token), on wgpu and on Flex with the same weights.
fn small_models() -> (SwinFc<Gpu>, SwinFc<Cpu>) {
    use swinfc_model::ModelConfig;
    use swinfc_model::weights::{load_state_dict, state_dict};
    let cfg = ModelConfig::minimal();
    let cpu = cfg.init::<Cpu>(3, &FlexDevice);
    let (gpu, _) = load_state_dict(cfg.init::<Gpu>(3, &WgpuDevice::default()), &state_dict(&cpu)).unwrap();
    (gpu, cpu)
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 8) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn tensor<B: Backend, const D: usize>(shape: [usize; D], seed: u32, dev: &B::Device) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), dev)
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// `f`'s output and the gradient of Σ f(x)·w with respect to x.
fn run<B: TrainBackend, const D: usize, const E: usize>(
    shape: [usize; D],
    out_shape: [usize; E],
    f: &dyn Fn(Tensor<B, D>) -> Tensor<B, E>,
    dev: &B::Device,
) -> (Vec<f32>, Vec<f32>) {
    let x = tensor::<B, D>(shape, 1, dev).require_grad();
    let y = f(x.clone());
    let w = tensor::<B, E>(out_shape, 2, dev);
    let grads = (y.clone() * w).sum().backward();
    let gx = x.grad(&grads).expect("x takes part");
    (host(y.inner()), host(gx))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check<const D: usize, const E: usize>(
    name: &str,
    shape: [usize; D],
    out_shape: [usize; E],
    f_gpu: &dyn Fn(Tensor<Gpu, D>) -> Tensor<Gpu, E>,
    f_cpu: &dyn Fn(Tensor<Cpu, D>) -> Tensor<Cpu, E>,
) -> Option<String> {
    let (y_gpu, g_gpu) = run::<Gpu, D, E>(shape, out_shape, f_gpu, &WgpuDevice::default());
    let (y_cpu, g_cpu) = run::<Cpu, D, E>(shape, out_shape, f_cpu, &FlexDevice);
    let (dy, dg) = (max_diff(&y_gpu, &y_cpu), max_diff(&g_gpu, &g_cpu));
    eprintln!("{name:<48} forward {dy:.3e}  gradient {dg:.3e}");
    (dy > 1e-5 || dg > 1e-5).then(|| format!("{name}: forward {dy:e}, gradient {dg:e}"))
}

#[test]
fn unit_length_axes_agree_with_flex() {
    let mut failures = Vec::new();
    failures.extend(check(
        "fused softmax over a length-1 axis",
        [2, 4, 1],
        [2, 4, 1],
        &|x| softmax(x, 2),
        &|x| softmax(x, 2),
    ));
    failures.extend(check(
        "sum_dim over a length-1 axis",
        [8, 1, 1],
        [8, 1, 1],
        &|x| x.sum_dim(1),
        &|x| x.sum_dim(1),
    ));
    failures.extend(check(
        "reshape [2,4,1] to [8,1,1], then sum_dim(1)",
        [2, 4, 1],
        [8, 1, 1],
        &|x| x.reshape([8, 1, 1]).sum_dim(1),
        &|x| x.reshape([8, 1, 1]).sum_dim(1),
    ));
    failures.extend(check(
        "x - (x * x).sum_dim(1) over a length-1 axis",
        [8, 1, 1],
        [8, 1, 1],
        &|x| x.clone() - (x.clone() * x).sum_dim(1),
        &|x| x.clone() - (x.clone() * x).sum_dim(1),
    ));
    failures.extend(check(
        "burn softmax over a length-1 axis",
        [2, 4, 1],
        [2, 4, 1],
        &|x| burn::tensor::activation::softmax(x, 2),
        &|x| burn::tensor::activation::softmax(x, 2),
    ));
    failures.extend(check(
        "fused softmax over a length-4 axis",
        [2, 1, 4],
        [2, 1, 4],
        &|x| softmax(x, 2),
        &|x| softmax(x, 2),
    ));
    failures.extend(check(
        "x / sum_dim(x, 1) with a length-1 last axis",
        [2, 4, 1],
        [2, 4, 1],
        &|x| x.clone() / (x.sum_dim(1) + 1e-9),
        &|x| x.clone() / (x.sum_dim(1) + 1e-9),
    ));
    failures.extend(check(
        "swap_dims(1, 2) of [2, 1, 8]",
        [2, 1, 8],
        [2, 8, 1],
        &|x| x.swap_dims(1, 2) * 1.5,
        &|x| x.swap_dims(1, 2) * 1.5,
    ));
    failures.extend(check("fused GELU", [64], [64], &|x| gelu(x * 3.0), &|x| {
        gelu(x * 3.0)
    }));
    let norm_gpu = LayerNormConfig::new(8).init::<Gpu>(&WgpuDevice::default());
    let norm_cpu = LayerNormConfig::new(8).init::<Cpu>(&FlexDevice);
    failures.extend(check(
        "fused LayerNorm over 8 channels",
        [2, 3, 8],
        [2, 3, 8],
        &|x| layer_norm(&norm_gpu, x),
        &|x| layer_norm(&norm_cpu, x),
    ));
    let mask_values: Vec<f32> = (0..2 * 4 * 4)
        .map(|i| if i % 5 == 0 { -100.0 } else { 0.0 })
        .collect();
    let bias_values = values(2 * 4 * 4, 5);
    failures.extend(check(
        "window softmax with bias and shift mask",
        [4, 2, 4, 4],
        [4, 2, 4, 4],
        &|x| {
            let dev = WgpuDevice::default();
            let b = Tensor::from_data(TensorData::new(bias_values.clone(), [2, 4, 4]), &dev);
            let m = Tensor::from_data(TensorData::new(mask_values.clone(), [2, 4, 4]), &dev);
            window_softmax(x, b, Some(m))
        },
        &|x| {
            let b = Tensor::from_data(TensorData::new(bias_values.clone(), [2, 4, 4]), &FlexDevice);
            let m = Tensor::from_data(TensorData::new(mask_values.clone(), [2, 4, 4]), &FlexDevice);
            window_softmax(x, b, Some(m))
        },
    ));
    failures.extend(check(
        "window softmax over 1-token windows",
        [4, 2, 1, 1],
        [4, 2, 1, 1],
        &|x| {
            let b = Tensor::from_data(
                TensorData::new(vec![0.5f32, -0.5], [2, 1, 1]),
                &WgpuDevice::default(),
            );
            window_softmax(x, b, None)
        },
        &|x| {
            let b = Tensor::from_data(TensorData::new(vec![0.5f32, -0.5], [2, 1, 1]), &FlexDevice);
            window_softmax(x, b, None)
        },
    ));
    let merge =
        |x: Tensor<Gpu, 4>| permute(x.reshape([2, 1, 2, 1, 2, 4]), [0, 1, 3, 4, 2, 5]).reshape([2, 1, 1, 16]);
    let merge_cpu =
        |x: Tensor<Cpu, 4>| permute(x.reshape([2, 1, 2, 1, 2, 4]), [0, 1, 3, 4, 2, 5]).reshape([2, 1, 1, 16]);
    failures.extend(check(
        "patch merging's permute into a 1x1 grid",
        [2, 2, 2, 4],
        [2, 1, 1, 16],
        &merge,
        &merge_cpu,
    ));
    let merge2 =
        |x: Tensor<Gpu, 4>| permute(x.reshape([2, 2, 2, 2, 2, 4]), [0, 1, 3, 4, 2, 5]).reshape([2, 2, 2, 16]);
    let merge2_cpu =
        |x: Tensor<Cpu, 4>| permute(x.reshape([2, 2, 2, 2, 2, 4]), [0, 1, 3, 4, 2, 5]).reshape([2, 2, 2, 16]);
    failures.extend(check(
        "patch merging's permute into a 2x2 grid",
        [2, 4, 4, 4],
        [2, 2, 2, 16],
        &merge2,
        &merge2_cpu,
    ));
    failures.extend(check(
        "permute [2,3,4,5] to [0,2,1,3]",
        [2, 3, 4, 5],
        [2, 4, 3, 5],
        &|x| permute(x, [0, 2, 1, 3]),
        &|x| permute(x, [0, 2, 1, 3]),
    ));
    let ea_gpu = ExternalAttention::<Gpu>::new(8, 4, &WgpuDevice::default());
    let ea_cpu = ExternalAttention::<Cpu>::new(8, 4, &FlexDevice);
    let weights =
        |ea: &ExternalAttention<Cpu>| (host(ea.mk.weight.val().inner()), host(ea.mv.weight.val().inner()));
    let (mk, mv) = weights(&ea_cpu);
    let load = |ea: ExternalAttention<Gpu>| {
        let dev = WgpuDevice::default();
        let mut ea = ea;
        ea.mk.weight = ea
            .mk
            .weight
            .map(|w| Tensor::from_data(TensorData::new(mk.clone(), w.dims()), &dev));
        ea.mv.weight = ea
            .mv
            .weight
            .map(|w| Tensor::from_data(TensorData::new(mv.clone(), w.dims()), &dev));
        ea
    };
    let ea_gpu = load(ea_gpu);
    failures.extend(check(
        "EACA's external attention on 1 token",
        [2, 1, 8],
        [2, 1, 8],
        &|x| ea_gpu.forward(x),
        &|x| ea_cpu.forward(x),
    ));
    failures.extend(check(
        "EACA's external attention on 4 tokens",
        [2, 4, 8],
        [2, 4, 8],
        &|x| ea_gpu.forward(x),
        &|x| ea_cpu.forward(x),
    ));
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The last stage of the probe's small model: patch merging from 2×2 tokens to one, then blocks
/// whose window is that one token.
#[test]
fn a_one_token_stage_agrees_with_flex() {
    let (gpu, cpu) = small_models();
    let (gs, cs) = (&gpu.layers[3], &cpu.layers[3]);
    let (gm, cm) = (gs.downsample.as_ref().unwrap(), cs.downsample.as_ref().unwrap());
    let mut failures = Vec::new();
    failures.extend(check(
        "stage 4: patch merging",
        [2, 2, 2, 32],
        [2, 1, 1, 64],
        &|x| gm.forward(x),
        &|x| cm.forward(x),
    ));
    failures.extend(check(
        "stage 4: window attention on one token",
        [2, 1, 64],
        [2, 1, 64],
        &|x| gs.blocks[0].attn.forward(x, None).0,
        &|x| cs.blocks[0].attn.forward(x, None).0,
    ));
    failures.extend(check(
        "stage 4: norm1 on [2,1,1,64]",
        [2, 1, 1, 64],
        [2, 1, 1, 64],
        &|x| layer_norm(&gs.blocks[0].norm1, x),
        &|x| layer_norm(&cs.blocks[0].norm1, x),
    ));
    failures.extend(check(
        "stage 4: mlp on [2,1,1,64]",
        [2, 1, 1, 64],
        [2, 1, 1, 64],
        &|x| gs.blocks[0].mlp.forward(x),
        &|x| cs.blocks[0].mlp.forward(x),
    ));
    failures.extend(check(
        "window partition then reverse, window 1",
        [2, 1, 1, 64],
        [2, 1, 1, 64],
        &|x| swinfc_model::swin::window_reverse(swinfc_model::swin::window_partition(x, 1) * 2.0, 1, 1, 1),
        &|x| swinfc_model::swin::window_reverse(swinfc_model::swin::window_partition(x, 1) * 2.0, 1, 1, 1),
    ));
    failures.extend(check(
        "stage 4: first block on one token",
        [2, 1, 1, 64],
        [2, 1, 1, 64],
        &|x| gs.blocks[0].forward(x, None).0,
        &|x| cs.blocks[0].forward(x, None).0,
    ));
    failures.extend(check(
        "stage 4: whole stage",
        [2, 2, 2, 32],
        [2, 1, 1, 64],
        &|x| gs.forward(x, None).0,
        &|x| cs.forward(x, None).0,
    ));
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The branch modules of stage 2 (a 4×4 grid): EACA's two attentions.
#[test]
fn stage_two_branches_agree_with_flex() {
    let (gpu, cpu) = small_models();
    let (ge, ce) = (&gpu.eaca.s2, &cpu.eaca.s2);
    let mut failures = Vec::new();
    failures.extend(check(
        "stage 2: EA",
        [2, 16, 16],
        [2, 16, 16],
        &|x| ge.ea.forward(x),
        &|x| ce.ea.forward(x),
    ));
    failures.extend(check(
        "stage 2: CA",
        [2, 16, 16],
        [2, 16, 16],
        &|x| ge.ca.forward(x, 4, 4),
        &|x| ce.ca.forward(x, 4, 4),
    ));
    failures.extend(check(
        "CA's x * (a_h + a_w) broadcast",
        [2, 16, 4, 4],
        [2, 16, 4, 4],
        &|x| {
            let a_h = softmax(x.clone().mean_dim(3), 2);
            let a_w = softmax(x.clone().mean_dim(2), 3);
            x * (a_h + a_w)
        },
        &|x| {
            let a_h = softmax(x.clone().mean_dim(3), 2);
            let a_w = softmax(x.clone().mean_dim(2), 3);
            x * (a_h + a_w)
        },
    ));
    failures.extend(check(
        "stage 2: EACA",
        [2, 16, 16],
        [2, 16, 16],
        &|x| ge.forward(x, 4, 4),
        &|x| ce.forward(x, 4, 4),
    ));
    assert!(failures.is_empty(), "{failures:#?}");
}

/// FFM across three stages whose last has one token (matmuls with a unit dimension), on lazily
/// fused inputs.
#[test]
fn ffm_with_a_one_token_stage_agrees_with_flex() {
    use swinfc_model::ffm::ffm;
    let mut failures = Vec::new();
    for (name, n4) in [
        ("ffm, stage 4 of 1 token", 1usize),
        ("ffm, stage 4 of 4 tokens", 4),
    ] {
        failures.extend(check(
            name,
            [2, 16 + 4 + n4, 16],
            [2, 16 + 4 + n4, 16],
            &|x| {
                let x = x * 1.0;
                let parts = [
                    x.clone().narrow(1, 0, 16),
                    x.clone().narrow(1, 16, 4),
                    x.narrow(1, 20, n4),
                ];
                Tensor::cat(ffm(parts, 1.0).to_vec(), 1)
            },
            &|x| {
                let x = x * 1.0;
                let parts = [
                    x.clone().narrow(1, 0, 16),
                    x.clone().narrow(1, 16, 4),
                    x.narrow(1, 20, n4),
                ];
                Tensor::cat(ffm(parts, 1.0).to_vec(), 1)
            },
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Each branch's pieces in forward order, from the backbone's taps of a fixed batch.
fn branch_pieces<B: FusedOps>(m: &SwinFc<B>, dev: &B::Device) -> Vec<(String, Vec<f32>)> {
    let n = 2 * 3 * 32 * 32;
    let v: Vec<f32> = (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761) >> 8) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let images = Tensor::<B, 4>::from_data(TensorData::new(v, [2, 3, 32, 32]), dev);
    let mut out = Vec::new();
    let mut x = m.patch_embed.forward(images);
    let mut taps = Vec::new();
    for (i, layer) in m.layers.iter().enumerate() {
        x = layer.forward(x, None).0;
        if i > 0 {
            let [b, h, w, c] = x.dims();
            taps.push((h, x.clone().reshape([b, h * w, c])));
        }
    }
    let projs = [&m.branch_proj.s2, &m.branch_proj.s3, &m.branch_proj.s4];
    let eacas = [&m.eaca.s2, &m.eaca.s3, &m.eaca.s4];
    let mut branches = Vec::new();
    for (k, (side, tap)) in taps.into_iter().enumerate() {
        let [b, nn, c] = tap.dims();
        let normed = layer_norm(&projs[k].norm, tap);
        out.push((format!("branch {k} norm"), host(normed.clone())));
        let d = projs[k].fc.weight.dims()[1];
        let t = projs[k]
            .fc
            .forward(normed.reshape([b * nn, c]))
            .reshape([b, nn, d]);
        out.push((format!("branch {k} proj"), host(t.clone())));
        let e = eacas[k].forward(t, side, side);
        out.push((format!("branch {k} eaca"), host(e.clone())));
        branches.push(e);
    }
    let fused = swinfc_model::ffm::ffm(
        [branches[0].clone(), branches[1].clone(), branches[2].clone()],
        1.0,
    );
    for (k, f) in fused.iter().enumerate() {
        out.push((format!("branch {k} ffm"), host(f.clone())));
    }
    out
}

/// The three branches (LayerNorm, projection, EACA, FFM) of a small model whose last stage is
/// one token: on a 1×1 grid CA's branch came out wrong on CubeBackend (now said outright in
/// `eaca.rs`); every piece must equal Flex's.
#[test]
fn every_branch_agrees_with_flex() {
    let (gpu, cpu) = small_models();
    let mut failures = Vec::new();
    for ((name, got), (_, want)) in branch_pieces(&gpu, &WgpuDevice::default())
        .iter()
        .zip(&branch_pieces(&cpu, &FlexDevice))
    {
        let diff = max_diff(got, want);
        eprintln!("{name:<48} forward {diff:.3e}");
        if diff > 1e-5 {
            failures.push(format!("{name}: {diff:e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Stage 3's CA (a 2×2 grid), where `swinfc bench probe --backend wgpu` found the first
/// parameter gradient apart (`eaca.s3.ca.conv_w.bias`): the gradients of its convs' weights and
/// biases, and of the pieces on the way to them.
#[test]
fn cross_spatial_attention_parameter_gradients_agree_with_flex() {
    use burn::nn::conv::Conv2d;
    /// A function of a conv and its input.
    type WithConv<'a, B> = &'a dyn Fn(&Conv2d<B>, Tensor<B, 4>) -> Tensor<B, 4>;
    let (gpu, cpu) = small_models();
    let (gc, cc) = (&gpu.eaca.s3.ca, &cpu.eaca.s3.ca);
    /// The gradients of Σ f(conv, x)·w with respect to the conv's weight and bias and to x.
    fn grads<B: TrainBackend>(
        conv: &Conv2d<B>,
        shape: [usize; 4],
        f: WithConv<B>,
        dev: &B::Device,
    ) -> [Vec<f32>; 3] {
        let x = tensor::<B, 4>(shape, 1, dev).require_grad();
        let y = f(conv, x.clone());
        let w = tensor::<B, 4>(y.dims(), 2, dev);
        let g = (y * w).sum().backward();
        let bias = conv.bias.as_ref().expect("CA's convs have a bias");
        [
            host(conv.weight.val().grad(&g).expect("weight takes part")),
            host(bias.val().grad(&g).expect("bias takes part")),
            host(x.grad(&g).expect("x takes part")),
        ]
    }
    let mut failures = Vec::new();
    let mut compare = |name: &str, shape: [usize; 4], gf: WithConv<Gpu>, cf: WithConv<Cpu>, conv: usize| {
        let (g_conv, c_conv) = match conv {
            0 => (&gc.conv_w, &cc.conv_w),
            _ => (&gc.conv_h, &cc.conv_h),
        };
        let g = grads(g_conv, shape, gf, &WgpuDevice::default());
        let c = grads(c_conv, shape, cf, &FlexDevice);
        let d = [0, 1, 2].map(|i| max_diff(&g[i], &c[i]));
        eprintln!(
            "{name:<48} weight {:.3e}  bias {:.3e}  x {:.3e}",
            d[0], d[1], d[2]
        );
        if d.iter().any(|d| *d > 1e-5) {
            failures.push(format!(
                "{name}: weight {:e}, bias {:e}, x {:e}",
                d[0], d[1], d[2]
            ));
        }
    };
    compare(
        "conv_w on [2,16,1,2]",
        [2, 16, 1, 2],
        &|c, x| c.forward(x),
        &|c, x| c.forward(x),
        0,
    );
    compare(
        "conv_h on [2,16,2,1]",
        [2, 16, 2, 1],
        &|c, x| c.forward(x),
        &|c, x| c.forward(x),
        1,
    );
    compare(
        "softmax(conv_w(x), 3) on [2,16,1,2]",
        [2, 16, 1, 2],
        &|c, x| softmax(c.forward(x), 3),
        &|c, x| softmax(c.forward(x), 3),
        0,
    );
    compare(
        "softmax(conv_w(mean_dim(x, 2)), 3), x [2,16,2,2]",
        [2, 16, 2, 2],
        &|c, x| softmax(c.forward(x.mean_dim(2)), 3),
        &|c, x| softmax(c.forward(x.mean_dim(2)), 3),
        0,
    );
    compare(
        "x * softmax(conv_w(mean_dim(x, 2)), 3), x [2,16,2,2]",
        [2, 16, 2, 2],
        &|c, x| x.clone() * softmax(c.forward(x.mean_dim(2)), 3),
        &|c, x| x.clone() * softmax(c.forward(x.mean_dim(2)), 3),
        0,
    );
    compare(
        "stage 3: CA through conv_w",
        [2, 4, 16, 1],
        &|_, x| gc.forward(x.reshape([2, 4, 16]), 2, 2).reshape([2, 4, 16, 1]),
        &|_, x| cc.forward(x.reshape([2, 4, 16]), 2, 2).reshape([2, 4, 16, 1]),
        0,
    );
    compare(
        "stage 3: CA through conv_h",
        [2, 4, 16, 1],
        &|_, x| gc.forward(x.reshape([2, 4, 16]), 2, 2).reshape([2, 4, 16, 1]),
        &|_, x| cc.forward(x.reshape([2, 4, 16]), 2, 2).reshape([2, 4, 16, 1]),
        1,
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The whole small model's parameter gradients (SwinFC loss of one batch), each against Flex's.
#[test]
fn whole_model_gradients_agree_with_flex() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Int;
    use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
    use swinfc_model::{LossConfig, swinfc_loss};
    /// Each parameter's gradient in visit order, with its PyTorch name.
    fn grads<B: TrainBackend>(model: &SwinFc<B>, dev: &B::Device) -> Vec<(String, Vec<f32>)> {
        struct Collect<'a, B: TrainBackend> {
            grads: &'a <B as burn::tensor::backend::AutodiffBackend>::Gradients,
            out: Vec<Vec<f32>>,
        }
        impl<B: TrainBackend> ModuleVisitor<B> for Collect<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let n = param.shape().num_elements();
                let g = param.val().grad(self.grads).map(|g| host(g.reshape([n])));
                self.out.push(g.unwrap_or_else(|| vec![0.0; n]));
            }
        }
        let images = tensor::<B, 4>([2, 3, 32, 32], 7, dev);
        let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 3], [2]), dev);
        let parts = swinfc_loss(&model.forward(images, None), labels, &LossConfig::new());
        let g = parts.total.backward();
        let mut collect = Collect::<B> {
            grads: &g,
            out: Vec::new(),
        };
        model.visit(&mut collect);
        let names = model
            .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
            .into_iter()
            .map(|s| s.full_path());
        names.zip(collect.out).collect()
    }
    let (gpu, cpu) = small_models();
    let got = grads(&gpu, &WgpuDevice::default());
    let want = grads(&cpu, &FlexDevice);
    let mut failures = Vec::new();
    for ((name, g), (_, c)) in got.iter().zip(&want) {
        // CA's conv biases shift a softmax's input along its axis: their gradient is 0 but for
        // rounding, hence the absolute floor.
        let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_diff(g, c);
        if diff > 1e-4 * scale + 1e-6 {
            eprintln!("{name:<48} {diff:.3e} of {scale:.3e}");
            failures.push(name.clone());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} parameters: {failures:?}",
        failures.len(),
        got.len()
    );
}
