//! What every reader produces: samples (where the pixels come from, label) per split, and the
//! class names. `open_dataset` picks the reader named by the config.

use std::path::PathBuf;

use crate::config::{DataConfig, DatasetKind};
use crate::synthetic::SynthKey;
use crate::{DataError, cub, nabirds, synthetic, webfg};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Where a sample's pixels come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File(PathBuf),
    /// Generated on demand, deterministically, by [`crate::synthetic`].
    Synthetic(SynthKey),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The dataset's own id: the image id of CUB/NABirds, the path under the split for WebFG.
    pub id: String,
    pub source: Source,
    /// 0-based class index into [`Dataset::classes`].
    pub label: usize,
}

impl Sample {
    /// The file path, or a readable name for a generated image; used in errors and reports.
    pub fn display_path(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Synthetic(_) => format!("synthetic:{}", self.id),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// e.g. "cub", "webfg/web-bird", "synthetic"; for logs and reports.
    pub name: String,
    pub train: Vec<Sample>,
    pub test: Vec<Sample>,
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn split(&self, split: Split) -> &[Sample] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

/// Read the dataset the config names. Metadata errors name the file and line.
pub fn open_dataset(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let root = || {
        cfg.root
            .as_deref()
            .ok_or_else(|| DataError::config("data.root", "missing"))
    };
    let ds = match cfg.dataset {
        DatasetKind::Cub => cub::read(root()?)?,
        DatasetKind::Nabirds => nabirds::read(root()?)?,
        DatasetKind::Webfg => {
            let subset = cfg
                .subset
                .ok_or_else(|| DataError::config("data.subset", "missing"))?;
            webfg::read(root()?, subset)?
        }
        DatasetKind::Synthetic => {
            let s = cfg
                .synthetic
                .as_ref()
                .ok_or_else(|| DataError::config("data", "synthetic parameters missing"))?;
            synthetic::dataset(s)
        }
    };
    if ds.train.is_empty() {
        // Nothing to train on is always a layout mistake (wrong root or subset), never a
        // fixture choice; catching it here keeps the sampler's non-empty contract.
        let place = cfg.root.clone().unwrap_or_default();
        return Err(DataError::layout(
            &place,
            format!("{}: the train split is empty", ds.name),
        ));
    }
    tracing::info!(
        dataset = %ds.name,
        train = ds.train.len(),
        test = ds.test.len(),
        classes = ds.classes.len(),
        "dataset opened"
    );
    Ok(ds)
}

/// Warn (not fail: fixtures are small) when a real dataset's well-known counts differ.
pub(crate) fn warn_if_counts_differ(name: &str, what: &str, got: usize, expected: usize) {
    if got != expected {
        tracing::warn!(
            dataset = name,
            what,
            got,
            expected,
            "count differs from the official dataset (fine for fixtures)"
        );
    }
}
