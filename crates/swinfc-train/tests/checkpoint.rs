//! Checkpoints on a real file system: atomic publication, verification, fallback past torn or
//! tampered checkpoints, retention, and a disk that fails mid-save.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use swinfc_train::checkpoint::*;

fn data(step: u64, accuracy: Option<f64>) -> CheckpointData {
    CheckpointData {
        state: TrainState {
            step,
            epoch: 0,
            stream_position: step * 8,
            seed: 1,
            config_hash: "abc".into(),
            world_size: 2,
            micro_batch: 4,
            global_batch: 8,
            accuracy,
            best_accuracy: accuracy,
            nonfinite_streak: 0,
        },
        files: vec![
            ("model.safetensors".into(), vec![step as u8; 1000]),
            ("optimizer.safetensors".into(), vec![7; 500]),
        ],
    }
}

#[test]
fn written_checkpoints_verify_and_latest_points_at_the_newest() {
    let root = tempfile::tempdir().unwrap();
    for step in [3, 6] {
        write_checkpoint(root.path(), &data(step, None), &Disk).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(root.path().join("latest")).unwrap(),
        "step-00000006"
    );
    let (dir, state) = latest_valid(root.path()).unwrap();
    assert_eq!(dir, root.path().join("step-00000006"));
    assert_eq!(state, data(6, None).state);
    assert!(
        !std::fs::read_dir(root.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp"))
    );
}

fn corrupt(root: &Path, how: &str) {
    let dir = root.join("step-00000006");
    match how {
        "truncate" => std::fs::write(dir.join("model.safetensors"), [6u8; 10]).unwrap(),
        "tamper" => std::fs::write(dir.join("model.safetensors"), [9u8; 1000]).unwrap(),
        "no-manifest" => std::fs::remove_file(dir.join("MANIFEST.json")).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn resume_falls_back_past_torn_or_tampered_checkpoints() {
    for how in ["truncate", "tamper", "no-manifest"] {
        let root = tempfile::tempdir().unwrap();
        write_checkpoint(root.path(), &data(3, None), &Disk).unwrap();
        write_checkpoint(root.path(), &data(6, None), &Disk).unwrap();
        corrupt(root.path(), how);
        assert!(verify(&root.path().join("step-00000006")).is_err(), "{how}");
        let (_, state) = latest_valid(root.path()).unwrap();
        assert_eq!(state.step, 3, "{how}");
    }
}

/// Fails with "no space left" once `budget` bytes have been written.
struct FullDisk {
    budget: AtomicU64,
}

impl Storage for FullDisk {
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let left = self.budget.load(Ordering::SeqCst);
        if (bytes.len() as u64) > left {
            std::fs::write(path, &bytes[..left as usize])?;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.budget.fetch_sub(bytes.len() as u64, Ordering::SeqCst);
        Disk.write(path, bytes)
    }
}

#[test]
fn a_full_disk_leaves_the_previous_checkpoint_intact() {
    let root = tempfile::tempdir().unwrap();
    write_checkpoint(root.path(), &data(3, None), &Disk).unwrap();
    let disk = FullDisk {
        budget: AtomicU64::new(1200),
    };
    let err = write_checkpoint(root.path(), &data(6, None), &disk).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(!root.path().join("step-00000006").exists());
    assert_eq!(
        std::fs::read_to_string(root.path().join("latest")).unwrap(),
        "step-00000003"
    );
    assert_eq!(latest_valid(root.path()).unwrap().1.step, 3);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}"); // step-00000003 and latest
}

#[test]
fn retention_keeps_the_last_ones_and_the_best() {
    let root = tempfile::tempdir().unwrap();
    let accuracies = [Some(0.5), Some(0.9), None, Some(0.7), None];
    for (i, acc) in accuracies.into_iter().enumerate() {
        write_checkpoint(root.path(), &data(i as u64 + 1, acc), &Disk).unwrap();
    }
    apply_retention(root.path(), 2, true).unwrap();
    let mut left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect();
    left.sort();
    assert_eq!(left, ["step-00000002", "step-00000004", "step-00000005"]);
}

#[test]
fn background_writer_reports_each_save() {
    let root = tempfile::tempdir().unwrap();
    let writer = CheckpointWriter::new(root.path().to_path_buf(), 1, false, Box::new(Disk));
    writer.submit(data(1, None), SaveReason::Periodic, Instant::now());
    writer.submit(data(2, None), SaveReason::Final, Instant::now());
    let results = writer.flush();
    assert_eq!(results.len(), 2);
    let saved: Vec<Saved> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        saved.iter().map(|s| s.reason).collect::<Vec<_>>(),
        [SaveReason::Periodic, SaveReason::Final]
    );
    for s in &saved {
        assert_eq!(s.bytes, 1500);
        assert!(s.write_seconds > 0.0 && s.total_seconds >= s.write_seconds + s.blocking_seconds);
    }
    assert!(!root.path().join("step-00000001").exists(), "retention ran");
    assert_eq!(latest_valid(root.path()).unwrap().1.step, 2);
}
