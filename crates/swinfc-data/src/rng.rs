//! A tiny, versioned-by-us RNG (SplitMix64). Augmentation and shuffling must give the same bytes
//! forever for the same key, whatever the `rand` version or thread layout, so we do not borrow a
//! library generator whose stream may change between releases.

/// SplitMix64 finaliser: a bijective 64-bit mix, good enough to derive independent streams.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Purpose tags so that e.g. the shuffle of epoch 3 and the augmentation of sample 3 never share
/// a stream.
pub(crate) const TAG_SHUFFLE: u64 = 0x5348_5546_464C_4531; // "SHUFFLE1"
pub(crate) const TAG_AUGMENT: u64 = 0x4155_474D_454E_5431; // "AUGMENT1"
pub(crate) const TAG_SYNTH: u64 = 0x5359_4E54_4845_5431; // "SYNTHET1"

pub(crate) struct Rng(u64);

impl Rng {
    /// A stream keyed by `parts` (e.g. seed, tag, epoch, index): each part is folded in with a mix,
    /// so (1, 2) and (2, 1) give unrelated streams.
    pub(crate) fn keyed(parts: &[u64]) -> Self {
        Rng(parts.iter().fold(0, |h, &p| mix(h ^ p)))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..=hi` without modulo bias (Lemire's multiply-shift with rejection).
    pub(crate) fn below_inclusive(&mut self, hi: u64) -> u64 {
        if hi == u64::MAX {
            return self.next_u64();
        }
        let n = hi + 1;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_inclusive_stays_in_range_and_covers_it() {
        let mut rng = Rng::keyed(&[1, 2]);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = rng.below_inclusive(4) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn keyed_streams_depend_on_order() {
        assert_ne!(Rng::keyed(&[1, 2]).next_u64(), Rng::keyed(&[2, 1]).next_u64());
    }
}
