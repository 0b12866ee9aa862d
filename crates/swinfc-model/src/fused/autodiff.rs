//! The fused ops under autodiff: one graph node each, whose backward is the inner backend's
//! closed-form kernel (written as burn-autodiff's own ops are, with the `Backward` trait).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorMetadata};

use super::{FusedKernels, FusedOps, around, as_rows, flat, float};

impl<B: FusedKernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        let gamma_inner: Tensor<B, 1> = float(gamma.primitive.clone());
        let beta_inner = beta.as_ref().map(|b| float(b.primitive.clone()));
        let [y, xhat, rstd] = B::layer_norm_forward(
            as_rows::<B>(x.primitive.clone()),
            gamma_inner.clone(),
            beta_inner,
            eps,
        );
        let y = B::float_reshape(y.into_primitive().tensor(), shape.clone());
        let state = LayerNormState {
            xhat,
            rstd,
            gamma: gamma_inner,
            shape,
        };
        match beta {
            Some(beta) => record::<B, C, _, 3>(LayerNormOp, [&x, &gamma, &beta], state, y),
            None => record::<B, C, _, 2>(LayerNormOp, [&x, &gamma], state, y),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        let y = B::softmax_forward(around::<B>(x.primitive.clone(), dim));
        let out = B::float_reshape(y.clone().into_primitive().tensor(), shape.clone());
        record::<B, C, _, 1>(SoftmaxOp, [&x], SoftmaxState { y, shape }, out)
    }

    fn fused_window_softmax(
        scores: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let y = B::window_softmax_forward(
            float(scores.primitive.clone()),
            float(bias.primitive.clone()),
            mask.map(|m| float(m.primitive)),
        );
        let out = y.clone().into_primitive().tensor();
        record::<B, C, _, 2>(WindowSoftmaxOp, [&scores, &bias], y, out)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        let x_flat = flat::<B>(x.primitive.clone());
        let y = B::float_reshape(
            B::gelu_exact(x_flat.clone()).into_primitive().tensor(),
            shape.clone(),
        );
        record::<B, C, _, 1>(GeluOp, [&x], GeluState { x: x_flat, shape }, y)
    }

    fn fused_permute(x: FloatTensor<Self>, axes: &[usize]) -> FloatTensor<Self> {
        let y = B::permute_contiguous(x.primitive.clone(), axes);
        let mut inverse = vec![0; axes.len()];
        for (i, &axis) in axes.iter().enumerate() {
            inverse[axis] = i;
        }
        record::<B, C, _, 1>(PermuteOp, [&x], inverse, y)
    }

    fn fused_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let y = B::matmul(lhs.primitive.clone(), rhs.primitive.clone());
        // Each operand is kept only for the other's gradient, as Burn's own matmul does.
        let state = (
            rhs.is_tracked().then(|| lhs.primitive.clone()),
            lhs.is_tracked().then(|| rhs.primitive.clone()),
        );
        record::<B, C, _, 2>(MatmulOp, [&lhs, &rhs], state, y)
    }

    fn fused_mean_dim(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        let y = B::float_mean_dim(x.primitive.clone(), dim);
        record::<B, C, _, 1>(MeanOp, [&x], (shape, dim), y)
    }
}

/// Adds `op`'s node over `parents` to the graph, with the state its backward reads when any
/// parent needs a gradient.
fn record<B: FusedKernels, C: CheckpointStrategy, O: Backward<B, N>, const N: usize>(
    op: O,
    parents: [&FloatTensor<Autodiff<B, C>>; N],
    state: O::State,
    output: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match op
        .prepare::<C>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Hands each parent of `$ops` that needs one its gradient, in parent order.
macro_rules! register {
    ($ops:expr, $grads:expr, $gradients:expr) => {
        for (parent, grad) in $ops.parents.into_iter().zip($gradients) {
            if let Some(node) = parent {
                $grads.register::<B>(node.id, grad);
            }
        }
    };
}

#[derive(Debug)]
struct LayerNormOp;

#[derive(Debug, Clone)]
struct LayerNormState<B: FusedKernels> {
    xhat: Tensor<B, 2>,
    rstd: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    /// Of x.
    shape: Shape,
}

/// Parents: x, γ and, when the norm has one, β.
impl<B: FusedKernels, const N: usize> Backward<B, N> for LayerNormOp {
    type State = LayerNormState<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let g = float(B::float_reshape(grads.consume::<B>(&ops.node), s.xhat.shape()));
        let (dx, dgamma, dbeta) = B::layer_norm_backward(g, s.xhat, s.rstd, s.gamma);
        let dx = B::float_reshape(dx.into_primitive().tensor(), s.shape);
        register!(
            ops,
            grads,
            [
                dx,
                dgamma.into_primitive().tensor(),
                dbeta.into_primitive().tensor()
            ]
        );
    }
}

