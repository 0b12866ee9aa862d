//! Resize, rotation, crop, flip and normalisation in plain Rust, matching torchvision on PIL
//! images (the path the papers' numbers come from):
//!
//! - resize: PIL's `Image.resize(BILINEAR)` — a separable triangle filter whose support widens
//!   with the downscale factor (antialiased, as torchvision's `Resize` on PIL images), in PIL's
//!   fixed-point arithmetic with 8-bit rounding between the horizontal and vertical passes;
//! - rotation: `RandomRotation` defaults — nearest neighbour about the image centre, same size,
//!   fill 0 (black), bit-identical to Pillow's fixed-point nearest-neighbour path;
//! - crop: `RandomCrop` (train) / `CenterCrop` (test, Python's round-half-even offset);
//! - flip: `RandomHorizontalFlip(0.5)`;
//! - normalise: `ToTensor` + `Normalize(ImageNet mean, std)` in f32, through a per-channel table.
//!
//! Rotation, crop, flip and normalisation are fused into one pass over the crop's pixels: only
//! the pixels that survive the crop are ever rotated.

use std::borrow::Cow;

use crate::config::DataConfig;
use crate::decode::RgbImage;
use crate::rng::{Rng, TAG_AUGMENT};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// PIL's `PRECISION_BITS` for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The random choices of one train sample, drawn in torchvision's order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainParams {
    /// Counter-clockwise, as torchvision.
    pub angle_deg: f64,
    pub top: usize,
    pub left: usize,
    pub flip: bool,
}

/// The per-sample transform of a config: sizes and the normalisation table.
#[derive(Clone, Debug)]
pub struct Pipeline {
    resize: usize,
    crop: usize,
    rotation_deg: f64,
    /// `lut[c][v]` = normalised value of byte `v` in channel `c`.
    lut: [[f32; 256]; 3],
}

impl Pipeline {
    pub fn new(cfg: &DataConfig) -> Self {
        Self::with_sizes(cfg.resize, cfg.crop, cfg.rotation_deg)
    }

    pub fn with_sizes(resize: usize, crop: usize, rotation_deg: f64) -> Self {
        let mut lut = [[0.0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        Pipeline {
            resize,
            crop,
            rotation_deg,
            lut,
        }
    }

    /// Side of the output images.
    pub fn crop(&self) -> usize {
        self.crop
    }

    /// Floats per output image (3 × crop × crop).
    pub fn image_len(&self) -> usize {
        3 * self.crop * self.crop
    }

    /// The augmentation of (`seed`, `epoch`, `index`): the same key always gives the same draw.
    pub fn train_params(&self, seed: u64, epoch: u64, index: usize) -> TrainParams {
        let mut rng = Rng::keyed(&[seed, TAG_AUGMENT, epoch, index as u64]);
        let d = self.rotation_deg;
        let angle_deg = -d + 2.0 * d * rng.unit_f64();
        let slack = (self.resize - self.crop) as u64;
        let top = rng.below_inclusive(slack) as usize;
        let left = rng.below_inclusive(slack) as usize;
        let flip = rng.unit_f64() < 0.5;
        TrainParams {
            angle_deg,
            top,
            left,
            flip,
        }
    }

    /// Train transform into `out` (CHW, `image_len()` floats).
    pub fn train(&self, img: &RgbImage, params: &TrainParams, out: &mut [f32]) {
        let resized = self.resized(img);
        self.rotate_crop_normalise(&resized, params, out);
    }

    /// Test transform (resize, centre crop) into `out`.
    pub fn test(&self, img: &RgbImage, out: &mut [f32]) {
        let resized = self.resized(img);
        let off = center_offset(self.resize, self.crop);
        let params = TrainParams {
            angle_deg: 0.0,
            top: off,
            left: off,
            flip: false,
        };
        self.rotate_crop_normalise(&resized, &params, out);
    }

    /// `img` at `resize`×`resize`, borrowed when it already is (synthetic data, benchmarks).
    fn resized<'a>(&self, img: &'a RgbImage) -> Cow<'a, RgbImage> {
        if img.width == self.resize && img.height == self.resize {
            Cow::Borrowed(img)
        } else {
            Cow::Owned(resize(img, self.resize, self.resize))
        }
    }

