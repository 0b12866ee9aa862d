//! Slurm requeue: under Slurm, SIGUSR1 means the time limit is near; once drained, the job is put
//! back in the queue so it resumes from the checkpoint it just wrote.

use std::process::Command;

use tracing::{error, info};

/// `scontrol requeue JOB`; a failure is logged (the checkpoint stands, a person can requeue).
pub fn requeue(job: &str) {
    match run("scontrol", job) {
        Ok(()) => info!(job, "requeued"),
        Err(e) => error!(job, error = %e, "scontrol requeue failed"),
    }
}

fn run(program: &str, job: &str) -> Result<(), String> {
    match Command::new(program).args(["requeue", job]).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{program} exited with {s}")),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_status_decides() {
        assert_eq!(run("true", "123"), Ok(()));
        assert!(run("false", "123").unwrap_err().contains("exited with"));
        assert!(
            run("/nonexistent/scontrol", "123")
                .unwrap_err()
                .contains("cannot run")
        );
    }
}
