//! `dataset: synthetic`: images generated in memory from a seed, fine-grained in spirit.
//!
//! Every image shows the same coarse scene — a noisy two-colour gradient background and one large
//! ellipse ("the bird") whose position, size and colour jitter per sample — so the coarse shape
//! carries no class information. The class lives in one small detail on the body: a patch whose
//! colour (6), position relative to the body (4) and texture (solid, stripes, checker) together
//! encode the class (up to 72 classes). The patch colour also jitters per sample, so a model must
//! find and read the detail, not memorise pixels; chance stays at 1/classes.
//!
//! Images are generated at `img_size` and then go through the same resize/rotate/crop pipeline
//! as decoded files, so `resize`/`crop` mean the same thing for every dataset.

use crate::config::SyntheticConfig;
use crate::dataset::{Dataset, Sample, Source, Split};
use crate::rng::{Rng, TAG_SYNTH};

const PALETTE: [[u8; 3]; 6] = [
    [220, 40, 40],
    [40, 200, 60],
    [50, 80, 230],
    [240, 220, 40],
    [230, 60, 220],
    [40, 220, 230],
];
/// Patch centres relative to the body centre, in units of the image side. Training flips images
/// horizontally, so every placement is its own mirror image: a patch on the vertical axis, or a
/// symmetric pair. (Left-versus-right placements would be one class after a flip.)
const POSITIONS: [&[(f32, f32)]; 4] = [
    &[(0.0, -0.09)],
    &[(0.0, 0.09)],
    &[(-0.12, -0.05), (0.12, -0.05)],
    &[(-0.12, 0.05), (0.12, 0.05)],
];
const TEXTURES: usize = 3;
pub const MAX_CLASSES: usize = PALETTE.len() * POSITIONS.len() * TEXTURES;

/// Everything needed to regenerate one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthKey {
    pub seed: u64,
    pub class: usize,
    pub split: Split,
    /// Index of the image within its class and split.
    pub n: usize,
    pub size: usize,
}

pub(crate) fn dataset(cfg: &SyntheticConfig) -> Dataset {
    let make = |split: Split, per_class: usize| -> Vec<Sample> {
        (0..cfg.classes)
            .flat_map(|class| {
                (0..per_class).map(move |n| Sample {
                    id: format!("{}/{class:03}/{n:05}", split.name()),
                    source: Source::Synthetic(SynthKey {
                        seed: cfg.seed,
                        class,
                        split,
                        n,
                        size: cfg.img_size,
                    }),
                    label: class,
                })
            })
            .collect()
    };
    Dataset {
        name: "synthetic".into(),
        train: make(Split::Train, cfg.train_per_class),
        test: make(Split::Test, cfg.test_per_class),
        classes: (0..cfg.classes).map(|c| format!("class_{c:03}")).collect(),
    }
}

/// Render the image of `key` as interleaved RGB, `size`×`size`.
pub fn render(key: &SynthKey) -> Vec<u8> {
    let s = key.size;
    let sf = s as f32;
    let mut rng = Rng::keyed(&[
        key.seed,
        TAG_SYNTH,
        key.split as u64,
        key.class as u64,
        key.n as u64,
    ]);
    let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.unit_f64() as f32;

    let bg0 = [uniform(60.0, 140.0), uniform(60.0, 140.0), uniform(60.0, 140.0)];
    let bg1 = [uniform(60.0, 140.0), uniform(60.0, 140.0), uniform(60.0, 140.0)];
    let body_c = [uniform(120.0, 170.0), uniform(90.0, 130.0), uniform(50.0, 90.0)];
    let (cx, cy) = (sf * uniform(0.45, 0.55), sf * uniform(0.45, 0.55));
    let (rx, ry) = (sf * uniform(0.27, 0.33), sf * uniform(0.20, 0.24));

    let colour = key.class % PALETTE.len();
    let position = (key.class / PALETTE.len()) % POSITIONS.len();
    let texture = key.class / (PALETTE.len() * POSITIONS.len()) % TEXTURES;
    let patch_c = PALETTE[colour].map(|v| (v as f32 + uniform(-20.0, 20.0)).clamp(0.0, 255.0));
    let (jx, jy) = (uniform(-0.02, 0.02) * sf, uniform(-0.02, 0.02) * sf);
    let patches: Vec<(f32, f32)> = POSITIONS[position]
        .iter()
        .map(|&(dx, dy)| (cx + sf * dx + jx, cy + sf * dy + jy))
        .collect();
    let pr = (sf / 12.0).max(2.0);
    let period = (s / 32).max(1);
    let noise_seed = rng.next_u64();

    let mut out = vec![0u8; s * s * 3];
    for y in 0..s {
        for x in 0..s {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (fx + fy) / (2.0 * sf);
            let mut c = [0.0f32; 3];
            for k in 0..3 {
                c[k] = bg0[k] * (1.0 - t) + bg1[k] * t;
            }
            let (ex, ey) = ((fx - cx) / rx, (fy - cy) / ry);
            if ex * ex + ey * ey <= 1.0 {
                c = body_c;
            }
            if let Some(&(px, py)) = patches
                .iter()
                .find(|(px, py)| (fx - px).abs() <= pr && (fy - py).abs() <= pr)
            {
                let (qx, qy) = (
                    ((fx - px + pr) as usize) / period,
                    ((fy - py + pr) as usize) / period,
                );
                let on = match texture {
                    0 => true,
                    1 => qy % 2 == 0,
                    _ => (qx + qy) % 2 == 0,
                };
                if on {
                    c = patch_c;
                }
            }
            // Cheap per-pixel noise from a hash, so rendering stays O(pixels) with no RNG state.
            let h = crate::rng::mix(noise_seed ^ ((y * s + x) as u64));
            for (k, v) in c.iter().enumerate() {
                let n = ((h >> (k * 8)) & 0xFF) as f32 / 255.0 * 16.0 - 8.0;
                out[(y * s + x) * 3 + k] = (v + n).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::POSITIONS;

    /// A horizontal flip (x → −x) maps every placement onto itself, so no two classes merge
    /// under the training augmentation.
    #[test]
    fn placements_are_their_own_mirror_images() {
        for (k, placement) in POSITIONS.iter().enumerate() {
            for &(x, y) in *placement {
                assert!(
                    placement.contains(&(-x, y)),
                    "placement {k} is not mirror-symmetric"
                );
            }
        }
    }
}
