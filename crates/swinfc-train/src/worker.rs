//! Process entry points: a worker of a launched job (identity from the environment, the control
//! server and the TCP ring), or a lone local process. Both pick the backend at run time: CUDA
//! when built with it and a GPU is visible, else Flex on the CPU.

use std::time::Duration;

use burn::backend::{Autodiff, Flex, flex::FlexDevice};
use swinfc_comm::{Collective, ControlClient, LocalCollective, TcpRing, WorkerIdentity};
use tracing::info;

use crate::config::TrainConfig;
use crate::trainer::{Resume, RunSummary, TrainError, train};

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
    on_backend(cfg, resume, &mut ring, Some(&mut control))
}

/// `swinfc train`: world size 1 in this process, no launcher.
pub fn run_local(cfg: &TrainConfig, resume: &Resume) -> Result<RunSummary, TrainError> {
    on_backend(cfg, resume, &mut LocalCollective, None)
}

fn on_backend(
    cfg: &TrainConfig,
    resume: &Resume,
    comm: &mut dyn Collective,
    control: Option<&mut ControlClient>,
) -> Result<RunSummary, TrainError> {
    #[cfg(feature = "cuda")]
    if swinfc_model::backend::cuda_device_count() > 0 {
        use burn::backend::{Cuda, cuda::CudaDevice};
        info!("backend: cuda");
        return train::<Autodiff<Cuda>>(cfg, resume, comm, control, &CudaDevice::new(0));
    }
    info!("backend: cpu (flex)");
    train::<Autodiff<Flex>>(cfg, resume, comm, control, &FlexDevice)
}

impl std::str::FromStr for Resume {
    type Err = String;

    /// `auto`, `none` or a checkpoint directory.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Resume::Auto,
            "none" => Resume::None,
            path => Resume::Path(path.into()),
        })
    }
}
