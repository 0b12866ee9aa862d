//! WebFG-496 sub-datasets (datasets.md §3): torchvision `ImageFolder` semantics on `train/` and
//! `val/`. Classes are the sorted (byte order) `train/` folder names; `val/` folders map by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::config::WebfgSubset;
use crate::dataset::{Dataset, Sample, Source};

/// `ImageFolder`'s extension list (case-insensitive); other files are skipped silently, as there,
/// so that counts match the published ones.
const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// Read one sub-dataset from `root` = the subset folder (holding `train/`, `val/`) or its parent.
pub fn read(root: &Path, subset: WebfgSubset) -> Result<Dataset, DataError> {
    let dir = if root.join("train").is_dir() {
        root.to_path_buf()
    } else if root.join(subset.dir_name()).join("train").is_dir() {
        root.join(subset.dir_name())
    } else {
        return Err(DataError::layout(
            &root.join("train"),
            format!(
                "directory missing (looked in the root and in {}/ under it)",
                subset.dir_name()
            ),
        ));
    };
    let train_dir = dir.join("train");
    let val_dir = dir.join("val");
    if !val_dir.is_dir() {
        return Err(DataError::layout(&val_dir, "directory missing"));
    }

    let classes = subdirs(&train_dir)?;
    let index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let train = samples(&train_dir, &classes, &index)?;
    let val_classes = subdirs(&val_dir)?;
    if let Some(c) = val_classes.iter().find(|c| !index.contains_key(c.as_str())) {
        return Err(DataError::layout(
            &val_dir.join(c),
            "class folder is not in train/",
        ));
    }
    let test = samples(&val_dir, &val_classes, &index)?;
    Ok(Dataset {
        name: format!("webfg/{}", subset.dir_name()),
        train,
        test,
        classes,
    })
}

/// Sorted names of the non-hidden subdirectories.
fn subdirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    // Byte order = Python's code-point order for the ASCII names of these datasets.
    names.sort();
    Ok(names)
}

/// The image files of each class folder, walked recursively in sorted order: a folder's files,
/// then its subfolders — `ImageFolder`'s `sorted(os.walk(...))` order for the flat class folders
/// these datasets have (it differs only for sibling names that sort around `/`).
fn samples(
    split_dir: &Path,
    classes: &[String],
    index: &HashMap<&str, usize>,
) -> Result<Vec<Sample>, DataError> {
    let mut out = Vec::new();
    for class in classes {
        let mut files = Vec::new();
        walk(&split_dir.join(class), &mut files)?;
        for path in files {
            let id = path
                .strip_prefix(split_dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(Sample {
                id,
                source: Source::File(path),
                label: index[class.as_str()],
            });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            entries.push((name, entry.path()));
        }
    }
    entries.sort();
    let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, p)| p.is_dir());
    for (name, path) in files {
        let ext = Path::new(&name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
            out.push(path);
        }
    }
    for (_, path) in dirs {
        walk(&path, out)?;
    }
    Ok(())
}