    /// Rotate `img` (square, `resize` side) about its centre, crop, flip, normalise: all in one
    /// pass over the output. The rotation is Pillow's `Image.rotate(angle, NEAREST, fillcolor=0)`
    /// bit for bit: the same inverse matrix (entries rounded to 15 decimals as in Python), mapped
    /// through Pillow's 16.16 fixed-point nearest-neighbour path (`affine_fixed`), which samples
    /// at pixel centres and floors.
    fn rotate_crop_normalise(&self, img: &RgbImage, p: &TrainParams, out: &mut [f32]) {
        let n = self.crop;
        assert_eq!(out.len(), 3 * n * n, "output buffer size");
        let (w, h) = (img.width as i64, img.height as i64);
        let round15 = |v: f64| (v * 1e15).round() / 1e15;
        let theta = -p.angle_deg.to_radians();
        let (a, b) = (round15(theta.cos()), round15(theta.sin()));
        let (d, e) = (round15(-theta.sin()), round15(theta.cos()));
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        let c = a * -cx + b * -cy + cx;
        let f = d * -cx + e * -cy + cy;
        let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i64;
        let (a0, a1, a3, a4) = (fix(a), fix(b), fix(d), fix(e));
        let a2 = fix(c + a * 0.5 + b * 0.5);
        let a5 = fix(f + d * 0.5 + e * 0.5);

        let plane = n * n;
        let (r_out, rest) = out.split_at_mut(plane);
        let (g_out, b_out) = rest.split_at_mut(plane);
        let fill = [self.lut[0][0], self.lut[1][0], self.lut[2][0]];
        let (left, top) = (p.left as i64, p.top as i64);
        for i in 0..n {
            let y = top + i as i64;
            let mut xx = a2 + a0 * left + a1 * y;
            let mut yy = a5 + a3 * left + a4 * y;
            let row = i * n;
            for j in 0..n {
                let (sx, sy) = (xx >> 16, yy >> 16);
                xx += a0;
                yy += a3;
                let dst = row + if p.flip { n - 1 - j } else { j };
                if sx >= 0 && sy >= 0 && sx < w && sy < h {
                    let s = (sy * w + sx) as usize * 3;
                    r_out[dst] = self.lut[0][img.data[s] as usize];
                    g_out[dst] = self.lut[1][img.data[s + 1] as usize];
                    b_out[dst] = self.lut[2][img.data[s + 2] as usize];
                } else {
                    r_out[dst] = fill[0];
                    g_out[dst] = fill[1];
                    b_out[dst] = fill[2];
                }
            }
        }
    }
}

/// torchvision `CenterCrop`: `int(round((size - crop) / 2))`, Python rounding half to even.
fn center_offset(size: usize, crop: usize) -> usize {
    let diff = size - crop;
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// One axis of PIL's resampling: for each output position the first input index, and
/// fixed-point weights (`ksize` per output, zero-padded).
struct Coeffs {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

/// PIL `precompute_coeffs` with the bilinear (triangle) filter, then `normalize_coeffs_8bpc`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut c = Coeffs {
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        ksize,
        weights: vec![0; out_size * ksize],
    };
    let mut w = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as isize).max(0) as usize;
        let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
        let len = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(len) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            *wx = (1.0 - t.abs()).max(0.0);
            total += *wx;
        }
        let k = &mut c.weights[xx * ksize..xx * ksize + len];
        for (x, kx) in k.iter_mut().enumerate() {
            let v = if total != 0.0 { w[x] / total } else { 0.0 };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            *kx = if v < 0.0 { scaled - 0.5 } else { scaled + 0.5 } as i32;
        }
        c.start.push(xmin);
        c.len.push(len);
    }
    c
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize to `out_w`×`out_h` like PIL's `resize(BILINEAR)`: horizontal pass first, each pass
/// skipped when its axis keeps its size.
pub fn resize(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let mut cur = Cow::Borrowed(img);
    if img.width != out_w {
        cur = Cow::Owned(resize_horizontal(&cur, out_w));
    }
    if img.height != out_h {
        cur = Cow::Owned(resize_vertical(&cur, out_h));
    }
    cur.into_owned()
}

fn resize_horizontal(img: &RgbImage, out_w: usize) -> RgbImage {
    let c = coeffs(img.width, out_w);
    let (starts, weights) = padded(&c, img.width);
    let mut data = vec![0u8; out_w * img.height * 3];
    let rows = img
        .data
        .chunks_exact(img.width * 3)
        .zip(data.chunks_exact_mut(out_w * 3));
    // Upscaling (and mild downscaling) always has 3 taps: a fixed-size inner loop unrolls.
    match c.ksize {
        3 if img.width >= 3 => rows.for_each(|(src, dst)| row_taps::<3>(src, dst, &starts, &weights)),
        _ => rows.for_each(|(src, dst)| row_taps_dyn(src, dst, &starts, &weights, c.ksize)),
    }
    RgbImage {
        width: out_w,
        height: img.height,
        data,
    }
}

/// Every output pixel gets exactly `ksize` taps: windows that would run past the input's end
/// are moved left and their weights shifted right behind zeros, which adds nothing to the sum.
fn padded(c: &Coeffs, in_size: usize) -> (Vec<usize>, Vec<i32>) {
    let k = c.ksize.min(in_size);
    let mut starts = Vec::with_capacity(c.start.len());
    let mut weights = vec![0; c.start.len() * c.ksize];
    for (x, (&start, &len)) in c.start.iter().zip(&c.len).enumerate() {
        let s = start.min(in_size - k);
        let shift = start - s;
        let w = &mut weights[x * c.ksize..(x + 1) * c.ksize];
        w[shift..shift + len].copy_from_slice(&c.weights[x * c.ksize..x * c.ksize + len]);
        starts.push(s);
    }
    (starts, weights)
}

