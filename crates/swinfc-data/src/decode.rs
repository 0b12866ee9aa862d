//! Bytes → 8-bit RGB, the way torchvision's PIL loader (`Image.open(p).convert('RGB')`) does it:
//! format by magic bytes (never the extension), grey replicated, alpha dropped without
//! compositing, palettes looked up, EXIF orientation ignored.

use std::fmt;
use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::dataset::{Sample, Source};
use crate::synthetic;

/// An interleaved RGB image, row-major, `height` rows of `width * 3` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Why an image could not be read: its `kind` (the key skipped files are counted by) and the
/// decoder's detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeFailure {
    pub kind: DecodeKind,
    pub detail: String,
}

/// What kind of failure made an image unreadable. Few and coarse on purpose: the decoders word the
/// same failure many ways, and skip counts are kept per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DecodeKind {
    EmptyFile,
    IoError,
    UnknownFormat,
    Truncated,
    DecodeError,
}

impl fmt::Display for DecodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeKind::EmptyFile => "empty file",
            DecodeKind::IoError => "io error",
            DecodeKind::UnknownFormat => "unknown format",
            DecodeKind::Truncated => "truncated",
            DecodeKind::DecodeError => "decode error",
        })
    }
}

impl fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl DecodeFailure {
    fn new(kind: DecodeKind, detail: impl Into<String>) -> Self {
        DecodeFailure {
            kind,
            detail: detail.into(),
        }
    }
}

/// The formats we decode (datasets.md §6: what web crawls contain).
const FORMATS: &[ImageFormat] = &[
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::WebP,
    ImageFormat::Pnm,
];

/// Decode an encoded image held in memory.
pub fn decode_bytes(bytes: &[u8]) -> Result<RgbImage, DecodeFailure> {
    if bytes.is_empty() {
        return Err(DecodeFailure::new(DecodeKind::EmptyFile, "0 bytes"));
    }
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| FORMATS.contains(f))
        .ok_or_else(|| {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            DecodeFailure::new(
                DecodeKind::UnknownFormat,
                format!("starts with {}", head.join(" ")),
            )
        })?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(DecodeFailure::new(
            DecodeKind::Truncated,
            "JPEG: no end-of-image marker after the last scan",
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let img = reader.decode().map_err(|e| {
        let detail = e.to_string();
        // The decoders word it differently; one key keeps the skip counts readable.
        let kind = if detail.contains("end of file")
            || detail.contains("EOF")
            || detail.contains("truncated")
            || detail.contains("No more bytes")
            || detail.contains("exhausted")
        {
            DecodeKind::Truncated
        } else {
            DecodeKind::DecodeError
        };
        DecodeFailure::new(kind, format!("{format:?}: {detail}"))
    })?;
    Ok(to_rgb(img))
}

/// The JPEG decoder is lenient and grey-fills a cut-off file (PIL's `LOAD_TRUNCATED_IMAGES`);
/// torchvision's default loader raises instead, and a half-grey training image is noise, so a
/// truncated JPEG is a failure here. Entropy-coded data stuffs every 0xFF, so the last `FF DA`
/// (start of scan) belongs to the main image's last scan — after any EXIF thumbnail, which has
/// its own end marker — and a complete file has an `FF D9` (end of image) after it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn to_rgb(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        // Grey: replicate; RGBA/LA: drop alpha (PIL's convert('RGB') does not composite);
        // 16-bit and float: image's conversion rounds to 8 bits.
        other => other.to_rgb8().into_raw(),
    };
    RgbImage { width, height, data }
}

/// The pixels of a sample: its file decoded, or its synthetic image rendered.
pub fn load(sample: &Sample) -> Result<RgbImage, DecodeFailure> {
    match &sample.source {
        Source::File(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| DecodeFailure::new(DecodeKind::IoError, e.to_string()))?;
            decode_bytes(&bytes)
        }
        Source::Synthetic(key) => Ok(RgbImage {
            width: key.size,
            height: key.size,
            data: synthetic::render(key),
        }),
    }
}
