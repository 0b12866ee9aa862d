//! Readers on fixture datasets in all three layouts (datasets.md §5), checked exactly, and their
//! errors (file and line named).

mod common;

use std::path::Path;

use common::*;
use swinfc_data::{DataConfig, DataError, Dataset, Source, open_dataset};

fn open(yaml: &str) -> Result<Dataset, DataError> {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    open_dataset(&DataConfig::from_yaml(&v)?)
}

fn cfg(dataset: &str, root: &Path) -> String {
    format!("{{dataset: {dataset}, root: '{}'}}", root.display())
}

/// (id, label, path relative to `base`) of a split.
fn rows(samples: &[swinfc_data::Sample], base: &Path) -> Vec<(String, usize, String)> {
    samples
        .iter()
        .map(|s| match &s.source {
            Source::File(p) => (
                s.id.clone(),
                s.label,
                p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
            ),
            Source::Synthetic(_) => panic!("file dataset yields synthetic sample"),
        })
        .collect()
}

fn row(id: &str, label: usize, path: &str) -> (String, usize, String) {
    (id.to_string(), label, path.to_string())
}

#[test]
fn cub_reads_exactly_from_root_or_parent() {
    let tmp = tempfile::tempdir().unwrap();
    cub_fixture(tmp.path());
    let images = tmp.path().join("CUB_200_2011/images");
    for root in [tmp.path().to_path_buf(), tmp.path().join("CUB_200_2011")] {
        let ds = open(&cfg("cub", &root)).unwrap();
        assert_eq!(ds.name, "cub");
        assert_eq!(
            ds.classes,
            [
                "001.Black_footed_Albatross",
                "002.Laysan_Albatross",
                "003.Sooty_Albatross"
            ]
        );
        assert_eq!(
            rows(&ds.train, &images),
            [
                row(
                    "2",
                    0,
                    "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"
                ),
                row("3", 1, "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg"),
                row("5", 2, "003.Sooty_Albatross/Sooty_Albatross_0001_1071.jpg"),
                row("7", 2, "003.Sooty_Albatross/Sooty_Albatross_0003_796359.jpg"),
            ]
        );
        assert_eq!(
            rows(&ds.test, &images),
            [
                row(
                    "1",
                    0,
                    "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
                ),
                row("4", 1, "002.Laysan_Albatross/Laysan_Albatross_0003_1033.png"),
                row("6", 2, "003.Sooty_Albatross/Sooty_Albatross_0002_796339.jpg"),
            ]
        );
    }
}

fn cub_error(edit: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    cub_fixture(tmp.path());
    edit(&tmp.path().join("CUB_200_2011"));
    open(&cfg("cub", tmp.path())).unwrap_err().to_string()
}

#[test]
fn cub_errors_name_file_and_line() {
    let e = cub_error(|d| std::fs::remove_file(d.join("train_test_split.txt")).unwrap());
    assert!(e.contains("train_test_split.txt") && e.contains("missing"), "{e}");

    let e = cub_error(|d| {
        write(
            &d.join("train_test_split.txt"),
            "1 0\n2 1\n3 2\n4 0\n5 1\n6 0\n7 1\n",
        )
    });
    assert!(
        e.contains("train_test_split.txt:3:") && e.contains("0 or 1"),
        "{e}"
    );

    // Id 8 only in the labels file; id 6 missing from it.
    let e = cub_error(|d| {
        write(
            &d.join("image_class_labels.txt"),
            "7 3\n1 1\n2 1\n4 2\n3 2\n5 3\n8 3\n",
        )
    });
    assert!(e.contains("images.txt:6:") && e.contains("image id 6"), "{e}");
    let e = cub_error(|d| {
        write(
            &d.join("image_class_labels.txt"),
            "7 3\n1 1\n2 1\n4 2\n3 2\n5 3\n6 3\n8 1\n",
        )
    });
    assert!(
        e.contains("image_class_labels.txt:8:") && e.contains("image id 8"),
        "{e}"
    );

    let e = cub_error(|d| {
        write(
            &d.join("image_class_labels.txt"),
            "7 3\n1 1\n2 1\n4 2\n3 4\n5 3\n6 3",
        )
    });
    assert!(
        e.contains("image_class_labels.txt:5:") && e.contains("out of range"),
        "{e}"
    );

    let e = cub_error(|d| write(&d.join("classes.txt"), "1 a\n2 b\n2 c\n"));
    assert!(e.contains("classes.txt:3:"), "{e}");
}

