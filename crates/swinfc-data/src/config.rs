//! The `data:` section of a run config, parsed by hand so that every error names its dotted key.

use std::path::PathBuf;

use serde_yaml::Value;

use crate::DataError;

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

const COMMON_KEYS: &[&str] = &[
    "dataset",
    "root",
    "subset",
    "resize",
    "crop",
    "rotation_deg",
    "num_threads",
    "prefetch",
];
const SYNTHETIC_KEYS: &[&str] = &["classes", "train_per_class", "test_per_class", "img_size", "seed"];

impl DataConfig {
    /// Parse the `data:` section. Unknown keys and bad values are errors naming the dotted key.
    pub fn from_yaml(section: &Value) -> Result<Self, DataError> {
        let map = section
            .as_mapping()
            .ok_or_else(|| DataError::config("data", "expected a mapping"))?;
        for key in map.keys() {
            let name = key
                .as_str()
                .ok_or_else(|| DataError::config("data", format!("non-string key {key:?}")))?;
            if !COMMON_KEYS.contains(&name) && !SYNTHETIC_KEYS.contains(&name) {
                return Err(DataError::config(
                    &format!("data.{name}"),
                    "unknown key".to_string(),
                ));
            }
        }
        let get = |k: &str| map.get(k);

        let dataset = match get("dataset") {
            None => return Err(DataError::config("data.dataset", "missing")),
            Some(v) => DatasetKind::ALL
                .into_iter()
                .find(|k| v.as_str() == Some(k.name()))
                .ok_or_else(|| {
                    DataError::config(
                        "data.dataset",
                        format!("expected cub, nabirds, webfg or synthetic, got {}", show(v)),
                    )
                })?,
        };

        let root = match get("root") {
            None => None,
            Some(v) => Some(PathBuf::from(v.as_str().ok_or_else(|| {
                DataError::config("data.root", format!("expected a path, got {}", show(v)))
            })?)),
        };
        match (dataset, &root) {
            (DatasetKind::Synthetic, Some(_)) => {
                return Err(DataError::config("data.root", "not used by dataset synthetic"));
            }
            (DatasetKind::Synthetic, None) | (_, Some(_)) => {}
            (_, None) => return Err(DataError::config("data.root", "missing")),
        }

        let subset = match get("subset") {
            None => None,
            Some(v) => Some(match v.as_str() {
                Some("web-bird") => WebfgSubset::WebBird,
                Some("web-car") => WebfgSubset::WebCar,
                Some("web-aircraft") => WebfgSubset::WebAircraft,
                _ => {
                    return Err(DataError::config(
                        "data.subset",
                        format!("expected web-bird, web-car or web-aircraft, got {}", show(v)),
                    ));
                }
            }),
        };
        match (dataset, subset) {
            (DatasetKind::Webfg, None) => {
                return Err(DataError::config(
                    "data.subset",
                    "missing (web-bird, web-car or web-aircraft)",
                ));
            }
            (DatasetKind::Webfg, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(DataError::config("data.subset", "only for dataset webfg"));
            }
        }

        let resize = positive(get("resize"), "data.resize", 512)?;
        let crop = positive(get("crop"), "data.crop", 384)?;
        if crop > resize {
            return Err(DataError::config(
                "data.crop",
                format!("{crop} is larger than data.resize ({resize})"),
            ));
        }
        let rotation_deg = match get("rotation_deg") {
            None => 15.0,
            Some(v) => match v.as_f64() {
                Some(d) if d.is_finite() && (0.0..=180.0).contains(&d) => d,
                _ => {
                    return Err(DataError::config(
                        "data.rotation_deg",
                        format!("expected a number of degrees in 0..=180, got {}", show(v)),
                    ));
                }
            },
        };
        let num_threads = positive(get("num_threads"), "data.num_threads", 2)?;
        let prefetch = positive(get("prefetch"), "data.prefetch", 4)?;

        let synthetic = if dataset == DatasetKind::Synthetic {
            let classes = positive(get("classes"), "data.classes", 10)?;
            if classes > crate::synthetic::MAX_CLASSES {
                return Err(DataError::config(
                    "data.classes",
                    format!(
                        "synthetic data encodes at most {} classes, got {classes}",
                        crate::synthetic::MAX_CLASSES
                    ),
                ));
            }
            Some(SyntheticConfig {
                classes,
                train_per_class: positive(get("train_per_class"), "data.train_per_class", 32)?,
                test_per_class: positive(get("test_per_class"), "data.test_per_class", 8)?,
                img_size: positive(get("img_size"), "data.img_size", resize)?,
                seed: match get("seed") {
                    None => 0,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        DataError::config(
                            "data.seed",
                            format!("expected a non-negative integer, got {}", show(v)),
                        )
                    })?,
                },
            })
        } else {
            if let Some(k) = SYNTHETIC_KEYS.iter().find(|k| get(k).is_some()) {
                return Err(DataError::config(
                    &format!("data.{k}"),
                    "only for dataset synthetic",
                ));
            }
            None
        };

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

fn positive(v: Option<&Value>, key: &str, default: usize) -> Result<usize, DataError> {
    match v {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => {
                usize::try_from(n).map_err(|_| DataError::config(key, format!("{n} is too large")))
            }
            _ => Err(DataError::config(
                key,
                format!("expected a positive integer, got {}", show(v)),
            )),
        },
    }
}

/// A value as the user wrote it, for error messages.
fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| format!("{v:?}"))
}
