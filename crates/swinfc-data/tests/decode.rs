//! Decoding: formats by magic bytes, colour modes as PIL's convert('RGB'), CMYK/YCCK JPEGs.

use std::path::Path;

use swinfc_data::decode::{RgbImage, decode_bytes};

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
