//! The loader on real files and synthetic data: request order, determinism across thread
//! counts, skipping bad train files, failing on bad test files, back-pressure, shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use swinfc_data::decode::DecodeKind;
use swinfc_data::{Batch, BatchRequest, DataConfig, Dataset, Loader, TrainStream, open_dataset};

fn config(yaml: &str) -> DataConfig {
    DataConfig::from_yaml(&serde_yaml::from_str(yaml).unwrap()).unwrap()
}

fn synthetic(threads: usize, prefetch: usize) -> (DataConfig, Arc<Dataset>) {
    let cfg = config(&format!(
        "{{dataset: synthetic, classes: 6, train_per_class: 5, test_per_class: 2, img_size: 48, \
         resize: 40, crop: 32, num_threads: {threads}, prefetch: {prefetch}}}"
    ));
    let ds = Arc::new(open_dataset(&cfg).unwrap());
    (cfg, ds)
}

/// Two epochs and a bit of training requests for (world 1, accum 2, micro 4), then the test split.
fn requests(train_len: usize, test_len: usize) -> Vec<BatchRequest> {
    let stream = TrainStream::new(9, train_len);
    let mut out: Vec<BatchRequest> = (0..9u64)
        .flat_map(|step| (0..2).map(move |a| (step, a)))
        .map(|(step, a)| BatchRequest::Train(stream.micro_batch(step, 0, 1, 2, 4, a)))
        .collect();
    out.extend(
        (0..test_len)
            .step_by(5)
            .map(|s| BatchRequest::Test((s..(s + 5).min(test_len)).collect())),
    );
    out
}

fn drain(mut loader: Loader) -> Vec<Batch> {
    let mut out = vec![];
    while let Some(b) = loader.next() {
        out.push(b.unwrap());
    }
    assert!(loader.wait_seconds() >= 0.0);
    out
}

#[test]
fn batches_are_identical_whatever_the_thread_count() {
    let mut runs = vec![];
    for threads in [1, 2, 5] {
        let (cfg, ds) = synthetic(threads, 3);
        let reqs = requests(ds.train.len(), ds.test.len());
        runs.push(drain(Loader::new(ds, &cfg, 11, reqs.into_iter())));
    }
    assert_eq!(runs[0].len(), 18 + 3);
    for (k, b) in runs[0].iter().enumerate() {
        assert_eq!(b.seq, k as u64);
        let n = b.labels.len();
        assert_eq!(b.shape, [n, 3, 32, 32]);
        assert_eq!(b.images.len(), n * 3 * 32 * 32);
    }
    // Byte-identical, not just equal as floats.
    let bits = |run: &Vec<Batch>| -> Vec<u32> {
        run.iter()
            .flat_map(|b| b.images.iter().map(|v| v.to_bits()))
            .collect()
    };
    assert_eq!(bits(&runs[0]), bits(&runs[1]));
    assert_eq!(bits(&runs[0]), bits(&runs[2]));
    assert_eq!(runs[0], runs[2]);
}

#[test]
fn labels_and_indices_follow_the_requests() {
    let (cfg, ds) = synthetic(2, 2);
    let refs = TrainStream::new(1, ds.train.len()).slice(0, 7);
    let loader = Loader::new(
        ds.clone(),
        &cfg,
        1,
        vec![BatchRequest::Train(refs.clone())].into_iter(),
    );
    let b = &drain(loader)[0];
    assert_eq!(b.indices, refs.iter().map(|r| r.index).collect::<Vec<_>>());
    let labels: Vec<i64> = refs.iter().map(|r| ds.train[r.index].label as i64).collect();
    assert_eq!(b.labels, labels);
    // A different epoch of the same index augments differently.
    let r0 = refs[0];
    let other = swinfc_data::SampleRef {
        epoch: r0.epoch + 1,
        index: r0.index,
    };
    let again = drain(Loader::new(
        ds,
        &cfg,
        1,
        vec![BatchRequest::Train(vec![r0]), BatchRequest::Train(vec![other])].into_iter(),
    ));
    assert_eq!(again[0].images[..], b.images[..3 * 32 * 32]);
    assert_ne!(again[1].images, again[0].images);
}

