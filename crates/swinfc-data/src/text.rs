//! Line parsing shared by the CUB and NABirds metadata files (datasets.md §1.4, §2.5).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::DataError;

/// A metadata file split into `(1-based line number, id, rest)` records.
pub(crate) struct Records {
    pub path: PathBuf,
    pub rows: Vec<(usize, String, String)>,
}

impl Records {
    /// Read `path`: split on `\n`, strip a trailing `\r`, trim, skip empty lines (so CRLF, a
    /// missing final newline and a trailing blank line all parse alike), and split each line once
    /// on whitespace into an id and the rest. Non-UTF-8 bytes are replaced, not fatal: only
    /// free-text fields (names) can hold them.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DataError::layout(path, "metadata file missing")
            } else {
                DataError::io(path, e)
            }
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let mut rows = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line).trim();
            if line.is_empty() {
                continue;
            }
            let (id, rest) = match line.split_once(char::is_whitespace) {
                Some((id, rest)) => (id, rest.trim()),
                None => (line, ""),
            };
            rows.push((i + 1, id.to_string(), rest.to_string()));
        }
        Ok(Records {
            path: path.to_path_buf(),
            rows,
        })
    }

    pub fn err(&self, line: usize, msg: impl Into<String>) -> DataError {
        DataError::parse(&self.path, line, msg)
    }

    /// `id -> (line, rest)`; a repeated id is an error naming its second line.
    pub fn by_id(&self) -> Result<HashMap<&str, (usize, &str)>, DataError> {
        let mut map = HashMap::with_capacity(self.rows.len());
        for (line, id, rest) in &self.rows {
            if let Some((first, _)) = map.insert(id.as_str(), (*line, rest.as_str())) {
                return Err(self.err(*line, format!("id {id} repeats line {first}")));
            }
        }
        Ok(map)
    }

    /// Require that every record has a non-empty `rest`.
    pub fn require_value(&self) -> Result<(), DataError> {
        match self.rows.iter().find(|(_, _, rest)| rest.is_empty()) {
            Some((line, id, _)) => Err(self.err(*line, format!("id {id} has no value"))),
            None => Ok(()),
        }
    }

    /// Check that `other` has exactly this file's ids (mmpretrain asserts the same); the error
    /// names the line of the first id that is in one file and not the other.
    pub fn same_ids(&self, other: &Records) -> Result<(), DataError> {
        let mine = self.by_id()?;
        let theirs = other.by_id()?;
        for (line, id, _) in &self.rows {
            if !theirs.contains_key(id.as_str()) {
                return Err(self.err(
                    *line,
                    format!("image id {id} is missing from {}", other.path.display()),
                ));
            }
        }
        for (line, id, _) in &other.rows {
            if !mine.contains_key(id.as_str()) {
                return Err(other.err(
                    *line,
                    format!("image id {id} is missing from {}", self.path.display()),
                ));
            }
        }
        Ok(())
    }

    /// An image path of `images.txt` joined to `images_dir`; one that would leave it (absolute,
    /// or with a `..`) is an error naming the line: a listed path must not read files outside the
    /// dataset (its bytes reach logs and error messages).
    pub fn image_path(&self, images_dir: &Path, line: usize, value: &str) -> Result<PathBuf, DataError> {
        let rel = Path::new(value);
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if !inside {
            return Err(self.err(
                line,
                format!("image path {value:?} leaves the dataset's images/ directory"),
            ));
        }
        Ok(images_dir.join(rel))
    }

    /// The split flag of a `train_test_split.txt` value: exactly `1` (train) or `0` (test).
    pub fn split_flag(&self, line: usize, value: &str) -> Result<bool, DataError> {
        match value {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(self.err(line, format!("split flag must be 0 or 1, got {other:?}"))),
        }
    }
}

/// A root that is either the dataset folder itself or its parent (`CUB_200_2011/`, `nabirds/`).
pub(crate) fn dataset_dir(root: &Path, folder: &str, marker: &str) -> Result<PathBuf, DataError> {
    if root.join(marker).is_file() {
        Ok(root.to_path_buf())
    } else if root.join(folder).join(marker).is_file() {
        Ok(root.join(folder))
    } else {
        Err(DataError::layout(
            &root.join(marker),
            format!("metadata file missing (looked in the root and in {folder}/ under it)"),
        ))
    }
}

/// The id-keyed metadata files CUB and NABirds share, each with a value column; labels and the
/// split are checked to cover exactly the ids of `images.txt`.
pub(crate) struct Metadata {
    pub images: Records,
    pub labels: Records,
    pub split: Records,
    pub classes: Records,
}

pub(crate) fn read_metadata(dir: &Path) -> Result<Metadata, DataError> {
    let images = Records::read(&dir.join("images.txt"))?;
    let labels = Records::read(&dir.join("image_class_labels.txt"))?;
    let split = Records::read(&dir.join("train_test_split.txt"))?;
    let classes = Records::read(&dir.join("classes.txt"))?;
    for r in [&images, &labels, &split, &classes] {
        r.require_value()?;
    }
    images.same_ids(&labels)?;
    images.same_ids(&split)?;
    Ok(Metadata {
        images,
        labels,
        split,
        classes,
    })
}