#[derive(Debug)]
struct SoftmaxOp;

#[derive(Debug, Clone)]
struct SoftmaxState<B: FusedKernels> {
    /// [outer, len, inner]
    y: Tensor<B, 3>,
    /// Of x.
    shape: Shape,
}

impl<B: FusedKernels> Backward<B, 1> for SoftmaxOp {
    type State = SoftmaxState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let g = float(B::float_reshape(grads.consume::<B>(&ops.node), s.y.shape()));
        let dx = B::softmax_backward(s.y, g).into_primitive().tensor();
        register!(ops, grads, [B::float_reshape(dx, s.shape)]);
    }
}

#[derive(Debug)]
struct WindowSoftmaxOp;

/// Parents: the scores and the bias; the state is the output [B·nW, heads, N, N].
impl<B: FusedKernels> Backward<B, 2> for WindowSoftmaxOp {
    type State = Tensor<B, 4>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        let [bw, h, n, _] = y.dims();
        let rows = |t: Tensor<B, 4>| t.reshape([bw * h * n, n, 1]);
        let g = float::<B, 4>(grads.consume::<B>(&ops.node));
        let ds = B::softmax_backward(rows(y), rows(g)).reshape([bw, h, n, n]);
        // The bias is a parameter, but its gradient is a reduction: skip it when nothing needs it.
        let dbias = ops.parents[1]
            .is_some()
            .then(|| B::window_bias_backward(ds.clone()).into_primitive().tensor());
        let gradients = [Some(ds.into_primitive().tensor()), dbias];
        for (parent, grad) in ops.parents.into_iter().zip(gradients) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct GeluOp;

#[derive(Debug, Clone)]
struct GeluState<B: FusedKernels> {
    /// x, flattened.
    x: Tensor<B, 1>,
    shape: Shape,
}

impl<B: FusedKernels> Backward<B, 1> for GeluOp {
    type State = GeluState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let g = flat::<B>(grads.consume::<B>(&ops.node));
        let dx = B::gelu_exact_backward(s.x, g).into_primitive().tensor();
        register!(ops, grads, [B::float_reshape(dx, s.shape)]);
    }
}

#[derive(Debug)]
struct PermuteOp;

impl<B: FusedKernels> Backward<B, 1> for PermuteOp {
    /// The inverse permutation.
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let dx = B::permute_contiguous(g, &ops.state);
        register!(ops, grads, [dx]);
    }
}

#[derive(Debug)]
struct MeanOp;

impl<B: FusedKernels> Backward<B, 1> for MeanOp {
    /// x's shape and the dimension averaged over.
    type State = (Shape, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (shape, dim) = ops.state.clone();
        let g = around::<B>(grads.consume::<B>(&ops.node), dim);
        let dx = B::mean_backward(g, shape[dim]).into_primitive().tensor();
        register!(ops, grads, [B::float_reshape(dx, shape)]);
    }
}

#[derive(Debug)]
struct MatmulOp;

/// Parents: lhs and rhs. d lhs = g · rhsᵀ, d rhs = lhsᵀ · g, each only when its parent needs it
/// (and then the other operand is in the state).
impl<B: FusedKernels> Backward<B, 2> for MatmulOp {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (lhs, rhs) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let r = g.shape().num_dims();
        let [lhs_node, rhs_node] = ops.parents;
        if let (Some(node), Some(rhs)) = (lhs_node, rhs) {
            let rhs_t = B::float_swap_dims(rhs, r - 2, r - 1);
            grads.register::<B>(node.id, B::matmul(g.clone(), rhs_t));
        }
        if let (Some(node), Some(lhs)) = (rhs_node, lhs) {
            let lhs_t = B::float_swap_dims(lhs, r - 2, r - 1);
            grads.register::<B>(node.id, B::matmul(lhs_t, g));
        }
    }
}
