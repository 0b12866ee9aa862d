//! WebFG-496 sub-datasets (datasets.md §3): torchvision `ImageFolder` semantics on `train/` and
//! `val/`. Classes are the sorted (byte order) `train/` folder names; `val/` folders map by name.
//!
//! Where a crawled folder tree would change the classes silently, it is said out loud: a `train/`
//! class folder without an image is not a class (a warning names it), a symbolic link that leads
//! back into the folder being walked is not followed (a warning names it: `ImageFolder` would
//! recurse forever), a class folder whose name is not UTF-8 is an error (class names are stored
//! as text), and image files whose names are not UTF-8 are read, with a warning naming the first.

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

    let mut train_files = class_files(&train_dir)?;
    // Only when some class has images: an all-empty train/ is reported as an empty train split.
    if train_files.iter().any(|(_, files)| !files.is_empty()) {
        let empty: Vec<String> = train_files
            .iter()
            .filter(|(_, files)| files.is_empty())
            .map(|(class, _)| class.clone())
            .collect();
        if !empty.is_empty() {
            tracing::warn!(
                dir = %train_dir.display(),
                folders = ?empty,
                "skipping class folders without an image: they are not classes"
            );
            train_files.retain(|(_, files)| !files.is_empty());
        }
    }
    let classes: Vec<String> = train_files.iter().map(|(class, _)| class.clone()).collect();
    let index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let train = samples(&train_dir, &train_files, &index);
    let val_files = class_files(&val_dir)?;
    if let Some((c, _)) = val_files.iter().find(|(c, _)| !index.contains_key(c.as_str())) {
        return Err(DataError::layout(
            &val_dir.join(c),
            "class folder is not in train/ (or has no image there)",
        ));
    }
    let test = samples(&val_dir, &val_files, &index);
    Ok(Dataset {
        name: format!("webfg/{}", subset.dir_name()),
        train,
        test,
        classes,
    })
}

/// Each class folder of a split (sorted by name) and its image files.
fn class_files(split_dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>, DataError> {
    let root = canonical(split_dir)?;
    let mut non_utf8 = Vec::new();
    let mut out = Vec::new();
    for class in subdirs(split_dir)? {
        let mut files = Vec::new();
        walk(
            &split_dir.join(&class),
            &mut vec![root.clone()],
            &mut files,
            &mut non_utf8,
        )?;
        out.push((class, files));
    }
    if let Some(first) = non_utf8.first() {
        tracing::warn!(
            count = non_utf8.len(),
            first = ?first,
            "image file names that are not UTF-8: read as they are, shown with U+FFFD in logs"
        );
    }
    Ok(out)
}

/// Sorted names of the non-hidden subdirectories (symbolic links to directories included, as
/// `ImageFolder` has them); a name that is not UTF-8 cannot be a class name.
fn subdirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            if path.is_dir() {
                return Err(DataError::layout(
                    &path,
                    "class folder name is not UTF-8: rename it (class names are stored as text)",
                ));
            }
            continue;
        };
        if !name.starts_with('.') && path.is_dir() {
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
    classes: &[(String, Vec<PathBuf>)],
    index: &HashMap<&str, usize>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    for (class, files) in classes {
        for path in files {
            let id = path
                .strip_prefix(split_dir)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            out.push(Sample {
                id,
                source: Source::File(path.clone()),
                label: index[class.as_str()],
            });
        }
    }
    out
}

fn canonical(dir: &Path) -> Result<PathBuf, DataError> {
    dir.canonicalize().map_err(|e| DataError::io(dir, e))
}

/// `dir`'s image files into `out`; `ancestors` are the real paths of the folders above it (and of
/// the split), so a link back into one of them is seen as the loop it is.
fn walk(
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
    non_utf8: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let real = canonical(dir)?;
    if ancestors.contains(&real) {
        tracing::warn!(
            link = %dir.display(),
            target = %real.display(),
            "skipping a symbolic link that leads back into the folder being read"
        );
        return Ok(());
    }
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
            if path.file_name().and_then(|n| n.to_str()).is_none() {
                non_utf8.push(path.clone());
            }
            out.push(path);
        }
    }
    ancestors.push(real);
    for (_, path) in dirs {
        walk(&path, ancestors, out, non_utf8)?;
    }
    ancestors.pop();
    Ok(())
}
