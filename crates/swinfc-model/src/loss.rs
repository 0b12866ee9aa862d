//! The training objective (swinfc-model.md §1.7–1.8, eq. 15–16):
//! L = CE(z_swin) + β₂ CE(z_2) + β₃ CE(z_3) + β₄ CE(z_4) + L_con(Ẑ).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::config::LossConfig;
use crate::ffm::l2_normalize;
use crate::model::SwinFcOutput;

/// Every term of eq. 16, each a [1] tensor; the CE terms are unweighted.
#[derive(Debug, Clone)]
pub struct LossParts<B: Backend> {
    pub total: Tensor<B, 1>,
    pub backbone_ce: Tensor<B, 1>,
    /// CE of the stage-2, -3 and -4 branch heads.
    pub stage_ce: [Tensor<B, 1>; 3],
    pub contrastive: Tensor<B, 1>,
}

pub fn swinfc_loss<B: Backend>(
    out: &SwinFcOutput<B>,
    labels: Tensor<B, 1, Int>,
    cfg: &LossConfig,
) -> LossParts<B> {
    let backbone_ce = cross_entropy(out.logits_swin.clone(), labels.clone());
    let stage_ce = out
        .logits_stages
        .clone()
        .map(|logits| cross_entropy(logits, labels.clone()));
    let contrastive = contrastive_loss(out.part_feature.clone(), labels, cfg.contrastive_margin);
    let mut total = backbone_ce.clone() + contrastive.clone();
    for (ce, beta) in stage_ce.iter().zip(cfg.betas) {
        total = total + ce.clone().mul_scalar(beta);
    }
    LossParts {
        total,
        backbone_ce,
        stage_ce,
        contrastive,
    }
}

/// Mean cross-entropy of logits [B, K] against class indices [B].
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let b = labels.dims()[0];
    log_softmax(logits, 1)
        .gather(1, labels.reshape([b, 1]))
        .mean()
        .neg()
}

/// TransFG's `con_loss`: pull same-class features together, push others below cosine α;
/// summed over all B² pairs (diagonal included) and divided by B².
pub fn contrastive_loss<B: Backend>(
    features: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    margin: f64,
) -> Tensor<B, 1> {
    let b = labels.dims()[0];
    let f = l2_normalize(features);
    let cos = f.clone().matmul(f.transpose()); // [B, B]
    let same = labels
        .clone()
        .reshape([b, 1])
        .repeat_dim(1, b)
        .equal(labels.reshape([1, b]).repeat_dim(0, b))
        .float();
    let pull = (cos.clone().neg() + 1.0) * same.clone();
    let push = (cos - margin).clamp_min(0.0) * (same.neg() + 1.0);
    (pull + push).sum().div_scalar((b * b) as f64)
}
