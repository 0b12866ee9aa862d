//! NABirds (datasets.md §2): string (UUID) image ids, scattered leaf class ids; the label is the
//! rank of the class id among the sorted ids that images use (TransFG's mapping, 555 classes).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use crate::DataError;
use crate::dataset::{Dataset, Sample, Source, warn_if_counts_differ};
use crate::text::{Metadata, Records, dataset_dir, read_metadata};

/// Read NABirds from `root` = `nabirds/` or its parent. Samples keep the order of `images.txt`.
pub fn read(root: &Path) -> Result<Dataset, DataError> {
    let dir = dataset_dir(root, "nabirds", "images.txt")?;
    let Metadata {
        images,
        labels,
        split,
        classes,
    } = read_metadata(&dir)?;

    // All taxonomy nodes (1011 in the real file): id -> (line, name).
    let mut class_names = BTreeMap::new();
    for (line, id, name) in &classes.rows {
        let k = id
            .parse::<u32>()
            .map_err(|_| classes.err(*line, format!("class id {id:?} is not an integer")))?;
        if class_names.insert(k, name.clone()).is_some() {
            return Err(classes.err(*line, format!("class id {k} repeats")));
        }
    }

    // Class ids used by images, validated against classes.txt.
    let mut used = BTreeSet::new();
    let mut class_of = Vec::with_capacity(labels.rows.len());
    for (line, id, val) in &labels.rows {
        let k = val
            .parse::<u32>()
            .ok()
            .filter(|k| class_names.contains_key(k))
            .ok_or_else(|| {
                labels.err(
                    *line,
                    format!("label {val:?} of image {id} is not a class id of classes.txt"),
                )
            })?;
        used.insert(k);
        class_of.push((id.as_str(), k));
    }
    let rank: BTreeMap<u32, usize> = used.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let class_of: std::collections::HashMap<&str, u32> = class_of.into_iter().collect();
    check_leaves(&dir.join("hierarchy.txt"), &used)?;

    let split_by_id = split.by_id()?;
    let images_dir = dir.join("images");
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (line, id, rel) in &images.rows {
        let (sline, sval) = split_by_id[id.as_str()];
        let sample = Sample {
            id: id.clone(),
            source: Source::File(images.image_path(&images_dir, *line, rel)?),
            label: rank[&class_of[id.as_str()]],
        };
        if split.split_flag(sline, sval)? {
            train.push(sample);
        } else {
            test.push(sample);
        }
    }
    let names: Vec<String> = used.iter().map(|k| class_names[k].clone()).collect();

    warn_if_counts_differ("nabirds", "train", train.len(), 23_929);
    warn_if_counts_differ("nabirds", "classes", names.len(), 555);
    Ok(Dataset {
        name: "nabirds".into(),
        train,
        test,
        classes: names,
    })
}

/// Images should be labelled with leaves of the taxonomy only; a used id with children means the
/// label mapping is suspect. A warning, since the mapping itself does not depend on it; a missing
/// `hierarchy.txt` only skips the check.
fn check_leaves(path: &Path, used: &BTreeSet<u32>) -> Result<(), DataError> {
    if !path.is_file() {
        tracing::warn!(path = %path.display(), "hierarchy.txt missing: leaf check skipped");
        return Ok(());
    }
    let hierarchy = Records::read(path)?;
    let mut parents = HashSet::new();
    for (line, _, parent) in &hierarchy.rows {
        let p = parent
            .parse::<u32>()
            .map_err(|_| hierarchy.err(*line, format!("parent id {parent:?} is not an integer")))?;
        parents.insert(p);
    }
    let inner: Vec<u32> = used.iter().copied().filter(|k| parents.contains(k)).collect();
    if !inner.is_empty() {
        tracing::warn!(ids = ?inner, "images are labelled with non-leaf class ids");
    }
    Ok(())
}
