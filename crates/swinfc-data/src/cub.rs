//! CUB-200-2011 (datasets.md §1): `images.txt`, `image_class_labels.txt`, `train_test_split.txt`
//! and `classes.txt`, joined by image id; labels are the 1-based class ids minus one.

use std::path::Path;

use crate::DataError;
use crate::dataset::{Dataset, Sample, Source, warn_if_counts_differ};
use crate::text::{Metadata, dataset_dir, read_metadata};

/// Read CUB from `root` = `CUB_200_2011/` or its parent. Samples keep the order of `images.txt`.
pub fn read(root: &Path) -> Result<Dataset, DataError> {
    let dir = dataset_dir(root, "CUB_200_2011", "images.txt")?;
    let Metadata {
        images,
        labels,
        split,
        classes,
    } = read_metadata(&dir)?;

    // classes.txt must hold exactly the ids 1..=N (in any order): names[id - 1].
    let mut names = vec![None; classes.rows.len()];
    for (line, id, name) in &classes.rows {
        let k = id
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=names.len()).contains(k))
            .ok_or_else(|| classes.err(*line, format!("class id {id:?} is not in 1..={}", names.len())))?;
        if names[k - 1].replace(name.clone()).is_some() {
            return Err(classes.err(*line, format!("class id {k} repeats")));
        }
    }
    let names: Vec<String> = names.into_iter().flatten().collect();

    let labels_by_id = labels.by_id()?;
    let split_by_id = split.by_id()?;
    let images_dir = dir.join("images");
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (line, id, rel) in &images.rows {
        let (lline, lval) = labels_by_id[id.as_str()];
        let label = lval
            .parse::<usize>()
            .ok()
            .filter(|c| (1..=names.len()).contains(c))
            .ok_or_else(|| {
                labels.err(
                    lline,
                    format!("label {lval:?} is out of range 1..={}", names.len()),
                )
            })?
            - 1;
        let (sline, sval) = split_by_id[id.as_str()];
        let sample = Sample {
            id: id.clone(),
            source: Source::File(images.image_path(&images_dir, *line, rel)?),
            label,
        };
        if split.split_flag(sline, sval)? {
            train.push(sample);
        } else {
            test.push(sample);
        }
    }

    warn_if_counts_differ("cub", "images", train.len() + test.len(), 11_788);
    warn_if_counts_differ("cub", "train", train.len(), 5_994);
    warn_if_counts_differ("cub", "test", test.len(), 5_794);
    warn_if_counts_differ("cub", "classes", names.len(), 200);
    Ok(Dataset {
        name: "cub".into(),
        train,
        test,
        classes: names,
    })
}
