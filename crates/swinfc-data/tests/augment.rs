//! Augmentation: parity with PIL/torchvision on references made by
//! tests/fixtures/make_pil_refs.py, and determinism of the random draws.

use std::path::Path;

use swinfc_data::augment::{Pipeline, TrainParams, resize};
use swinfc_data::decode::RgbImage;
use swinfc_data::{IMAGENET_MEAN, IMAGENET_STD};

fn pattern() -> RgbImage {
    let (w, h) = (50, 37);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.push(((x * 7 + y * 3) % 256) as u8);
            data.push(((x * x + y * 5) % 256) as u8);
            data.push(((x * y + 11) % 256) as u8);
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn reference(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Interleaved RGB bytes → the CHW floats ToTensor + Normalize would give.
fn normalised_chw(bytes: &[u8]) -> Vec<f32> {
    (0..3)
        .flat_map(|c| {
            bytes
                .chunks(3)
                .map(move |p| (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        })
        .collect()
}

#[test]
fn resize_matches_pil_bilinear_up_and_down() {
    assert_eq!(resize(&pattern(), 64, 64).data, reference("pil_resize_64.bin"));
    assert_eq!(resize(&pattern(), 20, 15).data, reference("pil_resize_20x15.bin"));
}

#[test]
fn train_transform_matches_pil_resize_rotate_crop_flip() {
    let p = Pipeline::with_sizes(64, 48, 15.0);
    let params = TrainParams {
        angle_deg: 10.5,
        top: 3,
        left: 7,
        flip: true,
    };
    let mut out = vec![0.0; p.image_len()];
    p.train(&pattern(), &params, &mut out);
    let want = normalised_chw(&reference("pil_train_48.bin"));
    let differ = out.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} of {} values differ from PIL", want.len());
}

#[test]
fn test_transform_is_resize_then_centre_crop() {
    let p = Pipeline::with_sizes(64, 48, 15.0);
    let mut out = vec![0.0; p.image_len()];
    p.test(&pattern(), &mut out);
    let resized = reference("pil_resize_64.bin");
    let crop: Vec<u8> = (8..56)
        .flat_map(|y| resized[(y * 64 + 8) * 3..(y * 64 + 56) * 3].to_vec())
        .collect();
    assert_eq!(out, normalised_chw(&crop));
}

#[test]
fn train_params_are_keyed_by_seed_epoch_index_and_in_range() {
    let p = Pipeline::with_sizes(512, 384, 15.0);
    let mut flips = 0;
    for index in 0..2000 {
        let a = p.train_params(7, 3, index);
        assert_eq!(a, p.train_params(7, 3, index));
        assert!(a.angle_deg.abs() <= 15.0);
        assert!(a.top <= 128 && a.left <= 128);
        flips += usize::from(a.flip);
        assert_ne!(a, p.train_params(7, 4, index));
        assert_ne!(a, p.train_params(8, 3, index));
    }
    assert!((800..1200).contains(&flips), "flip rate {flips}/2000");
}

#[test]
fn zero_rotation_config_never_rotates() {
    let p = Pipeline::with_sizes(64, 48, 0.0);
    assert!((0..100).all(|i| p.train_params(1, 0, i).angle_deg == 0.0));
}
