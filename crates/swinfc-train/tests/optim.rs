//! The flat-buffer SGD equals Burn's SGD (momentum 0.9, dampening 0 = torch's), per group, and
//! the schedule's end points.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use swinfc_model::{LossConfig, ModelConfig, SwinFc, swinfc_loss};
use swinfc_train::optim::{Sgd, StepSettings, flatten_grads, learning_rate};

type B = Autodiff<Flex>;

fn backward(
    model: &SwinFc<B>,
    images: &Tensor<B, 4>,
    labels: &Tensor<B, 1, Int>,
) -> <B as AutodiffBackend>::Gradients {
    let out = model.forward(images.clone(), None);
    swinfc_loss(&out, labels.clone(), &LossConfig::new())
        .total
        .backward()
}

#[test]
fn flat_sgd_matches_burn_sgd_with_two_groups() {
    let dev = Default::default();
    // 64²: no stage is a 1×1 grid, where CA's convs have no gradient (Burn's SGD then leaves
    // them alone while ours applies weight decay, as PyTorch does with its zero gradients).
    let cfg = ModelConfig {
        img_size: 64,
        embed_dim: 8,
        branch_dim: 16,
        ea_memory: 4,
        num_classes: 3,
        ..ModelConfig::preset("tiny").unwrap()
    };
    let images = Tensor::<B, 4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &dev);
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &dev);
    let (lr_bb, lr_new, wd) = (0.01, 0.05, 1e-3f32 as f64);

    let mut ours = cfg.init::<B>(1, &dev);
    let mut sgd = Sgd::<B>::new(&ours);
    let mut theirs = ours.clone();
    let sgd_config = || {
        SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_dampening(0.0)))
            .with_weight_decay(Some(WeightDecayConfig::new(wd as f32)))
    };
    let (mut opt_bb, mut opt_new) = (
        sgd_config().init::<B, SwinFc<B>>(),
        sgd_config().init::<B, SwinFc<B>>(),
    );

    for i in 0..3 {
        let g = GradientsParams::from_grads(backward(&ours, &images, &labels), &ours);
        let settings = StepSettings {
            lr_backbone: lr_bb,
            lr_new,
            momentum: 0.9,
            weight_decay: wd,
        };
        let flat = flatten_grads(&ours, &g, sgd.layout());
        // The checked update (a run's first step) is the same update, and agrees with the host.
        ours = if i == 1 {
            sgd.step_checked(ours, flat, settings)
                .expect("Flex's update equals the host's")
        } else {
            sgd.step(ours, flat, settings)
        };

        // The new-module group is exactly these four submodules (spec §2.3).
        let mut g = backward(&theirs, &images, &labels);
        let new_group = [
            GradientsParams::from_module(&mut g, &theirs.head),
            GradientsParams::from_module(&mut g, &theirs.branch_proj),
            GradientsParams::from_module(&mut g, &theirs.eaca),
            GradientsParams::from_module(&mut g, &theirs.branch_head),
        ];
        let rest = GradientsParams::from_grads(g, &theirs);
        theirs = opt_bb.step(lr_bb, theirs, rest);
        for part in new_group {
            theirs = opt_new.step(lr_new, theirs, part);
        }
    }
    let (a, b) = (
        swinfc_model::weights::state_dict(&ours.valid()),
        swinfc_model::weights::state_dict(&theirs.valid()),
    );
    for (name, t) in &a {
        let diff = t
            .data
            .iter()
            .zip(&b[name].data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{name}: {diff}");
    }
    assert_eq!(learning_rate(0, 1.0, 4, 10), 0.25);
    assert!((learning_rate(10, 1.0, 4, 10)).abs() < 1e-12);
}
