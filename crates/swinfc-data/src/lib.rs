//! swinfc-data: everything between files on disk and host batches ready to upload.
//!
//! Owns: the dataset readers (CUB-200-2011, NABirds, WebFG-496, synthetic), image decoding,
//! augmentation, the distributed sampler (the concatenated per-epoch permutation stream and the
//! evaluation shards), the prefetching loader and `swinfc data check`.
//!
//! Must not: touch the model or any tensor library (batches are `Vec<f32>` CHW host buffers), or
//! the network. All randomness is keyed by (seed, epoch, sample index), never by thread, process
//! or time, so any number of workers and loader threads sees the same data.

pub mod augment;
pub mod check;
pub mod config;
pub mod cub;
pub mod dataset;
pub mod decode;
mod error;
pub mod loader;
pub mod nabirds;
mod rng;
pub mod sampler;
pub mod synthetic;
mod text;
pub mod webfg;

pub use augment::{IMAGENET_MEAN, IMAGENET_STD};
pub use check::{CheckReport, PROBE_TRAIN_IMAGES, Unreadable, check, probe_train};
pub use config::{DataConfig, DatasetKind, SyntheticConfig, WebfgSubset};
pub use dataset::{Dataset, Sample, Source, Split, open_dataset};
pub use error::DataError;
pub use loader::{Batch, BatchRequest, Loader};
pub use sampler::{SampleRef, TrainStream, eval_shard};
