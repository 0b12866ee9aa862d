//! End-to-end learning check: a tiny SwinFC trained with plain SGD + momentum on the full loss
//! (all four heads and the contrastive term, drop-path on) memorises 8 images within 30 steps.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use swinfc_model::{LossConfig, ModelConfig, SwinFc, swinfc_loss};

type B = Autodiff<Flex>;

#[test]
fn tiny_model_memorises_eight_images_in_thirty_steps() {
    let dev = Default::default();
    let cfg = ModelConfig {
        img_size: 64,
        num_classes: 8,
        ..ModelConfig::preset("tiny").unwrap()
    };
    let mut model = cfg.init::<B>(0, &dev);
    B::seed(&dev, 1);
    let images = Tensor::<B, 4>::random([8, 3, 64, 64], Distribution::Normal(0.0, 1.0), &dev);
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new((0..8i64).collect(), [8]), &dev);
    let momentum = MomentumConfig::new().with_momentum(0.9).with_dampening(0.0);
    let mut optimizer = SgdConfig::new()
        .with_momentum(Some(momentum))
        .init::<B, SwinFc<B>>();

    let mut losses = Vec::new();
    for step in 0..30u64 {
        let out = model.forward(images.clone(), Some(step));
        let loss = swinfc_loss(&out, labels.clone(), &LossConfig::new());
        losses.push(loss.total.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        model = optimizer.step(0.02, model, grads);
    }

    let eval = model.valid().forward(images.inner(), None);
    let predicted = eval.logits_combined().argmax(1).reshape([8]);
    let correct = predicted.equal(labels.inner()).int().sum().into_scalar();
    assert_eq!(correct, 8, "training accuracy {correct}/8; losses {losses:?}");
}