#[test]
fn nabirds_labels_are_ranks_of_used_class_ids() {
    let tmp = tempfile::tempdir().unwrap();
    nabirds_fixture(tmp.path());
    let images = tmp.path().join("nabirds/images");
    let ds = open(&cfg("nabirds", tmp.path())).unwrap();
    assert_eq!(
        ds.classes,
        [
            "Barn Owl (adult)",
            "Bald Eagle, immature",
            "Peregrine Falcon (immature)"
        ]
    );
    let rank = |c: u32| [295, 555, 817].iter().position(|&k| k == c).unwrap();
    let expect = |train: u8| -> Vec<(String, usize, String)> {
        NABIRDS_IDS
            .iter()
            .filter(|r| r.2 == train)
            .map(|(id, c, _)| row(id, rank(*c), &nabirds_path(id, *c)))
            .collect()
    };
    assert_eq!(rows(&ds.train, &images), expect(1));
    assert_eq!(rows(&ds.test, &images), expect(0));
    // And from the dataset folder itself.
    assert_eq!(open(&cfg("nabirds", &tmp.path().join("nabirds"))).unwrap(), ds);
}

#[test]
fn nabirds_errors_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    nabirds_fixture(tmp.path());
    let d = tmp.path().join("nabirds");
    let labels = std::fs::read_to_string(d.join("image_class_labels.txt")).unwrap();
    write(
        &d.join("image_class_labels.txt"),
        labels.replacen(" 555", " 556", 1),
    );
    let e = open(&cfg("nabirds", tmp.path())).unwrap_err().to_string();
    assert!(
        e.contains("image_class_labels.txt:3:") && e.contains("556"),
        "{e}"
    );

    write(&d.join("image_class_labels.txt"), labels);
    write(
        &d.join("train_test_split.txt"),
        format!("{} 1\n", NABIRDS_IDS[0].0),
    );
    let e = open(&cfg("nabirds", tmp.path())).unwrap_err().to_string();
    assert!(e.contains("images.txt:2:") && e.contains(NABIRDS_IDS[1].0), "{e}");
}

#[test]
fn webfg_follows_imagefolder_and_maps_val_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    webfg_fixture(tmp.path());
    let base = tmp.path().join("web-bird");
    for root in [tmp.path().to_path_buf(), base.clone()] {
        let ds = open(&format!(
            "{{dataset: webfg, subset: web-bird, root: '{}'}}",
            root.display()
        ))
        .unwrap();
        assert_eq!(ds.name, "webfg/web-bird");
        assert_eq!(ds.classes, ["B_x", "C_x", "a_x"]);
        assert_eq!(
            rows(&ds.train, &base),
            [
                row("B_x/B_x_00001.jpg", 0, "train/B_x/B_x_00001.jpg"),
                row("B_x/B_x_00002.JPG", 0, "train/B_x/B_x_00002.JPG"),
                row("B_x/sub/B_x_00003.png", 0, "train/B_x/sub/B_x_00003.png"),
                row("C_x/C_x_00001.jpeg", 1, "train/C_x/C_x_00001.jpeg"),
                row("a_x/a_x_00001.webp", 2, "train/a_x/a_x_00001.webp"),
            ]
        );
        assert_eq!(
            rows(&ds.test, &base),
            [
                row("B_x/B_x_val_1.bmp", 0, "val/B_x/B_x_val_1.bmp"),
                row("C_x/C_x_val_1.jpg", 1, "val/C_x/C_x_val_1.jpg"),
            ]
        );
    }
}

