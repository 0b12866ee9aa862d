//! Process entry points: a worker of a launched job (identity from the environment, the control
//! server and the TCP ring), or a lone local process. Both pick the backend at run time: CUDA
//! when built with it and a GPU is visible, else Flex on the CPU. On CUDA a launched worker sums
//! its gradients with NCCL on the device (or through the host with `train.gradient_sum: host`),
//! and `train.precision: bf16` computes in bf16 there.

use std::time::Duration;

use burn::backend::{Autodiff, Flex, flex::FlexDevice};
use swinfc_comm::{Collective, ControlClient, LocalCollective, TcpRing, WorkerIdentity};
use swinfc_config::ConfigError;
use swinfc_metrics::record::Record;
use tracing::info;

use crate::config::{Precision, TrainConfig};
use crate::sync::GradSync;
use crate::trainer::{Link, Resume, RunSummary, TrainError, train};

/// How long rendezvous and each collective may take before the worker gives up.
const COMM_TIMEOUT: Duration = Duration::from_secs(300);

/// `swinfc worker`: joins the job the launcher described in `SWINFC_*` and trains.
pub fn run_worker(cfg: &TrainConfig, resume: &Resume) -> Result<RunSummary, TrainError> {
    let identity = WorkerIdentity::from_env()?;
    let mut control = ControlClient::connect(&identity, COMM_TIMEOUT)?;
    let mut ring = TcpRing::connect(&mut control, COMM_TIMEOUT)?;
    info!(
        rank = identity.rank,
        world = identity.world_size,
        round = identity.restart_round,
        "joined"
    );
    on_backend(cfg, resume, &mut ring, Link::Launcher(&mut control))
}

/// `swinfc train`: world size 1 in this process, no launcher; `observe` sees every record (each
/// step, eval and finished save) as it happens.
pub fn run_local(
    cfg: &TrainConfig,
    resume: &Resume,
    observe: &mut dyn FnMut(&Record),
) -> Result<RunSummary, TrainError> {
    on_backend(cfg, resume, &mut LocalCollective, Link::Local(observe))
}

fn on_backend(
    cfg: &TrainConfig,
    resume: &Resume,
    comm: &mut dyn Collective,
    link: Link,
) -> Result<RunSummary, TrainError> {
    #[cfg(feature = "cuda")]
    if swinfc_model::backend::cuda_device_count() > 0 {
        return on_cuda(cfg, resume, comm, link);
    }
    if cfg.train.precision != Precision::Fp32 {
        return Err(ConfigError::new(
            "train.precision",
            "bf16 needs the CUDA backend (a build with the `cuda` feature and a visible GPU); \
             this worker runs on the CPU (Flex), which trains in fp32 only",
        )
        .into());
    }
    info!("backend: cpu (flex), precision fp32, gradients summed on the host");
    train::<Autodiff<Flex>>(cfg, resume, comm, link, GradSync::Host, &FlexDevice)
}

/// GPU 0 (the launcher gives each worker its own through `CUDA_VISIBLE_DEVICES`).
#[cfg(feature = "cuda")]
fn on_cuda(
    cfg: &TrainConfig,
    resume: &Resume,
    comm: &mut dyn Collective,
    mut link: Link,
) -> Result<RunSummary, TrainError> {
    use burn::backend::Cuda;

    use crate::config::GradientSum;
    use crate::sync::NcclAllReduce;

    let device = cuda_device(cfg.train.precision)?;
    let (grad_sync, gradients) = match (cfg.train.gradient_sum, link.launcher()) {
        (GradientSum::Host, _) => (GradSync::Host, "host (tcp ring)"),
        (GradientSum::Device, Some(control)) => {
            let comm = swinfc_comm::nccl::NcclComm::connect(control, 0, COMM_TIMEOUT)?;
            let nccl = NcclAllReduce {
                comm,
                timeout: COMM_TIMEOUT,
            };
            (GradSync::Device(Box::new(nccl)), "nccl")
        }
        (GradientSum::Device, None) => (GradSync::Device(Box::new(LocalCollective)), "local"),
    };
    info!(precision = ?cfg.train.precision, gradients, "backend: cuda");
    train::<Autodiff<Cuda>>(cfg, resume, comm, link, grad_sync, &device)
}

/// GPU 0, set up for `precision`. Call it before any tensor exists on the GPU.
#[cfg(feature = "cuda")]
pub fn cuda_device(precision: Precision) -> Result<burn::backend::cuda::CudaDevice, ConfigError> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    use burn::tensor::{FloatDType, IntDType, set_default_dtypes};

    let device = CudaDevice::new(0);
    if precision == Precision::Bf16 {
        // Before the first tensor on the device: inputs, masks and the compute copy of the model
        // are then bf16, while the master weights, gradients and momentum stay f32 (they are
        // created as f32 explicitly).
        set_default_dtypes::<Cuda>(&device, FloatDType::BF16, IntDType::I32)
            .map_err(|e| ConfigError::new("train.precision", format!("bf16 on this GPU: {e:?}")))?;
    }
    Ok(device)
}
