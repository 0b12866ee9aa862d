//! Signals. The launcher is the only process that acts on SIGTERM, SIGINT and SIGUSR1; a worker
//! turns any such signal that does not come from its launcher into SIGUSR2 to the launcher
//! ("please drain") and keeps training, so a scheduler that signals every process of the job
//! still gets one orderly drain. A signal from the launcher itself means "stop now".

use std::sync::mpsc::{Receiver, channel};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::{Signals, SignalsInfo};
use tracing::warn;

use crate::LaunchError;

/// Signals travel between nodes too, so the enum is the control protocol's.
pub use swinfc_comm::Signal;

/// Starts listening; signals arrive on the receiver instead of killing the launcher.
pub fn listen() -> Result<Receiver<Signal>, LaunchError> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGUSR2])
        .map_err(LaunchError::os("installing signal handlers"))?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("swinfc-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let signal = match s {
                    SIGTERM => Signal::Term,
                    SIGINT => Signal::Int,
                    SIGUSR1 => Signal::Usr1,
                    _ => Signal::WorkerAsked,
                };
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(LaunchError::os("signal thread"))?;
    Ok(rx)
}

/// The worker side (called by `swinfc worker` before training): SIGTERM/SIGINT/SIGUSR1 from the
/// parent launcher exit at once with 143; from anyone else they are passed to the launcher.
pub fn install_worker_policy() -> Result<(), LaunchError> {
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(LaunchError::os("installing signal handlers"))?;
    std::thread::Builder::new()
        .name("swinfc-signals".into())
        .spawn(move || {
            for info in signals.forever() {
                // SAFETY: getppid and kill have no memory-safety preconditions.
                let parent = unsafe { libc::getppid() };
                let sender = info.process.map(|p| p.pid);
                if sender == Some(parent) {
                    std::process::exit(143);
                }
                warn!(
                    signal = info.signal,
                    ?sender,
                    "signal passed to the launcher, which drains the job"
                );
                // SAFETY: as above.
                unsafe { libc::kill(parent, SIGUSR2) };
            }
        })
        .map_err(LaunchError::os("signal thread"))?;
    Ok(())
}
