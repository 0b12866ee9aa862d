//! The fused kernels on Flex (the CPU backend), for f32: one pass over each row, rows in
//! parallel on rayon's pool. Other dtypes take the decomposed defaults.
//!
//! Determinism: every reduction runs in a fixed order that does not depend on the number of
//! threads — within a row in 8 lanes, and across rows over fixed blocks of [`ROWS`] rows whose
//! partial sums are added in block order — so a run gives the same bits on 1 or N threads.

use burn::backend::Flex;
use burn::backend::flex::FlexDevice;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{FusedKernels, decomposed, math};

/// Rows per parallel task, and per partial sum of the reductions across rows.
const ROWS: usize = 64;
/// Elements per parallel task of the element-wise kernels.
const ELEMENTS: usize = 16 * 1024;

impl FusedKernels for Flex {
    fn layer_norm_forward(
        x: Tensor<Flex, 2>,
        gamma: Tensor<Flex, 1>,
        beta: Option<Tensor<Flex, 1>>,
        eps: f64,
    ) -> [Tensor<Flex, 2>; 3] {
        let all_f32 = beta.as_ref().is_none_or(|b| b.dtype() == DType::F32)
            && [x.dtype(), gamma.dtype()].iter().all(|d| *d == DType::F32);
        if !all_f32 {
            return decomposed::layer_norm_forward(x, gamma, beta, eps);
        }
        let [rows, c] = x.dims();
        let (xs, gamma) = (values(x), values(gamma));
        let (xs, gamma): (&[f32], &[f32]) = (&xs, &gamma);
        let beta = beta.map_or_else(|| vec![0.0; c], |b| values(b).to_vec());
        let (mut y, mut xhat, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows * c], vec![0.0; rows]);
        if c > 0 {
            y.par_chunks_mut(ROWS * c)
                .zip(xhat.par_chunks_mut(ROWS * c))
                .zip(rstd.par_chunks_mut(ROWS))
                .zip(xs.par_chunks(ROWS * c))
                .for_each(|(((y, xhat), rstd), xs)| {
                    for (((y, xhat), r), x) in y
                        .chunks_exact_mut(c)
                        .zip(xhat.chunks_exact_mut(c))
                        .zip(rstd.iter_mut())
                        .zip(xs.chunks_exact(c))
                    {
                        let mean = sum(x) / c as f32;
                        let var = sum_sq_dev(x, mean) / c as f32;
                        *r = 1.0 / (var + eps as f32).sqrt();
                        for j in 0..c {
                            xhat[j] = (x[j] - mean) * *r;
                            y[j] = xhat[j] * gamma[j] + beta[j];
                        }
                    }
                });
        }
        [
            tensor(y, [rows, c]),
            tensor(xhat, [rows, c]),
            tensor(rstd, [rows, 1]),
        ]
    }

    fn layer_norm_backward(
        g: Tensor<Flex, 2>,
        xhat: Tensor<Flex, 2>,
        rstd: Tensor<Flex, 2>,
        gamma: Tensor<Flex, 1>,
    ) -> (Tensor<Flex, 2>, Tensor<Flex, 1>, Tensor<Flex, 1>) {
        if [g.dtype(), xhat.dtype(), rstd.dtype(), gamma.dtype()]
            .iter()
            .any(|d| *d != DType::F32)
        {
            return decomposed::layer_norm_backward(g, xhat, rstd, gamma);
        }
        let [rows, c] = g.dims();
        let (gs, xhat, rstd, gamma) = (values(g), values(xhat), values(rstd), values(gamma));
        let (gs, xhat, rstd, gamma): (&[f32], &[f32], &[f32], &[f32]) = (&gs, &xhat, &rstd, &gamma);
        let mut dx = vec![0.0; rows * c];
        if c == 0 {
            return (tensor(dx, [rows, c]), tensor(vec![], [0]), tensor(vec![], [0]));
        }
        // Each block of rows returns its partial dγ and dβ; the blocks are added in order below.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(ROWS * c)
            .zip(gs.par_chunks(ROWS * c))
            .zip(xhat.par_chunks(ROWS * c))
            .zip(rstd.par_chunks(ROWS))
            .map(|(((dx, gs), xhat), rstd)| {
                let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
                let mut a = vec![0.0f32; c];
                for (((dx, g), xh), r) in dx
                    .chunks_exact_mut(c)
                    .zip(gs.chunks_exact(c))
                    .zip(xhat.chunks_exact(c))
                    .zip(rstd)
                {
                    for j in 0..c {
                        a[j] = g[j] * gamma[j];
                        dgamma[j] += g[j] * xh[j];
                        dbeta[j] += g[j];
                    }
                    let m1 = sum(&a) / c as f32;
                    let m2 = dot(&a, xh) / c as f32;
                    for j in 0..c {
                        dx[j] = r * (a[j] - m1 - xh[j] * m2);
                    }
                }
                (dgamma, dbeta)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
        for (pg, pb) in &partials {
            add_to(&mut dgamma, pg);
            add_to(&mut dbeta, pb);
        }
        (tensor(dx, [rows, c]), tensor(dgamma, [c]), tensor(dbeta, [c]))
    }

    /// Over a middle dimension (inner > 1) in one pass per outer index, columns of `inner` values
    /// vectorised; over the last, Burn's (Flex's own row kernel, `softmax_last`). Burn moves a
    /// middle dimension last and back, strided copies on one thread.
    fn softmax_forward(x: Tensor<Flex, 3>) -> Tensor<Flex, 3> {
        let [outer, len, inner] = x.dims();
        if x.dtype() != DType::F32 || inner == 1 {
            return burn::tensor::activation::softmax(x, 1);
        }
        let xs = values(x);
        let xs: &[f32] = &xs;
        let mut y = vec![0.0f32; outer * len * inner];
        let block = len * inner;
        if block > 0 {
            y.par_chunks_mut(block)
                .zip(xs.par_chunks(block))
                .for_each(|(y, xs)| {
                    let mut max = vec![f32::NEG_INFINITY; inner];
                    for x in xs.chunks_exact(inner) {
                        for k in 0..inner {
                            max[k] = max[k].max(x[k]);
                        }
                    }
                    let mut sum = vec![0.0f32; inner];
                    for (y, x) in y.chunks_exact_mut(inner).zip(xs.chunks_exact(inner)) {
                        for k in 0..inner {
                            y[k] = (x[k] - max[k]).exp();
                            sum[k] += y[k];
                        }
                    }
                    for y in y.chunks_exact_mut(inner) {
                        for k in 0..inner {
                            y[k] /= sum[k];
                        }
                    }
                });
        }
        tensor(y, [outer, len, inner])
    }

    fn softmax_backward(y: Tensor<Flex, 3>, g: Tensor<Flex, 3>) -> Tensor<Flex, 3> {
        if y.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return decomposed::softmax_backward(y, g);
        }
        let [outer, len, inner] = y.dims();
        let (ys, gs) = (values(y), values(g));
        let (ys, gs): (&[f32], &[f32]) = (&ys, &gs);
        let mut dx = vec![0.0; outer * len * inner];
        if inner == 1 && len > 0 {
            // Softmax over contiguous rows: one dot product and one pass per row.
            dx.par_chunks_mut(ROWS * len)
                .zip(ys.par_chunks(ROWS * len))
                .zip(gs.par_chunks(ROWS * len))
                .for_each(|((dx, ys), gs)| {
                    for ((dx, y), g) in dx
                        .chunks_exact_mut(len)
                        .zip(ys.chunks_exact(len))
                        .zip(gs.chunks_exact(len))
                    {
                        let s = dot(g, y);
                        for j in 0..len {
                            dx[j] = y[j] * (g[j] - s);
                        }
                    }
                });
        } else if len * inner > 0 {
            // Over a middle dimension: per outer index, Σ over `len` rows of `inner` values, vectorised
            // across `inner`, rows added in order.
            let block = len * inner;
            dx.par_chunks_mut(block)
                .zip(ys.par_chunks(block))
                .zip(gs.par_chunks(block))
                .for_each(|((dx, ys), gs)| {
                    let mut s = vec![0.0f32; inner];
                    for (y, g) in ys.chunks_exact(inner).zip(gs.chunks_exact(inner)) {
                        for k in 0..inner {
                            s[k] += g[k] * y[k];
                        }
                    }
                    for ((dx, y), g) in dx
                        .chunks_exact_mut(inner)
                        .zip(ys.chunks_exact(inner))
                        .zip(gs.chunks_exact(inner))
                    {
                        for k in 0..inner {
                            dx[k] = y[k] * (g[k] - s[k]);
                        }
                    }
                });
        }
        tensor(dx, [outer, len, inner])
    }

    fn window_softmax_forward(
        scores: Tensor<Flex, 4>,
        bias: Tensor<Flex, 3>,
        mask: Option<Tensor<Flex, 3>>,
    ) -> Tensor<Flex, 4> {
        let all_f32 = mask.as_ref().is_none_or(|m| m.dtype() == DType::F32)
            && scores.dtype() == DType::F32
            && bias.dtype() == DType::F32;
        if !all_f32 {
            return decomposed::window_softmax_forward(scores, bias, mask);
        }
        let [bw, h, n, _] = scores.dims();
        let nw = mask.as_ref().map_or(1, |m| m.dims()[0]);
        let per_window = h * n * n;
        let (scores, bias, mask) = (values(scores), values(bias), mask.map(values));
        let (scores, bias, mask): (&[f32], &[f32], _) = (&scores, &bias, mask.as_deref());
        let mut s = vec![0.0f32; bw * per_window];
        if per_window > 0 {
            // Window a of the batch adds the bias of every head and the mask of window a mod nW.
            s.par_chunks_mut(per_window)
                .zip(scores.par_chunks(per_window))
                .enumerate()
                .for_each(|(a, (s, scores))| {
                    for ((s, x), b) in s.iter_mut().zip(scores).zip(bias.iter()) {
                        *s = x + b;
                    }
                    if let Some(mask) = &mask {
                        let m = &mask[(a % nw) * n * n..][..n * n];
                        for s in s.chunks_exact_mut(n * n) {
                            add_to(s, m);
                        }
                    }
                });
        }
        burn::tensor::activation::softmax(tensor(s, [bw, h, n, n]), 3)
    }

    fn window_bias_backward(ds: Tensor<Flex, 4>) -> Tensor<Flex, 3> {
        if ds.dtype() != DType::F32 {
            return decomposed::window_bias_backward(ds);
        }
        let [bw, h, n, _] = ds.dims();
        let per_window = h * n * n;
        let ds = values(ds);
        let ds: &[f32] = &ds;
        let mut dbias = vec![0.0f32; per_window];
        // Positions in parallel; for each, the windows are added in order.
        const SPAN: usize = 1024;
        dbias.par_chunks_mut(SPAN).enumerate().for_each(|(i, out)| {
            let start = i * SPAN;
            for a in 0..bw {
                add_to(out, &ds[a * per_window + start..][..out.len()]);
            }
        });
        tensor(dbias, [h, n, n])
    }

    fn permute_contiguous(x: FlexTensor, axes: &[usize]) -> FlexTensor {
        let x = x.permute(axes);
        if x.is_contiguous() || x.dtype() != DType::F32 {
            return x;
        }
        contiguous_f32(&x)
    }

    fn matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
            return Flex::float_matmul(lhs, rhs);
        }
        matmul_f32(lhs, rhs)
    }

    fn mean_backward(g: Tensor<Flex, 3>, len: usize) -> Tensor<Flex, 3> {
        if g.dtype() != DType::F32 {
            return decomposed::mean_backward(g, len);
        }
        let [outer, _, inner] = g.dims();
        let gs = values(g);
        let gs: &[f32] = &gs;
        let mut dx = vec![0.0f32; outer * len * inner];
        let block = len * inner;
        if let Some(per_task) = ELEMENTS.checked_div(block) {
            let per_task = per_task.max(1);
            dx.par_chunks_mut(per_task * block)
                .zip(gs.par_chunks(per_task * inner))
                .for_each(|(dx, gs)| {
                    for (dx, g) in dx.chunks_exact_mut(block).zip(gs.chunks_exact(inner)) {
                        for row in dx.chunks_exact_mut(inner) {
                            for (d, g) in row.iter_mut().zip(g) {
                                *d = g / len as f32;
                            }
                        }
                    }
                });
        }
        tensor(dx, [outer, len, inner])
    }

    /// One buffer written once: Flex's `slice_assign` copies its whole destination before
    /// writing (burn-flex 0.21 `slice_write_impl` holds a second reference to it across the
    /// copy-on-write `storage_mut`), so the default's per-part `slice_assign` was a copy of the
    /// whole model per parameter, 12 % of the small train step.
    fn write_flat(
        len: usize,
        parts: Vec<(usize, Tensor<Flex, 1>)>,
        device: &FlexDevice,
        dtype: DType,
    ) -> Tensor<Flex, 1> {
        if dtype != DType::F32 || parts.iter().any(|(_, p)| p.dtype() != DType::F32) {
            return decomposed::write_flat(len, parts, device, dtype);
        }
        let mut flat = vec![0.0f32; len];
        for (offset, part) in parts {
            let part = values(part);
            flat[offset..offset + part.len()].copy_from_slice(&part);
        }
        tensor(flat, [len])
    }

    fn gelu_exact(x: Tensor<Flex, 1>) -> Tensor<Flex, 1> {
        if x.dtype() != DType::F32 {
            return decomposed::gelu_exact(x);
        }
        let n = x.dims()[0];
        let xs = values(x);
        let xs: &[f32] = &xs;
        let mut y = vec![0.0f32; n];
        y.par_chunks_mut(ELEMENTS)
            .zip(xs.par_chunks(ELEMENTS))
            .for_each(|(y, xs)| math::gelu(xs, y));
        tensor(y, [n])
    }

    fn gelu_exact_backward(x: Tensor<Flex, 1>, g: Tensor<Flex, 1>) -> Tensor<Flex, 1> {
        if x.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return decomposed::gelu_exact_backward(x, g);
        }
        let n = x.dims()[0];
        let (xs, gs) = (values(x), values(g));
        let (xs, gs): (&[f32], &[f32]) = (&xs, &gs);
        let mut dx = vec![0.0f32; n];
        dx.par_chunks_mut(ELEMENTS)
            .zip(xs.par_chunks(ELEMENTS).zip(gs.par_chunks(ELEMENTS)))
            .for_each(|(dx, (xs, gs))| math::gelu_backward(xs, gs, dx));
        tensor(dx, [n])
    }
}

