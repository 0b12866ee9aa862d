//! `check`: counts per split and class, unreadable files, progress.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use swinfc_data::{DataConfig, Split, check};

#[test]
fn check_counts_and_lists_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    common::cub_fixture(tmp.path());
    let yaml = format!(
        "{{dataset: cub, root: '{}', num_threads: 3}}",
        tmp.path().display()
    );
    let cfg = DataConfig::from_yaml(&serde_yaml::from_str(&yaml).unwrap()).unwrap();
    let calls = AtomicUsize::new(0);
    let report = check(&cfg, &|done, total| {
        assert!(done <= total && total == 7);
        calls.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert_eq!(report.dataset, "cub");
    assert_eq!(report.train_per_class, [1, 1, 2]);
    assert_eq!(report.test_per_class, [1, 1, 1]);
    let bad: Vec<(Split, &str)> = report
        .unreadable
        .iter()
        .map(|u| (u.split, u.path.rsplit('/').next().unwrap()))
        .collect();
    assert_eq!(
        bad,
        [
            (Split::Train, "Sooty_Albatross_0001_1071.jpg"),
            (Split::Train, "Sooty_Albatross_0003_796359.jpg"),
        ]
    );
    assert_eq!(report.test_unreadable(), 0);

    std::fs::write(
        tmp.path()
            .join("CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"),
        b"",
    )
    .unwrap();
    let report = check(&cfg, &|_, _| {}).unwrap();
    assert_eq!(report.test_unreadable(), 1);
    assert_eq!(report.unreadable[2].split, Split::Test);
}
