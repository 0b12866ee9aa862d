//! FFM (swinfc-model.md §1.4): FBSD's feature diversification between every pair of stages.
//! Each stage receives, at each of its positions, the other stages' content weighted by a softmax
//! of *negative* cosine similarity, i.e. the content least like its own.

use burn::tensor::{Tensor, backend::Backend};

use crate::fused::{FusedOps, matmul, softmax};

/// [X_s2, X_s3, X_s4] (each [B, N_k, D]) → [X̂_s2, X̂_s3, X̂_s4], every term from the un-fused inputs.
pub fn ffm<B: FusedOps>(x: [Tensor<B, 3>; 3], scale: f64) -> [Tensor<B, 3>; 3] {
    let mut fused = x.clone();
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let (to_j, to_i) = exchange(x[i].clone(), x[j].clone());
        fused[i] = fused[i].clone() + to_i.mul_scalar(scale);
        fused[j] = fused[j].clone() + to_j.mul_scalar(scale);
    }
    fused
}

/// x_i [B, N_i, D], x_j [B, N_j, D] → (X^{s_i}_{s_j} [B, N_j, D], X^{s_j}_{s_i} [B, N_i, D]).
fn exchange<B: FusedOps>(x_i: Tensor<B, 3>, x_j: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let s = matmul(
        l2_normalize(x_i.clone()),
        l2_normalize(x_j.clone()).swap_dims(1, 2),
    )
    .neg(); // [B, N_i, N_j] = −cos
    let i_at_j = matmul(softmax(s.clone(), 1).swap_dims(1, 2), x_i); // [B, N_j, D]
    let j_at_i = matmul(softmax(s, 2), x_j); // [B, N_i, D]
    (i_at_j, j_at_i)
}

/// x / max(‖x‖₂, 1e-12) over the last dimension (torch.nn.functional.normalize).
pub fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / norm
}
