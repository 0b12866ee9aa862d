//! Gradient synchronisation: sum the flat gradient (and a few values riding along: the losses,
//! the sample counts, the stop votes) over ranks, average over the global batch's micro-batches
//! and clip by the global norm.
//!
//! CPU workers go through host memory and the [`Collective`] (the TCP ring): their runs are
//! bit-identical whatever the number of threads or workers. GPU workers keep everything on the
//! device: the buffers are summed in place (NCCL), the sum of squares is taken there, and one
//! small read brings back the averaged extras and the norm; the clip is a scalar multiply. Their
//! collective still carries the start-up broadcasts, barriers and evaluation counts, and the
//! device check.
//!
//! # The device check
//! A device path that computes wrong numbers must stop the run, not train on them (CUDA runs once
//! did: performance.md §3). With `check`, the device path also runs the host path on copies of
//! the same buffers and compares: the averaged extras, the norm (1e-4 relative: an f32 sum on the
//! device against the host's f64 sum), and the clipped gradient element by element (1e-6, given
//! the device's norm). A disagreement is a [`CheckError`] naming the parameter. The trainer checks
//! its first step, so every run (and every restart) starts with one.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use swinfc_comm::{Collective, CommError, LocalCollective};

use crate::optim::{FlatLayout, flat_tensor};

