//! `swinfc data check`: read the dataset, decode every image in parallel, count per split and
//! class, list what cannot be read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::DataError;
use crate::config::DataConfig;
use crate::dataset::{Dataset, Split, open_dataset};
use crate::decode::load;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub split: Split,
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub dataset: String,
    pub classes: Vec<String>,
    /// Samples per class (index = label), readable or not.
    pub train_per_class: Vec<usize>,
    pub test_per_class: Vec<usize>,
    /// Sorted by split, then path.
    pub unreadable: Vec<Unreadable>,
}

impl CheckReport {
    /// Unreadable test images: any one of them makes the published denominators unreachable.
    pub fn test_unreadable(&self) -> usize {
        self.unreadable.iter().filter(|u| u.split == Split::Test).count()
    }
}

/// Check the dataset of `cfg` with `cfg.num_threads` threads. `progress(done, total)` is called
/// after every image (from any thread), e.g. to drive a progress bar.
pub fn check(cfg: &DataConfig, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<CheckReport, DataError> {
    let ds = open_dataset(cfg)?;
    let count = |split: Split| {
        let mut per = vec![0; ds.classes.len()];
        for s in ds.split(split) {
            per[s.label] += 1;
        }
        per
    };
    let all: Vec<(Split, usize)> = [Split::Train, Split::Test]
        .into_iter()
        .flat_map(|sp| (0..ds.split(sp).len()).map(move |i| (sp, i)))
        .collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cfg.num_threads {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(split, i)) = all.get(k) else { break };
                    let sample = &ds.split(split)[i];
                    if let Err(e) = load(sample) {
                        bad.lock().unwrap_or_else(|p| p.into_inner()).push(Unreadable {
                            split,
                            path: sample.display_path(),
                            reason: e.to_string(),
                        });
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, all.len());
                }
            });
        }
    });
    let mut unreadable = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    unreadable.sort_by(|a, b| (a.split, &a.path).cmp(&(b.split, &b.path)));
    for u in &unreadable {
        tracing::warn!(split = u.split.name(), path = %u.path, reason = %u.reason, "unreadable image");
    }
    Ok(CheckReport {
        dataset: ds.name.clone(),
        train_per_class: count(Split::Train),
        test_per_class: count(Split::Test),
        classes: ds.classes,
        unreadable,
    })
}

/// Train images the pre-training probe decodes.
pub const PROBE_TRAIN_IMAGES: usize = 64;

/// Decodes up to `max` train images spread evenly over the split, in split order, and returns how
/// many it tried and which could not be read. Training skips unreadable images; a run where none
/// of these is readable would train on nothing and is better stopped before it starts.
pub fn probe_train(ds: &Dataset, max: usize) -> (usize, Vec<Unreadable>) {
    let train = ds.split(Split::Train);
    let stride = train.len().div_ceil(max.max(1)).max(1);
    let sampled: Vec<_> = train.iter().step_by(stride).collect();
    let unreadable = sampled
        .iter()
        .filter_map(|sample| {
            load(sample).err().map(|e| Unreadable {
                split: Split::Train,
                path: sample.display_path(),
                reason: e.to_string(),
            })
        })
        .collect();
    (sampled.len(), unreadable)
}