/// Flex's split of gemm's work, kept so the bits are Flex's: a matrix product of at least this
/// many multiply-adds runs on the pool inside gemm (burn-flex 0.21 `ops/matmul.rs`)...
const GEMM_PARALLEL: usize = 192 * 192 * 192;
/// ...and smaller ones run one matrix per task when the batch has at least this many in all.
const BATCH_PARALLEL: usize = 128 * 128 * 128;

/// lhs [..., M, K] · rhs [..., K, N] over equal leading dims: gemm on the operands' own strides,
/// the products written straight into the output. Flex's matmul does the same arithmetic but
/// zero-fills its output and then copies it once more to align it (burn-flex 0.21
/// `FlexTensor::empty` through `Bytes::from_bytes_vec`), two passes on the calling thread.
fn matmul_f32(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
    let (ls, rs) = (lhs.layout().shape().to_vec(), rhs.layout().shape().to_vec());
    let r = ls.len();
    if r < 2 || rs.len() != r || ls[..r - 2] != rs[..r - 2] || ls[r - 1] != rs[r - 2] {
        return Flex::float_matmul(lhs, rhs);
    }
    let (m, k, n) = (ls[r - 2], ls[r - 1], rs[r - 1]);
    let batch: usize = ls[..r - 2].iter().product();
    let mut out_shape = ls.clone();
    out_shape[r - 1] = n;
    let per_matrix = m * n * k;
    if per_matrix == 0 || batch == 0 {
        return tensor_of(vec![0.0; batch * m * n], out_shape);
    }
    let (lhs, rhs) = (Matrices::of(lhs), Matrices::of(rhs));
    let mut out = Vec::<f32>::with_capacity(batch * m * n);
    let product = |b: usize, dst: &mut [std::mem::MaybeUninit<f32>], parallelism| {
        // SAFETY: the operands' offsets and strides address elements of their own buffers (a
        // Flex layout of [.., M, K] / [.., K, N]); `dst` holds the M·N outputs, all written
        // (read_dst false).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                false,
                lhs.matrix(b),
                lhs.col,
                lhs.row,
                rhs.matrix(b),
                rhs.col,
                rhs.row,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    let dst = &mut out.spare_capacity_mut()[..batch * m * n];
    if per_matrix >= GEMM_PARALLEL && !(batch >= 4 && batch * per_matrix >= BATCH_PARALLEL) {
        for (b, dst) in dst.chunks_exact_mut(m * n).enumerate() {
            product(b, dst, gemm::Parallelism::Rayon(0));
        }
    } else if batch > 1 && batch * per_matrix >= BATCH_PARALLEL {
        dst.par_chunks_exact_mut(m * n)
            .enumerate()
            .for_each(|(b, dst)| product(b, dst, gemm::Parallelism::None));
    } else {
        for (b, dst) in dst.chunks_exact_mut(m * n).enumerate() {
            product(b, dst, gemm::Parallelism::None);
        }
    }
    // SAFETY: gemm wrote every one of the batch·M·N elements above.
    unsafe { out.set_len(batch * m * n) };
    tensor_of(out, out_shape)
}

/// The matrices of a [..., rows, cols] tensor in its buffer: matrix b of the leading dims (in
/// row-major order) starts `b · batch` elements after `start`.
struct Matrices {
    tensor: FlexTensor,
    start: usize,
    batch: isize,
    row: isize,
    col: isize,
}

impl Matrices {
    /// A tensor whose leading dims do not step through its buffer as one index is copied first.
    fn of(x: FlexTensor) -> Self {
        let (x, batch) = match batch_stride(&x) {
            Some(batch) => (x, batch),
            None => {
                let x = contiguous_f32(&x);
                let batch = batch_stride(&x).expect("a contiguous tensor's leading dims are one index");
                (x, batch)
            }
        };
        let strides = x.layout().strides().to_vec();
        let r = strides.len();
        Self {
            batch,
            start: x.layout().start_offset(),
            row: strides[r - 2],
            col: strides[r - 1],
            tensor: x,
        }
    }

    fn matrix(&self, b: usize) -> *const f32 {
        let offset = self.start as isize + b as isize * self.batch;
        self.tensor.storage::<f32>()[offset as usize..].as_ptr()
    }
}

/// The step between consecutive matrices when the leading dims of `x` (those above 1) nest as one
/// index, as they do in a contiguous tensor or a transpose of its last two dims.
fn batch_stride(x: &FlexTensor) -> Option<isize> {
    let layout = x.layout();
    let (shape, strides) = (layout.shape().to_vec(), layout.strides());
    let r = shape.len();
    let dims: Vec<(usize, isize)> = shape[..r - 2]
        .iter()
        .zip(&strides[..r - 2])
        .filter(|(size, _)| **size > 1)
        .map(|(size, stride)| (*size, *stride))
        .collect();
    let nested = dims.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0 as isize);
    match dims.last() {
        None => Some(0),
        Some(&(_, inner)) => nested.then_some(inner),
    }
}

