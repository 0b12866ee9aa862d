//! Slurm requeue: under Slurm, SIGUSR1 means the time limit is near; once drained, the job is put
//! back in the queue so it resumes from the checkpoint it just wrote.

use std::process::Command;

/// `scontrol requeue JOB`. The error says why not, with scontrol's own message (a job submitted
/// with `--no-requeue`: "Requested operation is presently disabled for job 7").
pub fn requeue(job: &str) -> Result<(), String> {
    run("scontrol", job)
}

fn run(program: &str, job: &str) -> Result<(), String> {
    match Command::new(program).args(["requeue", job]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.trim();
            let failed = format!("`{program} requeue {job}` failed ({})", out.status);
            Err(if said.is_empty() {
                failed
            } else {
                format!("{failed}: {said}")
            })
        }
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_status_decides_and_its_message_is_kept() {
        assert_eq!(run("true", "123"), Ok(()));
        assert_eq!(
            run("false", "123").unwrap_err(),
            "`false requeue 123` failed (exit status: 1)"
        );
        // `ls requeue 123` fails on the missing files and says so on stderr.
        let e = run("ls", "123").unwrap_err();
        assert!(e.starts_with("`ls requeue 123` failed (exit status: 2): "), "{e}");
        assert!(e.contains("'requeue'"), "stderr kept: {e}");
        assert!(
            run("/nonexistent/scontrol", "123")
                .unwrap_err()
                .contains("cannot run")
        );
    }
}
