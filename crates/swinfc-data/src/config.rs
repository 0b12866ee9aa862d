//! The `data:` section of a run config, parsed by hand so that every error names its dotted key.

use std::path::PathBuf;

use serde_yaml::Value;
use swinfc_config::{ConfigError, Section};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Cub,
    Nabirds,
    Webfg,
    Synthetic,
}

/// The three WebFG-496 sub-datasets; each is trained and reported on its own (datasets.md §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebfgSubset {
    WebBird,
    WebCar,
    WebAircraft,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Cub,
        DatasetKind::Nabirds,
        DatasetKind::Webfg,
        DatasetKind::Synthetic,
    ];

    /// The `data.dataset` value.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cub => "cub",
            DatasetKind::Nabirds => "nabirds",
            DatasetKind::Webfg => "webfg",
            DatasetKind::Synthetic => "synthetic",
        }
    }
}

impl WebfgSubset {
    pub const ALL: [WebfgSubset; 3] = [
        WebfgSubset::WebBird,
        WebfgSubset::WebCar,
        WebfgSubset::WebAircraft,
    ];

    /// The folder name the tarball extracts to.
    pub fn dir_name(self) -> &'static str {
        match self {
            WebfgSubset::WebBird => "web-bird",
            WebfgSubset::WebCar => "web-car",
            WebfgSubset::WebAircraft => "web-aircraft",
        }
    }
}

/// Parameters of `dataset: synthetic` (see [`crate::synthetic`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Default 10, at most [`crate::synthetic::MAX_CLASSES`].
    pub classes: usize,
    /// Default 32.
    pub train_per_class: usize,
    /// Default 8.
    pub test_per_class: usize,
    /// Side of the generated square images (default `resize`, which makes the resize a no-op);
    /// the usual rotate/crop pipeline runs on them, so models see `crop`-sided images.
    pub img_size: usize,
    /// Default 0. Independent of the training seed: it fixes the data, not the run.
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// Required for the on-disk datasets, absent for synthetic.
    pub root: Option<PathBuf>,
    /// Required for (and only allowed with) `webfg`.
    pub subset: Option<WebfgSubset>,
    /// Square side after the first resize (default 512).
    pub resize: usize,
    /// Square side of the crop fed to the model (default 384).
    pub crop: usize,
    /// Train rotation is uniform in ±`rotation_deg` (default 15).
    pub rotation_deg: f64,
    /// Decode/augment threads of one loader (default 2).
    pub num_threads: usize,
    /// Ready batches the loader may hold ahead of the consumer (default 4).
    pub prefetch: usize,
    /// Present iff `dataset: synthetic`.
    pub synthetic: Option<SyntheticConfig>,
}

/// The keys only `dataset: synthetic` reads.
const SYNTHETIC_KEYS: [&str; 5] = ["classes", "train_per_class", "test_per_class", "img_size", "seed"];

impl DataConfig {
    /// Parse the `data:` section. Unknown keys and bad values are errors naming the dotted key.
    pub fn from_yaml(section: &Value) -> Result<Self, ConfigError> {
        let mut s = Section::new(Some(section), "data")?;
        let dataset = s
            .choice("dataset", &DatasetKind::ALL.map(|kind| (kind.name(), kind)))?
            .ok_or_else(|| s.error("dataset", "missing"))?;

        let root: Option<PathBuf> = s.take("root")?;
        match (dataset, &root) {
            (DatasetKind::Synthetic, Some(_)) => {
                return Err(s.error("root", "not used by dataset synthetic"));
            }
            (DatasetKind::Synthetic, None) | (_, Some(_)) => {}
            (_, None) => return Err(s.error("root", "missing")),
        }

        let subset = s.choice(
            "subset",
            &WebfgSubset::ALL.map(|subset| (subset.dir_name(), subset)),
        )?;
        match (dataset, subset) {
            (DatasetKind::Webfg, None) => {
                return Err(s.error("subset", "missing (web-bird, web-car or web-aircraft)"));
            }
            (DatasetKind::Webfg, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(s.error("subset", "only for dataset webfg")),
        }

        let resize = s.positive("resize", 512)?;
        let crop = s.positive("crop", 384)?;
        if crop > resize {
            return Err(s.error("crop", format!("{crop} is larger than data.resize ({resize})")));
        }
        let rotation_deg: f64 = s.get("rotation_deg", 15.0)?;
        if !(0.0..=180.0).contains(&rotation_deg) {
            return Err(s.error(
                "rotation_deg",
                format!("expected a number of degrees in 0..=180, got {rotation_deg}"),
            ));
        }
        let num_threads = s.positive("num_threads", 2)?;
        let prefetch = s.positive("prefetch", 4)?;

        let synthetic = if dataset == DatasetKind::Synthetic {
            let classes = s.positive("classes", 10)?;
            if classes > crate::synthetic::MAX_CLASSES {
                return Err(s.error(
                    "classes",
                    format!(
                        "synthetic data encodes at most {} classes, got {classes}",
                        crate::synthetic::MAX_CLASSES
                    ),
                ));
            }
            Some(SyntheticConfig {
                classes,
                train_per_class: s.positive("train_per_class", 32)?,
                test_per_class: s.positive("test_per_class", 8)?,
                img_size: s.positive("img_size", resize)?,
                seed: s.get("seed", 0)?,
            })
        } else {
            if let Some(key) = SYNTHETIC_KEYS.into_iter().find(|key| s.has(key)) {
                return Err(s.error(key, "only for dataset synthetic"));
            }
            None
        };
        s.finish()?;

        Ok(DataConfig {
            dataset,
            root,
            subset,
            resize,
            crop,
            rotation_deg,
            num_threads,
            prefetch,
            synthetic,
        })
    }
}
