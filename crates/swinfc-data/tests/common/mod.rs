//! Fixture builders shared by the integration tests: small real image files and the three
//! dataset layouts, written into temp dirs.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A solid-colour RGB JPEG.
pub fn jpeg(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb(rgb))),
        ImageFormat::Jpeg,
    )
}

/// A textured RGB JPEG (CUB-like content for the benchmark and loader tests).
pub fn textured_jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(7)
            .wrapping_add(y.wrapping_mul(13))
            .wrapping_add(seed * 31);
        image::Rgb([
            (v % 251) as u8,
            ((x * y + seed) % 241) as u8,
            ((x ^ y) % 239) as u8,
        ])
    });
    encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
}

pub fn gray_jpeg(w: u32, h: u32, v: u8) -> Vec<u8> {
    encode(
        DynamicImage::ImageLuma8(image::GrayImage::from_pixel(w, h, image::Luma([v]))),
        ImageFormat::Jpeg,
    )
}

pub fn rgba_png(w: u32, h: u32, rgba: [u8; 4]) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, image::Rgba(rgba))),
        ImageFormat::Png,
    )
}

pub fn rgb_as(format: ImageFormat, w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb(rgb))),
        format,
    )
}

/// The first half of a JPEG: a truncated download.
pub fn truncated_jpeg() -> Vec<u8> {
    let full = textured_jpeg(64, 48, 3);
    full[..full.len() / 2].to_vec()
}

/// CUB fixture (datasets.md §5): 3 classes, 7 images in `root/CUB_200_2011/`, with a CRLF
/// file, a file without final newline, a trailing blank line, ids not in file order, a
/// grayscale JPEG, an RGBA PNG, a PNG saved as .jpg, a truncated and a zero-byte .jpg.
/// Train: ids 2 (gray), 3 (png-as-jpg), 5 (truncated), 7 (empty); test: 1, 4 (rgba png), 6.
pub fn cub_fixture(root: &Path) {
    let d = root.join("CUB_200_2011");
    let img = d.join("images");
    write(
        &img.join("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"),
        jpeg(40, 30, [200, 10, 10]),
    );
    write(
        &img.join("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"),
        gray_jpeg(30, 40, 90),
    );
    write(
        &img.join("002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg"),
        rgb_as(ImageFormat::Png, 20, 20, [0, 200, 0]),
    );
    write(
        &img.join("002.Laysan_Albatross/Laysan_Albatross_0003_1033.png"),
        rgba_png(20, 20, [0, 0, 200, 7]),
    );
    write(
        &img.join("003.Sooty_Albatross/Sooty_Albatross_0001_1071.jpg"),
        truncated_jpeg(),
    );
    write(
        &img.join("003.Sooty_Albatross/Sooty_Albatross_0002_796339.jpg"),
        jpeg(25, 25, [50, 50, 50]),
    );
    write(
        &img.join("003.Sooty_Albatross/Sooty_Albatross_0003_796359.jpg"),
        b"",
    );
    write(
        &d.join("images.txt"),
        "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg\r\n\
         2 001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg\r\n\
         3 002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg\r\n\
         4 002.Laysan_Albatross/Laysan_Albatross_0003_1033.png\r\n\
         5 003.Sooty_Albatross/Sooty_Albatross_0001_1071.jpg\r\n\
         6 003.Sooty_Albatross/Sooty_Albatross_0002_796339.jpg\r\n\
         7 003.Sooty_Albatross/Sooty_Albatross_0003_796359.jpg\r\n",
    );
    // Joined by id, not by position: this file is out of order and lacks its final newline.
    write(
        &d.join("image_class_labels.txt"),
        "7 3\n1 1\n2 1\n4 2\n3 2\n5 3\n6 3",
    );
    write(
        &d.join("train_test_split.txt"),
        "1 0\n2 1\n3 1\n4 0\n5 1\n6 0\n7 1\n\n",
    );
    write(
        &d.join("classes.txt"),
        "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n3 003.Sooty_Albatross\n",
    );
}

