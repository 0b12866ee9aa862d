//! Decoding: formats by magic bytes, colour modes as PIL's convert('RGB'), CMYK/YCCK JPEGs.

use std::path::Path;

use swinfc_data::decode::{DecodeKind, RgbImage, decode_bytes};

/// The four 16×16 blocks of the CMYK fixtures (see tests/fixtures/README.md), as PIL 13 decodes
/// them (exactly these values).
const BLOCKS: [[u8; 3]; 4] = [[200, 50, 30], [20, 90, 220], [128, 128, 128], [240, 230, 60]];

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn pixel(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
    let i = (y * img.width + x) * 3;
    [img.data[i], img.data[i + 1], img.data[i + 2]]
}

fn assert_blocks(name: &str) {
    let img = decode_bytes(&fixture(name)).unwrap();
    assert_eq!((img.width, img.height), (64, 16));
    for (k, want) in BLOCKS.iter().enumerate() {
        let got = pixel(&img, 8 + 16 * k, 8);
        let close = got
            .iter()
            .zip(want)
            .all(|(&g, &w)| (g as i32 - w as i32).abs() <= 4);
        assert!(close, "{name} block {k}: got {got:?}, want {want:?}");
    }
}

#[test]
fn adobe_cmyk_jpeg_decodes_to_the_right_colours() {
    assert_blocks("cmyk_pillow.jpg");
}

#[test]
fn adobe_ycck_jpeg_from_imagemagick_decodes_to_the_right_colours() {
    assert_blocks("ycck_imagemagick.jpg");
}

mod common;

#[test]
fn grey_is_replicated_and_alpha_dropped_without_compositing() {
    let g = decode_bytes(&common::gray_jpeg(16, 8, 90)).unwrap();
    assert!(
        g.data
            .chunks(3)
            .all(|p| p[0] == p[1] && p[1] == p[2] && p[0].abs_diff(90) <= 1)
    );
    // Nearly transparent blue stays pure blue (PIL's convert('RGB') ignores alpha).
    let a = decode_bytes(&common::rgba_png(4, 4, [0, 0, 200, 7])).unwrap();
    assert!(a.data.chunks(3).all(|p| p == [0, 0, 200]));
}

#[test]
fn format_comes_from_magic_bytes_for_every_supported_format() {
    use image::ImageFormat::*;
    for format in [Png, Gif, Bmp, WebP, Jpeg] {
        let img = decode_bytes(&common::rgb_as(format, 12, 10, [10, 200, 30])).unwrap();
        assert_eq!((img.width, img.height), (12, 10), "{format:?}");
        let p = pixel(&img, 5, 5);
        let close = p.iter().zip([10, 200, 30]).all(|(&g, w)| g.abs_diff(w) <= 6);
        assert!(close, "{format:?}: {p:?}");
    }
}

#[test]
fn unreadable_files_say_why() {
    let e = decode_bytes(b"").unwrap_err();
    assert_eq!(e.kind, DecodeKind::EmptyFile);
    let e = decode_bytes(b"<!DOCTYPE html><html>404</html>").unwrap_err();
    assert_eq!(e.kind, DecodeKind::UnknownFormat);
    assert!(e.detail.contains("3c 21 44 4f"), "{e}");
    let e = decode_bytes(&common::truncated_jpeg()).unwrap_err();
    assert_eq!(e.kind, DecodeKind::Truncated, "{e}");
}
