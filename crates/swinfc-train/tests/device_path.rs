//! A GPU worker's device path (the all-reduce buffer averaged, its norm and the clip on the
//! device, `GradSync::Device`; the flat SGD update, `Sgd`) against the host path CPU workers take
//! and against the same arithmetic written out here, on the same values. The same generic code
//! runs on Flex, and with `--features wgpu` on Burn's wgpu backend: CubeBackend with fusion, the
//! CUDA build's code path, through Mesa's software Vulkan driver (CI installs it).
//!
//! Tolerances (issue 16): the norm within 1e-4 relative of the host's f64 norm (an f32 sum on the
//! device); the averaged, clipped gradient and the updated weights and momentum element by
//! element within 1e-6, given the device's norm.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use swinfc_comm::LocalCollective;
use swinfc_model::{ModelConfig, ParamGroup, SwinFc, TrainBackend};
use swinfc_train::optim::{FlatLayout, Sgd, StepSettings, flat_tensor};
use swinfc_train::sync::{GradSync, NORM_TOLERANCE};

const MICRO_BATCHES: usize = 3;
const SETTINGS: StepSettings = StepSettings {
    lr_backbone: 0.01,
    lr_new: 0.05,
    momentum: 0.9,
    weight_decay: 1e-4,
};

fn device_path_equals_host_path<B: TrainBackend>(device: &B::Device) {
    let mut model = ModelConfig::minimal().init::<B>(7, device);
    let mut sgd = Sgd::new(&model);
    let layout = sgd.layout().clone();
    assert!(layout.slots.iter().any(|s| s.group == ParamGroup::New));
    let mut weights = host_weights(&model, &layout);
    let mut velocity = vec![0.0f32; layout.len];

    // Unclipped, then clipped to well under the norm, so that both branches run.
    for (step, max_norm) in [0.0, 1.0].into_iter().enumerate() {
        let summed = gradient(&layout, step as u32);
        let extra = vec![6.0, 1.5, f32::from(step as u8)];
        let average = |sync: &mut GradSync<B::InnerBackend>, check: Option<&FlatLayout>| {
            sync.average(
                flat_tensor(summed.clone(), device),
                flat_tensor(extra.clone(), device),
                MICRO_BATCHES,
                max_norm,
                &mut LocalCollective,
                check,
            )
            .expect("the device path agrees with the host path")
        };
        let host = average(&mut GradSync::Host, None);
        let synced = average(&mut GradSync::Device(Box::new(LocalCollective)), Some(&layout));

        let scale = MICRO_BATCHES as f64;
        let norm = summed
            .iter()
            .map(|g| (f64::from(*g) / scale).powi(2))
            .sum::<f64>()
            .sqrt();
        // The host averages in f32 before its f64 sum.
        assert!(
            (host.norm - norm).abs() <= 1e-6 * norm,
            "host norm {} against {norm}",
            host.norm
        );
        assert!(
            (synced.norm - norm).abs() <= NORM_TOLERANCE * norm,
            "device norm {} against {norm}",
            synced.norm
        );
        assert_eq!(synced.extra, host.extra);
        let factor = if max_norm > 0.0 {
            max_norm / (synced.norm + 1e-6)
        } else {
            1.0
        };
        assert!(max_norm == 0.0 || factor < 0.5, "the clip must bite: {factor}");
        let want: Vec<f64> = summed.iter().map(|g| f64::from(*g) / scale * factor).collect();
        let rms = norm / (want.len() as f64).sqrt();
        let grad = host_values(synced.grad.clone());
        for (i, (d, w)) in grad.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*d) - w).abs() <= 1e-6 * (w.abs() + rms),
                "clipped gradient element {i}: {d} against {w}"
            );
        }

        model = sgd
            .step_checked(model, synced.grad, SETTINGS)
            .expect("the device update agrees with the host's");
        for slot in &layout.slots {
            let lr = match slot.group {
                ParamGroup::Backbone => SETTINGS.lr_backbone,
                ParamGroup::New => SETTINGS.lr_new,
            } as f32;
            for i in slot.offset..slot.offset + slot.numel {
                velocity[i] = SETTINGS.momentum as f32 * velocity[i]
                    + (grad[i] + SETTINGS.weight_decay as f32 * weights[i]);
                weights[i] -= lr * velocity[i];
            }
        }
        let updated = host_weights(&model, &layout);
        for slot in &layout.slots {
            for i in slot.offset..slot.offset + slot.numel {
                let scale = weights[i].abs() + 1e-3;
                assert!(
                    (updated[i] - weights[i]).abs() <= 1e-6 * scale,
                    "step {step}, {} element {}: {} against {}",
                    slot.name,
                    i - slot.offset,
                    updated[i],
                    weights[i]
                );
            }
        }
    }
}

/// A summed gradient whose parameters differ in scale by five orders of magnitude, zero in the
/// layout's gaps (as the step's own buffer is).
fn gradient(layout: &FlatLayout, seed: u32) -> Vec<f32> {
    let mut grad = vec![0.0; layout.len];
    for (k, slot) in layout.slots.iter().enumerate() {
        let scale = 10f32.powi(k as i32 % 6 - 3);
        for (j, g) in grad[slot.offset..slot.offset + slot.numel].iter_mut().enumerate() {
            let h = (j as u32 ^ (k as u32) << 20 ^ seed << 28).wrapping_mul(2_654_435_761) >> 8;
            *g = ((h % 2001) as f32 / 1000.0 - 1.0) * scale;
        }
    }
    grad
}

/// The model's parameters in `layout`, in Burn's layout (as the flat buffers hold them).
fn host_weights<B: TrainBackend>(model: &SwinFc<B>, layout: &FlatLayout) -> Vec<f32> {
    struct Collect(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let n = param.shape().num_elements();
            self.0.push(host_values(param.val().reshape([n])));
        }
    }
    let mut collect = Collect(Vec::new());
    model.valid().visit(&mut collect);
    let mut flat = vec![0.0; layout.len];
    for (slot, values) in layout.slots.iter().zip(collect.0) {
        flat[slot.offset..slot.offset + slot.numel].copy_from_slice(&values);
    }
    flat
}

fn host_values<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 values")
}

#[test]
fn the_device_path_equals_the_host_path_on_flex() {
    device_path_equals_host_path::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn the_device_path_equals_the_host_path_on_wgpu() {
    device_path_equals_host_path::<burn::backend::Autodiff<burn::backend::Wgpu>>(&Default::default());
}
