//! FSM (swinfc-model.md §1.6): pick, for every head of every last-stage block, the token that
//! receives the most attention (the argmax of the column mean, eq. 13–14), and average the
//! final-normalised features at those positions into Ẑ, the input of the contrastive loss.

use burn::tensor::{Int, Tensor, backend::Backend};

use crate::config::StageGeometry;
use crate::fused::FusedOps;
use crate::swin::{roll_forward, window_reverse};

/// One block's post-softmax attention [B·nW, heads, N, N] and the shift it was computed under.
pub struct AttentionMap<B: Backend> {
    pub attn: Tensor<B, 4>,
    pub shift: usize,
}

/// Selected positions [B, blocks·heads] (block 0's heads, then block 1's), as raster indices
/// into the stage's H×W grid. With several windows, each window's column means are put back at
/// their image positions (window reverse, then the roll undone) before the argmax.
pub fn select_tokens<B: FusedOps>(maps: &[AttentionMap<B>], geom: StageGeometry) -> Tensor<B, 2, Int> {
    let (r, w) = (geom.resolution, geom.window);
    let picks = maps
        .iter()
        .map(|map| {
            let [bw, heads, n, _] = map.attn.dims();
            // argmax has no gradient: keep the selection out of the autodiff graph.
            let importance = map.attn.clone().detach().mean_dim(2).reshape([bw, heads, n]);
            let mut grid = window_reverse(importance.swap_dims(1, 2), w, r, r); // [B, H, W, heads]
            if map.shift > 0 {
                grid = roll_forward(grid, map.shift as i64);
            }
            let b = grid.dims()[0];
            grid.reshape([b, r * r, heads]).argmax(1).reshape([b, heads])
        })
        .collect();
    Tensor::cat(picks, 1)
}

/// tokens [B, H·W, C], indices [B, K] → Ẑ = mean of the K gathered tokens, [B, C].
/// Duplicate indices count twice, as in TransFG.
pub fn pool_selected<B: Backend>(tokens: Tensor<B, 3>, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, _, c] = tokens.dims();
    let k = indices.dims()[1];
    let index = indices.reshape([b, k, 1]).repeat_dim(2, c);
    tokens.gather(1, index).mean_dim(1).reshape([b, c])
}