fn tensor_of(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    Flex::float_from_data(TensorData::new(values, shape), &FlexDevice)
}

/// A strided f32 tensor copied into row-major order: its trailing dims that form one strided run
/// in the source are copied as a run (a memcpy where the stride is 1), runs in parallel.
fn contiguous_f32(x: &FlexTensor) -> FlexTensor {
    let layout = x.layout();
    let shape = layout.shape().to_vec();
    let strides = layout.strides();
    let total: usize = shape.iter().product();
    let Some(&step) = strides.last() else {
        return x.to_contiguous();
    };
    if total == 0 {
        return x.to_contiguous();
    }
    // Dims first_inner.. are one run of `run` elements `step` apart in the source.
    let mut first_inner = shape.len() - 1;
    let mut run = shape[first_inner];
    while first_inner > 0 && strides[first_inner - 1] == strides[first_inner] * shape[first_inner] as isize {
        first_inner -= 1;
        run *= shape[first_inner];
    }
    let (outer_shape, outer_strides) = (&shape[..first_inner], &strides[..first_inner]);
    let src = x.storage::<f32>();
    let start = layout.start_offset() as isize;
    let runs_per_task = (ELEMENTS / run).max(1);
    let mut out = vec![0.0f32; total];
    out.par_chunks_mut(runs_per_task * run)
        .enumerate()
        .for_each(|(task, out)| {
            for (i, out) in out.chunks_exact_mut(run).enumerate() {
                let mut index = task * runs_per_task + i;
                let mut offset = start;
                for (&dim, &stride) in outer_shape.iter().zip(outer_strides).rev() {
                    offset += (index % dim) as isize * stride;
                    index /= dim;
                }
                if step == 1 {
                    let offset = offset as usize;
                    out.copy_from_slice(&src[offset..offset + run]);
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = src[(offset + j as isize * step) as usize];
                    }
                }
            }
        });
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// An f32 tensor's values in row-major order, borrowed (copied only when its layout is strided).
/// Bind them as a slice once (`let xs: &[f32] = &xs;`) before a loop: each deref checks the
/// layout and goes through the buffer's allocation controller.
struct Values(FlexTensor);