#[test]
fn webfg_val_class_missing_from_train_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    webfg_fixture(tmp.path());
    write(&tmp.path().join("web-bird/val/D_x/x.jpg"), jpeg(8, 8, [0, 0, 0]));
    let e = open(&format!(
        "{{dataset: webfg, subset: web-bird, root: '{}'}}",
        tmp.path().display()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("val/D_x") && e.contains("not in train"), "{e}");
}

/// Crawled folder trees that used to change the classes silently: a class folder without an image
/// is not a class, links back into the tree are not followed (each loop read once, nothing read
/// twice), and a non-UTF-8 image name is read like any other.
#[test]
fn webfg_skips_empty_classes_and_link_loops_and_reads_non_utf8_names() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    webfg_fixture(tmp.path());
    let base = tmp.path().join("web-bird");
    let train = base.join("train");
    std::fs::create_dir_all(train.join("D_empty/nested")).unwrap();
    symlink("..", train.join("B_x/sub/up")).unwrap(); // back to B_x
    symlink(".", train.join("C_x/self")).unwrap();
    symlink(".", train.join("Z_link_to_train")).unwrap(); // a "class" that is train/ itself
    let odd = std::ffi::OsStr::from_bytes(b"a_x_\xff.jpg");
    write(&train.join("a_x").join(odd), jpeg(20, 20, [1, 2, 3]));

    let ds = open(&cfg_webfg(tmp.path())).unwrap();
    assert_eq!(
        ds.classes,
        ["B_x", "C_x", "a_x"],
        "empty and looping folders are no classes"
    );
    let paths: Vec<String> = rows(&ds.train, &base).into_iter().map(|r| r.2).collect();
    assert_eq!(paths.len(), 6, "{paths:?}");
    assert!(
        paths.contains(&"train/a_x/a_x_\u{fffd}.jpg".to_string()),
        "{paths:?}"
    );
    let unique: std::collections::BTreeSet<_> = paths.iter().collect();
    assert_eq!(unique.len(), paths.len(), "nothing read twice: {paths:?}");
}

/// A class folder name that is not UTF-8 cannot be stored as a class name: an error naming it.
#[test]
fn webfg_class_folder_names_must_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    webfg_fixture(tmp.path());
    let odd = std::ffi::OsStr::from_bytes(b"E_\xfe");
    write(
        &tmp.path().join("web-bird/train").join(odd).join("x.jpg"),
        jpeg(8, 8, [0, 0, 0]),
    );
    let e = open(&cfg_webfg(tmp.path())).unwrap_err().to_string();
    assert!(e.contains("E_") && e.contains("not UTF-8"), "{e}");
}

fn cfg_webfg(root: &Path) -> String {
    format!("{{dataset: webfg, subset: web-bird, root: '{}'}}", root.display())
}

#[test]
fn an_empty_train_split_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("web-car/train/a/.keep"), "");
    write(&tmp.path().join("web-car/val/a/x.jpg"), jpeg(8, 8, [0, 0, 0]));
    let e = open(&format!(
        "{{dataset: webfg, subset: web-car, root: '{}'}}",
        tmp.path().display()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("train split is empty"), "{e}");
}

/// An `images.txt` path that leaves `images/` (a `..`, an absolute path) is refused with its line,
/// not followed (it used to read the file and show its first bytes).
#[test]
fn image_paths_that_escape_the_dataset_are_refused() {
    for (path, line) in [
        ("../../../etc/passwd", 2),
        ("/etc/passwd", 2),
        ("a/../../b.jpg", 2),
    ] {
        let e = cub_error(|d| {
            let images = std::fs::read_to_string(d.join("images.txt")).unwrap();
            let edited = images.replacen(
                "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
                path,
                1,
            );
            write(&d.join("images.txt"), edited);
        });
        assert!(
            e.contains(&format!("images.txt:{line}:")) && e.contains("leaves the dataset's images/"),
            "{path}: {e}"
        );
    }
}