fn row_taps<const K: usize>(src: &[u8], dst: &mut [u8], starts: &[usize], weights: &[i32]) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for ((px, &start), w) in dst.chunks_exact_mut(3).zip(starts).zip(weights.chunks_exact(K)) {
        let taps = &src[start * 3..start * 3 + K * 3];
        let (mut r, mut g, mut b) = (half, half, half);
        for t in 0..K {
            r += taps[t * 3] as i32 * w[t];
            g += taps[t * 3 + 1] as i32 * w[t];
            b += taps[t * 3 + 2] as i32 * w[t];
        }
        px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
    }
}

fn row_taps_dyn(src: &[u8], dst: &mut [u8], starts: &[usize], weights: &[i32], k: usize) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for ((px, &start), w) in dst.chunks_exact_mut(3).zip(starts).zip(weights.chunks_exact(k)) {
        let taps = src[start * 3..].chunks_exact(3);
        let (mut r, mut g, mut b) = (half, half, half);
        for (p, &wt) in taps.zip(w) {
            r += p[0] as i32 * wt;
            g += p[1] as i32 * wt;
            b += p[2] as i32 * wt;
        }
        px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
    }
}

fn resize_vertical(img: &RgbImage, out_h: usize) -> RgbImage {
    let c = coeffs(img.height, out_h);
    let stride = img.width * 3;
    let mut data = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    let half = 1i32 << (PRECISION_BITS - 1);
    for (y, dst) in data.chunks_exact_mut(stride).enumerate() {
        acc.fill(half);
        let k = &c.weights[y * c.ksize..y * c.ksize + c.len[y]];
        for (t, &wt) in k.iter().enumerate() {
            let row = &img.data[(c.start[y] + t) * stride..(c.start[y] + t + 1) * stride];
            multiply_add(&mut acc, row, wt);
        }
        for (o, &a) in dst.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage {
        width: img.width,
        height: out_h,
        data,
    }
}

/// `acc[i] += row[i] * wt` over whole rows: a contiguous multiply-add the compiler vectorises.
/// Baseline x86-64 (SSE2) has no 32-bit vector multiply, so use AVX2 where the CPU has it; the
/// arithmetic is integer, so both paths give identical bytes.
fn multiply_add(acc: &mut [i32], row: &[u8], wt: i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { multiply_add_avx2(acc, row, wt) };
        return;
    }
    multiply_add_portable(acc, row, wt);
}

#[inline(always)]
fn multiply_add_portable(acc: &mut [i32], row: &[u8], wt: i32) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += v as i32 * wt;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn multiply_add_avx2(acc: &mut [i32], row: &[u8], wt: i32) {
    multiply_add_portable(acc, row, wt);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_offset_rounds_half_to_even() {
        assert_eq!(center_offset(512, 384), 64);
        assert_eq!(center_offset(10, 5), 2); // 2.5 -> 2
        assert_eq!(center_offset(12, 5), 4); // 3.5 -> 4
    }

    #[test]
    fn resize_keeps_constant_images_constant() {
        let img = RgbImage {
            width: 37,
            height: 23,
            data: [10u8, 200, 77].repeat(37 * 23),
        };
        for (w, h) in [(64, 64), (8, 5), (37, 50)] {
            let out = resize(&img, w, h);
            assert!(out.data.chunks(3).all(|p| p == [10, 200, 77]));
        }
    }

    #[test]
    fn resize_handles_images_narrower_than_the_filter() {
        for (w, h) in [(1, 1), (2, 1), (1, 2), (2, 3)] {
            let img = RgbImage {
                width: w,
                height: h,
                data: vec![9; w * h * 3],
            };
            let out = resize(&img, 5, 4);
            assert_eq!(out.data, vec![9; 5 * 4 * 3], "{w}x{h}");
        }
    }

    #[test]
    fn zero_angle_no_flip_is_a_plain_crop() {
        let p = Pipeline::with_sizes(4, 2, 0.0);
        let img = RgbImage {
            width: 4,
            height: 4,
            data: (0..48).map(|v| v as u8).collect(),
        };
        let mut out = vec![0.0; 12];
        p.rotate_crop_normalise(
            &img,
            &TrainParams {
                angle_deg: 0.0,
                top: 1,
                left: 2,
                flip: false,
            },
            &mut out,
        );
        // Red channel of pixels (1,2), (1,3), (2,2), (2,3).
        let red: Vec<f32> = [18u8, 21, 30, 33].iter().map(|&v| p.lut[0][v as usize]).collect();
        assert_eq!(&out[..4], &red[..]);
    }
}
