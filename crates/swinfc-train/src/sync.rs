//! Gradient synchronisation: sum the flat gradient (and a few values riding along: the losses,
//! the stop votes) over ranks, average over the global batch's micro-batches and clip by the
//! global norm.
//!
//! CPU workers go through host memory and the [`Collective`] (the TCP ring). GPU workers keep the
//! buffer on the device and sum it in place with NCCL, so a step never copies the gradients to
//! the host; their collective still carries the start-up broadcasts, barriers and evaluation counts.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor, TensorData};
use swinfc_comm::{Collective, CommError, LocalCollective};

use crate::optim::{clip_factor, flat_tensor};

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
                let mut buffer = flat.into_data().to_vec::<f32>().expect("gradients are f32");
                buffer.extend_from_slice(extra);
                comm.all_reduce_sum_f32(&mut buffer)?;
                buffer.iter_mut().for_each(|v| *v *= scale);
                let extra = buffer.split_off(len);
                let norm = buffer.iter().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
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
                let extra = Tensor::from_data(
                    TensorData::new(extra.to_vec(), [extra.len()]),
                    (&device, DType::F32),
                );
                // `cat` gives the fresh dense buffer NCCL reduces in place (burn.md §10).
                let buffer = Tensor::cat(vec![flat, extra], 0);
                all_reduce.all_reduce_sum_in_place(&buffer)?;
                let buffer = buffer.mul_scalar(scale);
                let extra = buffer
                    .clone()
                    .narrow(0, len, buffer.dims()[0] - len)
                    .into_data()
                    .to_vec::<f32>()
                    .expect("the buffer is f32");
                let grad = buffer.narrow(0, 0, len);
                let norm = grad
                    .clone()
                    .powi_scalar(2)
                    .sum()
                    .into_scalar()
                    .elem::<f64>()
                    .sqrt();
                let factor = clip_factor(norm, max_norm);
                let grad = if factor != 1.0 {
                    grad.mul_scalar(factor as f32)
                } else {
                    grad
                };
                Ok(Synced { grad, extra, norm })
            }
        }
    }
}