/// NABirds fixture: UUID ids, scattered leaf class ids 295, 555, 817 (plus inner nodes in
/// classes.txt), names with spaces and parentheses, CRLF in one file.
pub const NABIRDS_IDS: [(&str, u32, u8); 5] = [
    ("0000139e-21dc-4d0c-bfe1-4cae3c85c829", 817, 0),
    ("0a1b2c3d-0000-4000-8000-000000000001", 295, 1),
    ("0a1b2c3d-0000-4000-8000-000000000002", 555, 1),
    ("0a1b2c3d-0000-4000-8000-000000000003", 817, 1),
    ("0a1b2c3d-0000-4000-8000-000000000004", 295, 0),
];

pub fn nabirds_path(id: &str, class: u32) -> String {
    format!("{class:04}/{}.jpg", id.replace('-', ""))
}

pub fn nabirds_fixture(root: &Path) {
    let d = root.join("nabirds");
    let mut images = String::new();
    let mut labels = String::new();
    let mut split = String::new();
    for (k, (id, class, train)) in NABIRDS_IDS.iter().enumerate() {
        let rel = nabirds_path(id, *class);
        write(
            &d.join("images").join(&rel),
            jpeg(20 + k as u32, 16, [k as u8 * 40, 100, 100]),
        );
        images.push_str(&format!("{id} {rel}\n"));
        labels.push_str(&format!("{id} {class}\r\n"));
        split.push_str(&format!("{id} {train}\n"));
    }
    write(&d.join("images.txt"), images);
    write(&d.join("image_class_labels.txt"), labels);
    write(&d.join("train_test_split.txt"), split.trim_end());
    write(
        &d.join("classes.txt"),
        "0 Birds\n9 Caracaras and Falcons\n176 Peregrine Falcon\n295 Barn Owl (adult)\n\
         555 Bald Eagle, immature\n817 Peregrine Falcon (immature)\n",
    );
    write(&d.join("hierarchy.txt"), "9 0\n176 9\n817 176\n295 0\n555 0\n");
}

/// WebFG fixture `root/web-bird/{train,val}`: classes sort in byte order (`B_x` < `a_x`), `val/`
/// lacks class `a_x`, upper-case extensions count, non-image and hidden files are skipped,
/// a nested folder is walked.
pub fn webfg_fixture(root: &Path) {
    let d = root.join("web-bird");
    let t = d.join("train");
    write(&t.join("B_x/B_x_00001.jpg"), jpeg(20, 20, [1, 2, 3]));
    write(&t.join("B_x/B_x_00002.JPG"), jpeg(20, 20, [1, 2, 3]));
    write(&t.join("B_x/notes.txt"), "not an image");
    write(&t.join("B_x/.hidden.jpg"), jpeg(20, 20, [1, 2, 3]));
    write(
        &t.join("B_x/sub/B_x_00003.png"),
        rgb_as(ImageFormat::Png, 20, 20, [4, 5, 6]),
    );
    write(
        &t.join("a_x/a_x_00001.webp"),
        rgb_as(ImageFormat::WebP, 20, 20, [7, 8, 9]),
    );
    write(&t.join("C_x/C_x_00001.jpeg"), jpeg(20, 20, [1, 2, 3]));
    write(&t.join(".git/x.jpg"), jpeg(8, 8, [0, 0, 0]));
    let v = d.join("val");
    write(&v.join("C_x/C_x_val_1.jpg"), jpeg(20, 20, [1, 2, 3]));
    write(
        &v.join("B_x/B_x_val_1.bmp"),
        rgb_as(ImageFormat::Bmp, 20, 20, [1, 2, 3]),
    );
    write(
        &v.join("B_x/B_x_val_2.gif"),
        rgb_as(ImageFormat::Gif, 20, 20, [1, 2, 3]),
    );
}