/// Sums a dense f32 flat tensor over ranks on the device that holds it; the sum may be written
/// into the same buffer (NCCL does), so the caller hands the tensor over.
pub trait DeviceAllReduce<B: Backend> {
    fn all_reduce_sum(&mut self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>, CommError>;
}

/// World size 1: there is nothing to sum.
impl<B: Backend> DeviceAllReduce<B> for LocalCollective {
    fn all_reduce_sum(&mut self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>, CommError> {
        Ok(flat)
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
    fn all_reduce_sum(
        &mut self,
        flat: Tensor<burn::backend::Cuda, 1>,
    ) -> Result<Tensor<burn::backend::Cuda, 1>, CommError> {
        self.comm.all_reduce_sum_tensor(&flat, self.timeout)?;
        Ok(flat)
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

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error(transparent)]
    Check(#[from] CheckError),
}

/// The device path disagreed with the host path on the same values.
#[derive(Debug, thiserror::Error)]
#[error(
    "device check: the device's {stage} differs from the host's at `{parameter}`: {detail}; \
     training stopped rather than train on wrong numbers (`swinfc bench probe` compares the \
     device with the CPU stage by stage)"
)]
pub struct CheckError {
    /// `norm`, `averaged losses` or `clipped gradient`.
    pub stage: &'static str,
    /// The parameter (PyTorch name) where the values part; `-` when none is to blame.
    pub parameter: String,
    pub detail: String,
}

/// Relative tolerance of the device's norm against the host's f64 norm.
pub const NORM_TOLERANCE: f64 = 1e-4;
/// Relative tolerance of each clipped gradient element, given the device's norm.
pub const ELEMENT_TOLERANCE: f64 = 1e-6;

impl<B: Backend> GradSync<B> {
    /// Sums `flat` (this rank's f32 gradient, summed over its micro-batches) and `extra` over
    /// ranks, divides both by `micro_batches` (all ranks' micro-batches of the step) and clips
    /// the gradient to `max_norm` (0: no clipping). Every rank gets the same result. With
    /// `check` (the parameters' layout), the device path is compared with the host path (module
    /// documentation); every rank must pass the same `check`.
    pub fn average(
        &mut self,
        flat: Tensor<B, 1>,
        extra: Tensor<B, 1>,
        micro_batches: usize,
        max_norm: f64,
        comm: &mut dyn Collective,
        check: Option<&FlatLayout>,
    ) -> Result<Synced<B>, SyncError> {
        let device = flat.device();
        match self {
            GradSync::Host => {
                let host = host_average(host_f32(flat), host_f32(extra), micro_batches, max_norm, comm)?;
                Ok(Synced {
                    grad: flat_tensor(host.grad, &device),
                    extra: host.extra,
                    norm: host.norm,
                })
            }
            GradSync::Device(all_reduce) => {
                let reference = match check {
                    Some(layout) => {
                        let host = host_f32(flat.clone());
                        let extra = host_f32(extra.clone());
                        Some((layout, host_average(host, extra, micro_batches, 0.0, comm)?))
                    }
                    None => None,
                };
                let synced = device_average(all_reduce.as_mut(), flat, extra, micro_batches, max_norm)?;
                if let Some((layout, reference)) = reference {
                    compare(&synced, &reference, max_norm, layout)?;
                }
                Ok(synced)
            }
        }
    }
}

/// The host path, as CPU workers take it: one all-reduce of the gradient with the extras at its
/// end, the average, the f64 norm, the clip.
fn host_average(
    mut buffer: Vec<f32>,
    extra: Vec<f32>,
    micro_batches: usize,
    max_norm: f64,
    comm: &mut dyn Collective,
) -> Result<Averaged, CommError> {
    let len = buffer.len();
    let scale = 1.0 / micro_batches as f32;
    buffer.extend_from_slice(&extra);
    comm.all_reduce_sum_f32(&mut buffer)?;
    buffer.iter_mut().for_each(|v| *v *= scale);
    let extra = buffer.split_off(len);
    let norm = global_norm(&buffer);
    let factor = clip_factor(norm, max_norm) as f32;
    if factor != 1.0 {
        buffer.iter_mut().for_each(|g| *g *= factor);
    }
    Ok(Averaged {
        grad: buffer,
        extra,
        norm,
    })
}

/// [`Synced`] on the host.
struct Averaged {
    grad: Vec<f32>,
    extra: Vec<f32>,
    norm: f64,
}

/// The device path: both buffers summed in place, the sum of squares on the device, and one
/// read of the averaged extras and that sum; the clip factor is then a scalar.
fn device_average<B: Backend>(
    all_reduce: &mut dyn DeviceAllReduce<B>,
    flat: Tensor<B, 1>,
    extra: Tensor<B, 1>,
    micro_batches: usize,
    max_norm: f64,
) -> Result<Synced<B>, CommError> {
    let scale = 1.0 / micro_batches as f32;
    // Both are this step's own dense buffers (a `cat`, or a sum), so NCCL may write them in place.
    let flat = all_reduce.all_reduce_sum(flat)?;
    let extra = all_reduce.all_reduce_sum(extra)?;
    let grad = flat.mul_scalar(scale);
    let sum_of_squares = grad.clone().powi_scalar(2).sum();
    let mut read = host_f32(Tensor::cat(vec![extra.mul_scalar(scale), sum_of_squares], 0));
    let norm = read.pop().map_or(f64::NAN, |s| f64::from(s).sqrt());
    let factor = clip_factor(norm, max_norm) as f32;
    let grad = if factor != 1.0 {
        grad.mul_scalar(factor)
    } else {
        grad
    };
    Ok(Synced {
        grad,
        extra: read,
        norm,
    })
}

/// The device's result against the host's `reference` (averaged, not clipped) on the same values.
fn compare<B: Backend>(
    device: &Synced<B>,
    reference: &Averaged,
    max_norm: f64,
    layout: &FlatLayout,
) -> Result<(), CheckError> {
    let mismatch = |stage, parameter: &str, detail: String| CheckError {
        stage,
        parameter: parameter.to_string(),
        detail,
    };
    for (i, (d, h)) in device.extra.iter().zip(&reference.extra).enumerate() {
        let both_nan = d.is_nan() && h.is_nan();
        if !both_nan && (d - h).abs() > 1e-5 * h.abs().max(1.0) {
            return Err(mismatch(
                "averaged losses",
                "-",
                format!("value {i}: {d} against {h}"),
            ));
        }
    }
    // A non-finite gradient skips the step whichever path computed it; only the verdict must agree.
    if !reference.norm.is_finite() {
        return match device.norm.is_finite() {
            true => Err(mismatch(
                "norm",
                "-",
                format!("{} where the host's is not finite", device.norm),
            )),
            false => Ok(()),
        };
    }
    let grad = host_f32(device.grad.clone());
    // The device clipped with the factor of its own norm; the host reference takes the same one.
    let factor = clip_factor(device.norm, max_norm);
    if (device.norm - reference.norm).abs() > NORM_TOLERANCE * reference.norm {
        // The parameter whose share of the sum of squares moved the most is the suspect.
        let worst = layout
            .slots
            .iter()
            .map(|slot| {
                let range = slot.offset..slot.offset + slot.numel;
                let host: f64 = reference.grad[range.clone()]
                    .iter()
                    .map(|g| f64::from(*g).powi(2))
                    .sum();
                let dev: f64 = grad[range].iter().map(|g| (f64::from(*g) / factor).powi(2)).sum();
                (slot, (dev - host).abs(), dev.sqrt(), host.sqrt())
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let (name, detail) = match worst {
            Some((slot, _, dev, host)) => (
                slot.name.as_str(),
                format!(
                    "norm {:.6e} against {:.6e}; this parameter's norm {dev:.6e} against {host:.6e}",
                    device.norm, reference.norm
                ),
            ),
            None => (
                "-",
                format!("norm {:.6e} against {:.6e}", device.norm, reference.norm),
            ),
        };
        return Err(mismatch("norm", name, detail));
    }
    let factor = factor as f32;
    let rms = reference.norm / (grad.len().max(1) as f64).sqrt();
    for (i, (d, h)) in grad.iter().zip(&reference.grad).enumerate() {
        let want = h * factor;
        if f64::from((d - want).abs()) > ELEMENT_TOLERANCE * (f64::from(want.abs()) + rms) {
            let slot = layout
                .slots
                .iter()
                .find(|s| (s.offset..s.offset + s.numel).contains(&i));
            let (name, index) = slot.map_or(("-", i), |s| (s.name.as_str(), i - s.offset));
            return Err(mismatch(
                "clipped gradient",
                name,
                format!("element {index}: {d:e} against {want:e}"),
            ));
        }
    }
    Ok(())
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
    use burn::module::ParamId;
    use swinfc_model::ParamGroup;

    use super::*;
    use crate::optim::ParamSlot;

    /// Three parameters of 400, 500 and 100 values.
    fn layout() -> FlatLayout {
        let mut offset = 0;
        let slots = [("a.weight", 400), ("b.weight", 500), ("c.bias", 100)]
            .map(|(name, numel)| {
                let slot = ParamSlot {
                    id: ParamId::new(),
                    name: name.to_string(),
                    offset,
                    numel,
                    group: ParamGroup::New,
                };
                offset += numel;
                slot
            })
            .to_vec();
        FlatLayout { slots, len: offset }
    }

    fn gradient() -> Vec<f32> {
        (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect()
    }

    fn average(
        sync: &mut GradSync<Flex>,
        grad: &[f32],
        max_norm: f64,
        check: bool,
    ) -> Result<(Vec<f32>, Vec<f32>, f64), SyncError> {
        let flat = flat_tensor(grad.to_vec(), &FlexDevice);
        let extra = flat_tensor(vec![3.0, 1.0], &FlexDevice);
        let layout = layout();
        let synced = sync.average(
            flat,
            extra,
            2,
            max_norm,
            &mut LocalCollective,
            check.then_some(&layout),
        )?;
        Ok((host_f32(synced.grad), synced.extra, synced.norm))
    }

    /// The device path (norm on the device, in f32) agrees with the host path CPU workers take
    /// within the check's tolerances, clipped or not, and passes its own check.
    #[test]
    fn device_and_host_paths_average_and_clip_alike() {
        let grad = gradient();
        let expected_norm = grad
            .iter()
            .map(|g| f64::from(g / 2.0).powi(2))
            .sum::<f64>()
            .sqrt();
        for max_norm in [0.0, 1.0, 1e9] {
            let (host, host_extra, host_norm) = average(&mut GradSync::Host, &grad, max_norm, false).unwrap();
            let (device, device_extra, device_norm) = average(
                &mut GradSync::Device(Box::new(LocalCollective)),
                &grad,
                max_norm,
                true,
            )
            .unwrap();
            assert_eq!(host_extra, vec![1.5, 0.5]);
            assert_eq!(device_extra, host_extra);
            assert!(
                (host_norm - expected_norm).abs() < 1e-9 * expected_norm,
                "{host_norm} vs {expected_norm}"
            );
            assert!(
                (device_norm - host_norm).abs() < NORM_TOLERANCE * host_norm,
                "{device_norm} vs {host_norm}"
            );
            for (d, h) in device.iter().zip(&host) {
                assert!((d - h).abs() <= 1e-4 * h.abs() + 1e-7, "{d} vs {h}");
            }
            let clipped_norm = global_norm(&device);
            let want = if max_norm == 1.0 { 1.0 } else { expected_norm };
            assert!(
                (clipped_norm - want).abs() < 1e-4 * want,
                "{clipped_norm} vs {want}"
            );
        }
    }

    /// Sums in place like NCCL, then breaks one parameter's values the way CUDA runs once did:
    /// each non-zero element became its sign.
    struct SignsAt(std::ops::Range<usize>);

    impl DeviceAllReduce<Flex> for SignsAt {
        fn all_reduce_sum(&mut self, flat: Tensor<Flex, 1>) -> Result<Tensor<Flex, 1>, CommError> {
            if flat.dims()[0] < self.0.end {
                return Ok(flat); // the extras
            }
            let part = flat.clone().narrow(0, self.0.start, self.0.len());
            Ok(flat.slice_assign([self.0.clone()], part.sign()))
        }
    }

    #[test]
    fn a_device_path_with_wrong_values_stops_naming_the_parameter() {
        let grad = gradient();
        let mut sync = GradSync::Device(Box::new(SignsAt(450..460)));
        let Err(SyncError::Check(e)) = average(&mut sync, &grad, 0.0, true) else {
            panic!("the check must fail");
        };
        assert_eq!((e.stage, e.parameter.as_str()), ("norm", "b.weight"), "{e}");
        assert!(e.to_string().contains("device check"), "{e}");
    }

    /// Sums like NCCL, then swaps two values: the norm is intact, the elements are not.
    struct Swap(usize, usize);

    impl DeviceAllReduce<Flex> for Swap {
        fn all_reduce_sum(&mut self, flat: Tensor<Flex, 1>) -> Result<Tensor<Flex, 1>, CommError> {
            let mut values = host_f32(flat);
            if values.len() > self.1 {
                values.swap(self.0, self.1);
            }
            Ok(flat_tensor(values, &FlexDevice))
        }
    }

    #[test]
    fn misplaced_values_with_the_right_norm_are_caught_element_by_element() {
        let grad = gradient();
        let mut sync = GradSync::Device(Box::new(Swap(410, 990)));
        let Err(SyncError::Check(e)) = average(&mut sync, &grad, 1.0, true) else {
            panic!("the check must fail");
        };
        assert_eq!(
            (e.stage, e.parameter.as_str()),
            ("clipped gradient", "b.weight"),
            "{e}"
        );
        assert!(e.detail.starts_with("element 10:"), "{e}");
        // Unchecked, the same fault goes through: the check is what stops it.
        assert!(average(&mut sync, &grad, 1.0, false).is_ok());
    }
}
