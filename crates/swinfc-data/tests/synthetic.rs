//! Synthetic data: deterministic from the seed, classes share the coarse scene and differ in a
//! small detail.

use swinfc_data::decode::load;
use swinfc_data::{DataConfig, Dataset, Source, open_dataset};

fn dataset(seed: u64) -> Dataset {
    let yaml = format!(
        "{{dataset: synthetic, classes: 8, train_per_class: 3, test_per_class: 2, img_size: 64, \
         seed: {seed}, resize: 64, crop: 56}}"
    );
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    open_dataset(&DataConfig::from_yaml(&v).unwrap()).unwrap()
}

fn pixels(ds: &Dataset, i: usize) -> Vec<u8> {
    load(&ds.train[i]).unwrap().data
}

#[test]
fn layout_and_labels() {
    let ds = dataset(1);
    assert_eq!((ds.train.len(), ds.test.len(), ds.classes.len()), (24, 16, 8));
    for (i, s) in ds.train.iter().enumerate() {
        assert_eq!(s.label, i / 3);
        assert!(matches!(s.source, Source::Synthetic(_)));
    }
}

#[test]
fn deterministic_from_the_seed() {
    let (a, b, c) = (dataset(1), dataset(1), dataset(2));
    for i in 0..a.train.len() {
        assert_eq!(pixels(&a, i), pixels(&b, i));
        assert_ne!(pixels(&a, i), pixels(&c, i));
    }
    // Train and test images are different draws.
    assert_ne!(load(&a.train[0]).unwrap(), load(&a.test[0]).unwrap());
}

/// Mean absolute difference per byte.
fn distance(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y) as f64).sum::<f64>() / a.len() as f64
}

#[test]
fn classes_differ_in_a_detail_not_the_whole_scene() {
    let ds = dataset(3);
    let imgs: Vec<Vec<u8>> = (0..ds.train.len()).map(|i| pixels(&ds, i)).collect();
    // Same scene: images of different classes are about as far apart as images of one class
    // (the per-sample jitter dominates), so no class is recognisable from the coarse content.
    let (mut same, mut diff) = (vec![], vec![]);
    for i in 0..imgs.len() {
        for j in i + 1..imgs.len() {
            let d = distance(&imgs[i], &imgs[j]);
            if ds.train[i].label == ds.train[j].label {
                same.push(d)
            } else {
                diff.push(d)
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&diff) < 1.5 * mean(&same),
        "same {} diff {}",
        mean(&same),
        mean(&diff)
    );
    // ...yet the class detail is there: the patch colour of class c is its palette colour.
    // Classes 0 and 1 differ in patch colour (red vs green) at the same position: count strongly
    // red and strongly green pixels.
    let count = |img: &[u8], f: &dyn Fn(&[u8]) -> bool| img.chunks(3).filter(|p| f(p)).count();
    let red = |p: &[u8]| p[0] > 180 && p[1] < 90 && p[2] < 90;
    let green = |p: &[u8]| p[1] > 160 && p[0] < 90 && p[2] < 110;
    for n in 0..3 {
        assert!(
            count(&imgs[n], &red) > 10 && count(&imgs[n], &green) == 0,
            "class 0 #{n}"
        );
        assert!(
            count(&imgs[3 + n], &green) > 10 && count(&imgs[3 + n], &red) == 0,
            "class 1 #{n}"
        );
    }
}
