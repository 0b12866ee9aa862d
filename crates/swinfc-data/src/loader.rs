//! The prefetching loader: `num_threads` decode/augment threads fill a bounded window of ready
//! batches that the consumer takes strictly in request order.
//!
//! Threads claim requests in order under one lock, build their batch unlocked, and park the
//! result in a reorder buffer keyed by request number. A thread may claim request `k` only while
//! `k < consumed + prefetch`, so at most `prefetch` batches are built or waiting ahead of the
//! consumer (back-pressure). Dropping the loader stops the threads after their current batch.
//! Because every sample's randomness is keyed by (seed, epoch, index), which thread builds a
//! batch never changes its bytes.

use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::DataError;
use crate::augment::Pipeline;
use crate::config::DataConfig;
use crate::dataset::{Dataset, Split};
use crate::decode::{DecodeKind, load};
use crate::sampler::SampleRef;

/// A batch to produce: train samples (augmented) or test indices (resize + centre crop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchRequest {
    Train(Vec<SampleRef>),
    Test(Vec<usize>),
}

/// A ready batch in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[n, 3, crop, crop]`, CHW per image, ImageNet-normalised.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// `[n, 3, crop, crop]`; `n` is smaller than requested when train images were skipped (it
    /// can be 0).
    pub shape: [usize; 4],
    /// Train samples left out of this batch: (path, reason).
    pub skipped: Vec<(String, String)>,
    /// Split indices of the images in the batch, in order (train or test split as requested).
    pub indices: Vec<usize>,
    /// Position of the request in the request sequence, from 0.
    pub seq: u64,
}

struct State {
    requests: Box<dyn Iterator<Item = BatchRequest> + Send>,
    /// Requests claimed so far (= the number of the next one).
    claimed: u64,
    exhausted: bool,
    /// Number of the next batch the consumer takes.
    consumed: u64,
    ready: BTreeMap<u64, Result<Batch, DataError>>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a batch lands or the requests run out.
    landed: Condvar,
    /// Signalled when the consumer frees a slot or on shutdown.
    space: Condvar,
    prefetch: u64,
    skips: Mutex<Skips>,
}

/// Skipped train files: counted by reason, each path logged once.
#[derive(Default)]
struct Skips {
    logged: HashSet<String>,
    by_reason: BTreeMap<DecodeKind, u64>,
}

pub struct Loader {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    wait_seconds: f64,
}

/// A poisoned lock only means another thread panicked mid-update; our state stays consistent
/// (each update is a single insert or counter bump), so carry on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Loader {
    pub fn new(
        dataset: Arc<Dataset>,
        cfg: &DataConfig,
        seed: u64,
        requests: impl Iterator<Item = BatchRequest> + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: Box::new(requests),
                claimed: 0,
                exhausted: false,
                consumed: 0,
                ready: BTreeMap::new(),
                shutdown: false,
            }),
            landed: Condvar::new(),
            space: Condvar::new(),
            prefetch: cfg.prefetch as u64,
            skips: Mutex::new(Skips::default()),
        });
        let pipeline = Arc::new(Pipeline::new(cfg));
        let threads = (0..cfg.num_threads)
            .map(|t| {
                let (shared, dataset, pipeline) = (shared.clone(), dataset.clone(), pipeline.clone());
                std::thread::Builder::new()
                    .name(format!("swinfc-data-{t}"))
                    .spawn(move || work(&shared, &dataset, &pipeline, seed))
                    .expect("spawning a loader thread")
            })
            .collect();
        Loader {
            shared,
            threads,
            wait_seconds: 0.0,
        }
    }

    /// The next batch in request order; blocks until it is ready. `None` once every request has
    /// been delivered. `Err` for a test image that cannot be decoded (naming the file).
    #[allow(clippy::should_implement_trait)] // blocking and fallible: not an ordinary iterator
    pub fn next(&mut self) -> Option<Result<Batch, DataError>> {
        let start = Instant::now();
        let mut st = lock(&self.shared.state);
        let out = loop {
            let want = st.consumed;
            if let Some(b) = st.ready.remove(&want) {
                st.consumed += 1;
                self.shared.space.notify_all();
                break Some(b);
            }
            if st.exhausted && st.claimed == want {
                break None;
            }
            st = self.shared.landed.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        drop(st);
        self.wait_seconds += start.elapsed().as_secs_f64();
        out
    }

    /// Total time `next()` has spent blocked (the `data_wait` metric).
    pub fn wait_seconds(&self) -> f64 {
        self.wait_seconds
    }

    /// Train files skipped so far, by kind of failure.
    pub fn skip_counts(&self) -> BTreeMap<DecodeKind, u64> {
        lock(&self.shared.skips).by_reason.clone()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.space.notify_all();
        self.shared.landed.notify_all();
        for t in self.threads.drain(..) {
            // A panicked thread already turned its batch into an error; nothing left to report.
            let _ = t.join();
        }
    }
}