#[test]
fn bad_train_files_are_skipped_and_bad_test_files_fail() {
    let tmp = tempfile::tempdir().unwrap();
    common::cub_fixture(tmp.path());
    let cfg = config(&format!(
        "{{dataset: cub, root: '{}', resize: 24, crop: 16, num_threads: 2}}",
        tmp.path().display()
    ));
    let ds = Arc::new(open_dataset(&cfg).unwrap());
    // Train: 2 gray, 3 png-as-jpg, 5 truncated, 7 empty (split order 0..4).
    let refs = (0..4)
        .map(|index| swinfc_data::SampleRef { epoch: 0, index })
        .collect();
    let mut loader = Loader::new(ds.clone(), &cfg, 0, vec![BatchRequest::Train(refs)].into_iter());
    let b = loader.next().unwrap().unwrap();
    assert_eq!(b.shape, [2, 3, 16, 16]);
    assert_eq!(b.indices, [0, 1]);
    assert_eq!(b.labels, [0, 1]);
    let reasons: Vec<(&str, &str)> = b
        .skipped
        .iter()
        .map(|(p, r)| (p.rsplit('/').next().unwrap(), r.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("Sooty_Albatross_0001_1071.jpg", "truncated"),
            ("Sooty_Albatross_0003_796359.jpg", "empty file")
        ]
    );
    assert!(loader.next().is_none());
    assert_eq!(
        loader.skip_counts().into_iter().collect::<Vec<_>>(),
        [(DecodeKind::EmptyFile, 1), (DecodeKind::Truncated, 1)]
    );

    // Test: 1 jpeg, 4 rgba png, 6 jpeg all decode.
    let ok = drain(Loader::new(
        ds.clone(),
        &cfg,
        0,
        vec![BatchRequest::Test(vec![0, 1, 2])].into_iter(),
    ));
    assert_eq!(ok[0].labels, [0, 1, 2]);

    // Corrupt a test file: its batch is an error naming it; later batches still come.
    std::fs::write(
        tmp.path()
            .join("CUB_200_2011/images/003.Sooty_Albatross/Sooty_Albatross_0002_796339.jpg"),
        b"<html>",
    )
    .unwrap();
    let mut loader = Loader::new(
        ds,
        &cfg,
        0,
        vec![BatchRequest::Test(vec![2]), BatchRequest::Test(vec![0])].into_iter(),
    );
    let e = loader.next().unwrap().unwrap_err().to_string();
    assert!(
        e.contains("Sooty_Albatross_0002_796339.jpg") && e.contains("unknown format"),
        "{e}"
    );
    assert!(loader.next().unwrap().is_ok());
}

#[test]
fn back_pressure_bounds_the_work_ahead_and_drop_stops_cleanly() {
    let (cfg, ds) = synthetic(3, 2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let stream = TrainStream::new(0, ds.train.len());
    // An endless request stream: only back-pressure keeps the loader from running away.
    let reqs = (0u64..).map(move |step| {
        counter.fetch_add(1, Ordering::SeqCst);
        BatchRequest::Train(stream.micro_batch(step, 0, 1, 1, 2, 0))
    });
    let mut loader = Loader::new(ds, &cfg, 0, reqs);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pulled.load(Ordering::SeqCst), 2);
    loader.next().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pulled.load(Ordering::SeqCst), 3);
    drop(loader); // joins the threads; a hang here fails the test by timeout
}

#[test]
fn consumer_wait_time_is_reported() {
    let (cfg, ds) = synthetic(1, 1);
    let stream = TrainStream::new(0, ds.train.len());
    let reqs = (0u64..3).map(move |s| {
        std::thread::sleep(Duration::from_millis(50));
        BatchRequest::Train(stream.micro_batch(s, 0, 1, 1, 2, 0))
    });
    let batches = drain_timed(Loader::new(ds, &cfg, 0, reqs));
    assert_eq!(batches.0, 3);
    assert!(batches.1 >= 0.1, "waited {}", batches.1);
}

fn drain_timed(mut loader: Loader) -> (usize, f64) {
    let mut n = 0;
    while let Some(b) = loader.next() {
        b.unwrap();
        n += 1;
    }
    (n, loader.wait_seconds())
}

#[test]
fn a_panicking_request_iterator_becomes_an_error_not_a_hang() {
    let (cfg, ds) = synthetic(2, 2);
    let stream = TrainStream::new(0, ds.train.len());
    // rank 1 of world 1: micro_batch panics on the second request.
    let reqs = (0u64..3).map(move |s| {
        let rank = usize::from(s == 1);
        BatchRequest::Train(stream.micro_batch(s, rank, 1, 1, 2, 0))
    });
    let mut loader = Loader::new(ds, &cfg, 0, reqs);
    assert!(loader.next().unwrap().is_ok());
    let e = loader.next().unwrap().unwrap_err().to_string();
    assert!(e.contains("request iterator panicked"), "{e}");
    assert!(loader.next().is_none());
}