impl std::ops::Deref for Values {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        self.0.as_slice().expect("contiguous f32")
    }
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Values {
    Values(t.into_primitive().tensor().to_contiguous())
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_data(TensorData::new(values, shape), &FlexDevice)
}

/// Σ x over 8 lanes, lanes added in order: vectorised, and the same order on every run.
fn sum(x: &[f32]) -> f32 {
    lanes(x.len(), |i| x[i])
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    lanes(a.len().min(b.len()), |i| a[i] * b[i])
}

fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    lanes(x.len(), |i| (x[i] - mean) * (x[i] - mean))
}

#[inline(always)]
fn lanes(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let tail: f32 = (full..n).map(&f).sum();
    acc.iter().sum::<f32>() + tail
}

fn add_to(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, x)| *a += x);
}

/// The Flex kernels against the decomposed defaults that every other backend (CUDA) runs, kernel
/// by kernel on the same values: this is the CUDA path's arithmetic, checked on the CPU.
#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &FlexDevice)
    }

    fn assert_close<const D: usize>(what: &str, a: Tensor<Flex, D>, b: Tensor<Flex, D>) {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let diff = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            a.len() == b.len() && diff <= 1e-5 * scale,
            "{what}: {diff:e} vs scale {scale:e}"
        );
    }

    #[test]
    fn flex_kernels_equal_the_decomposed_defaults() {
        let (x, g, gamma, beta) = (random([150, 37]), random([150, 37]), random([37]), random([37]));
        let [y, xhat, rstd] = Flex::layer_norm_forward(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5);
        let [y_ref, xhat_ref, rstd_ref] = decomposed::layer_norm_forward(x, gamma.clone(), Some(beta), 1e-5);
        assert_close("ln y", y, y_ref);
        assert_close("ln rstd", rstd.clone(), rstd_ref);
        let (dx, dgamma, dbeta) =
            Flex::layer_norm_backward(g.clone(), xhat.clone(), rstd.clone(), gamma.clone());
        let (dx_ref, dgamma_ref, dbeta_ref) = decomposed::layer_norm_backward(g, xhat_ref, rstd, gamma);
        assert_close("ln dx", dx, dx_ref);
        assert_close("ln dgamma", dgamma, dgamma_ref);
        assert_close("ln dbeta", dbeta, dbeta_ref);

        for shape in [[6, 13, 1], [4, 9, 5], [3, 1, 7]] {
            let x = random(shape).mul_scalar(4.0);
            assert_close(
                "softmax y",
                Flex::softmax_forward(x.clone()),
                burn::tensor::activation::softmax(x, 1),
            );
            let y = Flex::softmax_forward(random(shape));
            let g = random(shape);
            let dx = Flex::softmax_backward(y.clone(), g.clone());
            assert_close("softmax dx", dx, decomposed::softmax_backward(y, g));
        }

        let (scores, bias, mask) = (random([8, 2, 9, 9]), random([2, 9, 9]), random([4, 9, 9]));
        let y = Flex::window_softmax_forward(scores.clone(), bias.clone(), Some(mask.clone()));
        assert_close(
            "window y",
            y,
            decomposed::window_softmax_forward(scores, bias, Some(mask)),
        );
        let ds = random([8, 2, 9, 9]);
        let dbias_ref = decomposed::window_bias_backward(ds.clone());
        assert_close("window dbias", Flex::window_bias_backward(ds), dbias_ref);

        for (shape, len) in [([6, 1, 5], 7), ([12, 1, 1], 9), ([1, 1, 33], 4)] {
            let g = random(shape);
            assert_close(
                "mean dx",
                Flex::mean_backward(g.clone(), len),
                decomposed::mean_backward(g, len),
            );
        }

        let (x, g) = (random([300]).mul_scalar(3.0), random([300]));
        assert_close(
            "gelu y",
            Flex::gelu_exact(x.clone()),
            decomposed::gelu_exact(x.clone()),
        );
        assert_close(
            "gelu dx",
            Flex::gelu_exact_backward(x.clone(), g.clone()),
            decomposed::gelu_exact_backward(x, g),
        );
    }

    #[test]
    fn the_flat_buffer_holds_each_part_at_its_offset_and_zeros_between() {
        // A part that is a view into a larger buffer (start offset ≠ 0) and one from a transpose.
        let view = random([40]).narrow(0, 7, 21);
        let transposed = random([5, 3]).transpose().reshape([15]);
        let plain = random([9]);
        let parts = vec![(0, view), (24, transposed), (48, plain)];
        let flat = Flex::write_flat(64, parts.clone(), &FlexDevice, DType::F32);
        let reference = decomposed::write_flat(64, parts.clone(), &FlexDevice, DType::F32);
        let values = flat.into_data().to_vec::<f32>().unwrap();
        assert_eq!(values, reference.into_data().to_vec::<f32>().unwrap());
        for (offset, part) in parts {
            let part = part.into_data().to_vec::<f32>().unwrap();
            assert_eq!(values[offset..offset + part.len()], part[..]);
        }
        assert!(
            [21..24, 39..48, 57..64]
                .into_iter()
                .flatten()
                .all(|i| values[i] == 0.0)
        );
    }
}
