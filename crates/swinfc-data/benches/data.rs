//! `cargo bench -p swinfc-data`: the train transform on CUB-sized JPEGs, per stage, one thread,
//! then the loader's throughput with 1, 2 and 4 threads. Prints a table.
//!
//! Input: 64 generated 500×375 JPEGs (quality 75, smooth content plus noise, about CUB's file
//! size), decoded from memory so that disk speed does not enter the figure. With
//! `DATA_BENCH_JPEG_DIR=DIR` they are also written to DIR (`000.jpg`…), so that
//! bench/torch/data_torchvision.py times torchvision on the same bytes.

use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use image::{DynamicImage, ImageFormat, RgbImage as ImgRgb};
use swinfc_data::augment::{Pipeline, resize};
use swinfc_data::decode::decode_bytes;
use swinfc_data::{BatchRequest, DataConfig, Loader, SampleRef, TrainStream, open_dataset};

const N: usize = 64;

fn cub_like_jpeg(seed: u32) -> Vec<u8> {
    let img = ImgRgb::from_fn(500, 375, |x, y| {
        let h = (x.wrapping_mul(374761393) ^ y.wrapping_mul(668265263) ^ seed.wrapping_mul(2246822519))
            .wrapping_mul(3266489917);
        let noise = (h >> 27) as i32 - 16;
        let fx = x as f32 / 500.0;
        let fy = y as f32 / 375.0;
        let body = ((fx - 0.5).powi(2) / 0.09 + (fy - 0.5).powi(2) / 0.05) < 1.0;
        let base = if body {
            [150.0, 110.0 + 40.0 * fx, 70.0]
        } else {
            [
                60.0 + 80.0 * fy,
                120.0 + 30.0 * (fx * 9.0).sin(),
                90.0 + seed as f32 % 50.0,
            ]
        };
        image::Rgb(base.map(|v| (v as i32 + noise).clamp(0, 255) as u8))
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

fn per_image(f: impl Fn(usize), reps: usize) -> f64 {
    f(0); // warm caches and allocator
    let start = Instant::now();
    for r in 0..reps {
        for i in 0..N {
            f(i + r);
        }
    }
    start.elapsed().as_secs_f64() / (reps * N) as f64
}

fn main() {
    let files: Vec<Vec<u8>> = (0..N as u32).map(cub_like_jpeg).collect();
    if let Ok(dir) = std::env::var("DATA_BENCH_JPEG_DIR") {
        std::fs::create_dir_all(&dir).expect("mkdir DATA_BENCH_JPEG_DIR");
        for (k, f) in files.iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("{k:03}.jpg")), f).expect("write JPEG");
        }
    }
    let avg_kb = files.iter().map(Vec::len).sum::<usize>() as f64 / N as f64 / 1024.0;
    let decoded: Vec<_> = files.iter().map(|f| decode_bytes(f).expect("decode")).collect();
    let resized: Vec<_> = decoded.iter().map(|d| resize(d, 512, 512)).collect();
    let p = Pipeline::with_sizes(512, 384, 15.0);
    let mut out = vec![0.0f32; p.image_len()];
    let out = std::cell::RefCell::new(&mut out);
    let reps = 5;

    let t_decode = per_image(|i| drop(black_box(decode_bytes(&files[i % N]))), reps);
    let t_resize = per_image(|i| drop(black_box(resize(&decoded[i % N], 512, 512))), reps);
    let t_rot = per_image(
        |i| {
            let params = p.train_params(0, 0, i);
            p.train(&resized[i % N], &params, &mut out.borrow_mut());
        },
        reps,
    );
    let t_all = per_image(
        |i| {
            let img = decode_bytes(&files[i % N]).expect("decode");
            let params = p.train_params(0, 0, i);
            p.train(&img, &params, &mut out.borrow_mut());
        },
        reps,
    );

    println!(
        "swinfc-data benchmark: {N} JPEGs 500x375 (avg {avg_kb:.0} KiB), resize 512, rotate ±15°, crop 384, flip, normalise"
    );
    println!("{:<44} {:>10} {:>12}", "stage (1 thread)", "ms/image", "images/s");
    for (name, t) in [
        ("decode JPEG", t_decode),
        ("resize 500x375 -> 512x512 (PIL bilinear)", t_resize),
        ("rotate + crop 384 + flip + normalise", t_rot),
        ("total: decode + resize + rotate + crop", t_all),
    ] {
        println!("{name:<44} {:>10.3} {:>12.1}", t * 1e3, 1.0 / t);
    }

    // The loader end to end (files on disk, batches of 16), per thread count.
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    for (k, f) in files.iter().enumerate() {
        let cls = dir.join(format!("train/c{}", k % 4));
        std::fs::create_dir_all(&cls).expect("mkdir");
        std::fs::write(cls.join(format!("{k:03}.jpg")), f).expect("write");
        std::fs::create_dir_all(dir.join(format!("val/c{}", k % 4))).expect("mkdir");
    }
    println!(
        "{:<44} {:>10} {:>12} {:>12}",
        "loader (batches of 16)", "threads", "images/s", "per thread"
    );
    for threads in [1, 2, 4] {
        let yaml = format!(
            "{{dataset: webfg, subset: web-bird, root: '{}', num_threads: {threads}, prefetch: 8}}",
            dir.display()
        );
        let cfg = DataConfig::from_yaml(&serde_yaml::from_str(&yaml).expect("yaml")).expect("cfg");
        let ds = Arc::new(open_dataset(&cfg).expect("dataset"));
        let stream = TrainStream::new(0, ds.train.len());
        let batches = 4 * N / 16;
        let reqs = (0..batches as u64).map(move |s| -> BatchRequest {
            let refs: Vec<SampleRef> = stream.micro_batch(s, 0, 1, 1, 16, 0);
            BatchRequest::Train(refs)
        });
        let start = Instant::now();
        let mut loader = Loader::new(ds, &cfg, 0, reqs);
        let mut n = 0;
        while let Some(b) = loader.next() {
            n += b.expect("batch").labels.len();
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<44} {threads:>10} {rate:>12.1} {:>12.1}",
            "",
            rate / threads as f64
        );
    }
}