fn work(shared: &Shared, dataset: &Dataset, pipeline: &Pipeline, seed: u64) {
    loop {
        let (seq, request) = {
            let mut st = lock(&shared.state);
            loop {
                if st.shutdown || st.exhausted {
                    return;
                }
                if st.claimed < st.consumed + shared.prefetch {
                    // A panicking request iterator (say, a bad rank) must reach the consumer as
                    // an error in its place, not leave it waiting for a batch that never comes.
                    match catch_unwind(AssertUnwindSafe(|| st.requests.next())) {
                        Ok(Some(r)) => {
                            st.claimed += 1;
                            break (st.claimed - 1, r);
                        }
                        Ok(None) => {
                            st.exhausted = true;
                            shared.landed.notify_all();
                            return;
                        }
                        Err(_) => {
                            let seq = st.claimed;
                            let msg = format!("batch {seq}: the request iterator panicked");
                            st.ready.insert(seq, Err(DataError::Internal(msg)));
                            st.claimed += 1;
                            st.exhausted = true;
                            shared.landed.notify_all();
                            return;
                        }
                    }
                }
                st = shared.space.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            build(shared, dataset, pipeline, seed, seq, &request)
        }))
        .unwrap_or_else(|_| {
            Err(DataError::Internal(format!(
                "batch {seq}: loader thread panicked"
            )))
        });
        lock(&shared.state).ready.insert(seq, result);
        shared.landed.notify_all();
    }
}

fn build(
    shared: &Shared,
    dataset: &Dataset,
    pipeline: &Pipeline,
    seed: u64,
    seq: u64,
    request: &BatchRequest,
) -> Result<Batch, DataError> {
    let (split, items): (Split, Vec<(usize, u64)>) = match request {
        BatchRequest::Train(refs) => (Split::Train, refs.iter().map(|r| (r.index, r.epoch)).collect()),
        BatchRequest::Test(idx) => (Split::Test, idx.iter().map(|&i| (i, 0)).collect()),
    };
    let samples = dataset.split(split);
    let len = pipeline.image_len();
    let mut images = Vec::with_capacity(items.len() * len);
    let mut labels = Vec::with_capacity(items.len());
    let mut indices = Vec::with_capacity(items.len());
    let mut skipped = Vec::new();
    for (index, epoch) in items {
        let sample = samples.get(index).ok_or_else(|| {
            DataError::Internal(format!(
                "{} index {index} out of range (split has {})",
                split.name(),
                samples.len()
            ))
        })?;
        let img = match load(sample) {
            Ok(img) => img,
            Err(e) if split == Split::Train => {
                let path = sample.display_path();
                let mut skips = lock(&shared.skips);
                *skips.by_reason.entry(e.kind).or_default() += 1;
                if skips.logged.insert(path.clone()) {
                    tracing::warn!(path = %path, reason = %e, "skipping undecodable train image");
                }
                skipped.push((path, e.to_string()));
                continue;
            }
            Err(e) => {
                return Err(DataError::Decode {
                    path: sample.display_path(),
                    reason: e.to_string(),
                });
            }
        };
        let start = images.len();
        images.resize(start + len, 0.0);
        match split {
            Split::Train => {
                let params = pipeline.train_params(seed, epoch, index);
                pipeline.train(&img, &params, &mut images[start..]);
            }
            Split::Test => pipeline.test(&img, &mut images[start..]),
        }
        labels.push(sample.label as i64);
        indices.push(index);
    }
    let c = pipeline.crop();
    Ok(Batch {
        shape: [labels.len(), 3, c, c],
        images,
        labels,
        skipped,
        indices,
        seq,
    })
}
