//! Gradient synchronisation: sum the flat gradient (and a few values riding along: the losses,
//! the stop votes) over ranks, average over the global batch's micro-batches and clip by the
//! global norm.
//!
//! CPU workers go through host memory and the [`Collective`] (the TCP ring). GPU workers keep the
//! buffer on the device and sum it in place with NCCL; only the norm is taken from a host copy
//! (see [`GradSync::average`]). Their collective still carries the start-up broadcasts, barriers
//! and evaluation counts.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use swinfc_comm::{Collective, CommError, LocalCollective};

use crate::optim::flat_tensor;

/// Sums a dense f32 flat tensor over ranks, in place on the device that holds it.
pub trait DeviceAllReduce<B: Backend> {
    fn all_reduce_sum_in_place(&mut self, flat: &Tensor<B, 1>) -> Result<(), CommError>;
}

/// World size 1: there is nothing to sum.
impl<B: Backend> DeviceAllReduce<B> for LocalCollective {
    fn all_reduce_sum_in_place(&mut self, _: &Tensor<B, 1>) -> Result<(), CommError> {
        Ok(())
    }
}

/// NCCL on Burn CUDA tensors, each call bounded by `timeout` (the communicator aborts past it).
#[cfg(feature = "cuda")]
pub struct NcclAllReduce {
    pub comm: swinfc_comm::nccl::NcclComm,
    pub timeout: std::time::Duration,
}

#[cfg(feature = "cuda")]
impl DeviceAllReduce<burn::backend::Cuda> for NcclAllReduce {
    fn all_reduce_sum_in_place(&mut self, flat: &Tensor<burn::backend::Cuda, 1>) -> Result<(), CommError> {
        self.comm.all_reduce_sum_tensor(flat, self.timeout)
    }
}

/// Where a worker's gradient sum happens.
pub enum GradSync<B: Backend> {
    /// Copied to the host and summed through the collective (CPU workers).
    Host,
    /// Summed in place on the device (NCCL on GPU, or nothing at world size 1).
    Device(Box<dyn DeviceAllReduce<B>>),
}

/// One step's gradient after synchronisation.
pub struct Synced<B: Backend> {
    /// Averaged over the global batch's micro-batches, then clipped: [len], f32.
    pub grad: Tensor<B, 1>,
    /// The values that rode along, averaged the same way.
    pub extra: Vec<f32>,
    /// Global L2 norm before clipping (non-finite when a rank had a non-finite gradient).
    pub norm: f64,
}

impl<B: Backend> GradSync<B> {
    /// Sums `flat` (this rank's f32 gradient, summed over its micro-batches) and `extra` over
    /// ranks, divides both by `micro_batches` (all ranks' micro-batches of the step) and clips
    /// the gradient to `max_norm` (0: no clipping). Every rank gets the same result.
    pub fn average(
        &mut self,
        flat: Tensor<B, 1>,
        extra: &[f32],
        micro_batches: usize,
        max_norm: f64,
        comm: &mut dyn Collective,
    ) -> Result<Synced<B>, CommError> {
        let len = flat.dims()[0];
        let device = flat.device();
        let scale = 1.0 / micro_batches as f32;
        match self {
            GradSync::Host => {
                // `extra` rides at the end of the gradient buffer, so one all-reduce serves both.
                let mut buffer = host_f32(flat);
                buffer.extend_from_slice(extra);
                comm.all_reduce_sum_f32(&mut buffer)?;
                buffer.iter_mut().for_each(|v| *v *= scale);
                let extra = buffer.split_off(len);
                let norm = global_norm(&buffer);
                let factor = clip_factor(norm, max_norm) as f32;
                if factor != 1.0 {
                    buffer.iter_mut().for_each(|g| *g *= factor);
                }
                Ok(Synced {
                    grad: flat_tensor(buffer, &device),
                    extra,
                    norm,
                })
            }
            GradSync::Device(all_reduce) => {
                // Two dense buffers summed in place, and no device-side norm: on CUDA the norm of
                // a `narrow`ed view of one `cat` buffer came out as √(number of non-zero
                // gradients) (README, known issues), so the norm is taken from a host copy, as on
                // the CPU: one device-to-host copy of the gradient per step. `flat` is this call's
                // own dense buffer (a `cat`, or the sum of two), so NCCL may write it in place.
                let extra_sum = flat_tensor(extra.to_vec(), &device);
                all_reduce.all_reduce_sum_in_place(&flat)?;
                all_reduce.all_reduce_sum_in_place(&extra_sum)?;
                let mut extra = host_f32(extra_sum);
                extra.iter_mut().for_each(|v| *v *= scale);
                let grad = flat.mul_scalar(scale);
                let norm = global_norm(&host_f32(grad.clone()));
                let factor = clip_factor(norm, max_norm) as f32;
                let grad = if factor != 1.0 {
                    grad.mul_scalar(factor)
                } else {
                    grad
                };
                Ok(Synced { grad, extra, norm })
            }
        }
    }
}

/// Global L2 norm of the flat gradient, accumulated in f64.
fn global_norm(grad: &[f32]) -> f64 {
    grad.iter().map(|g| f64::from(*g).powi(2)).sum::<f64>().sqrt()
}

/// The factor torch's `clip_grad_norm_` scales the gradient by, given its global norm.
fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// The values of an f32 tensor, on the host.
fn host_f32<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("gradient buffers are f32")
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, flex::FlexDevice};

    use super::*;

    fn average(sync: &mut GradSync<Flex>, grad: &[f32], max_norm: f64) -> (Vec<f32>, Vec<f32>, f64) {
        let flat = flat_tensor(grad.to_vec(), &FlexDevice);
        let synced = sync
            .average(flat, &[3.0, 1.0], 2, max_norm, &mut LocalCollective)
            .expect("world size 1");
        (host_f32(synced.grad), synced.extra, synced.norm)
    }

    /// The device path must agree with the host path CPU workers take, bit for bit, clipped or not.
    #[test]
    fn device_and_host_paths_average_and_clip_alike() {
        let grad: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let expected_norm = grad
            .iter()
            .map(|g| f64::from(g / 2.0).powi(2))
            .sum::<f64>()
            .sqrt();
        for max_norm in [0.0, 1.0, 1e9] {
            let host = average(&mut GradSync::Host, &grad, max_norm);
            let device = average(&mut GradSync::Device(Box::new(LocalCollective)), &grad, max_norm);
            assert_eq!(host, device, "max_norm {max_norm}");
            let (clipped, extra, norm) = host;
            assert_eq!(extra, vec![1.5, 0.5]);
            assert!(
                (norm - expected_norm).abs() < 1e-9 * expected_norm,
                "{norm} vs {expected_norm}"
            );
            let clipped_norm = global_norm(&clipped);
            let want = if max_norm == 1.0 { 1.0 } else { expected_norm };
            assert!(
                (clipped_norm - want).abs() < 1e-5 * want,
                "{clipped_norm} vs {want}"
            );
        }
    }
}
