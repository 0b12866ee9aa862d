//! The exact GELU's per-element math for the Flex kernels, vectorised: `libm`'s `erff`/`expf` are
//! scalar calls with range branches (2–3 % of a CPU step), and PyTorch's CPU GELU is vectorised.
//!
//! erf and exp are evaluated in f64 on [`LANES`] elements at a time, with no branches and no calls,
//! so LLVM turns each step into independent vector operations; the loops are compiled once more
//! for AVX-512 and for AVX2 and picked at run time (as Flex's and gemm's kernels are). No FMA is
//! used, so every instruction set gives the same bits. The f64 results are within ~1e-10 of the
//! exact values, so the f32 ones are within 1 ulp of `erff`'s (tested over a sweep).

/// Elements evaluated together: enough independent chains to hide the FP latency of Horner's rule
/// (eight AVX-512 vectors of f64; `swinfc bench ops`' GELU forward and backward, 1 thread: 11.6 ms
/// at 16 lanes, 6.8 at 32, 5.2 at 64).
const LANES: usize = 64;
type Lanes = [f64; LANES];

/// Σ 2/√π·(−1)ⁿ·t²ⁿ⁺¹/(n!(2n+1)) is below 1e-13 past this many terms at |t| = [`ERF_ONE_AT`].
const ERF_TERMS: usize = 64;
/// erf(t) rounds to ±1 in f32 from ~3.92 on (erfc(4) ≈ 1.5e-8, under half an ulp below 1).
const ERF_ONE_AT: f64 = 4.0;

/// aₙ = (−1)ⁿ/(n!·(2n+1)), the Taylor coefficients of erf(t)·√π/(2t) in t², built at compile time.
const ERF_COEFFS: [f64; ERF_TERMS] = {
    let mut a = [0.0; ERF_TERMS];
    let mut inv_fact = 1.0; // 1/n!
    let mut n = 0;
    while n < ERF_TERMS {
        let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
        a[n] = sign * inv_fact / (2 * n + 1) as f64;
        inv_fact /= (n + 1) as f64;
        n += 1;
    }
    a
};

/// 1/i for i = 1..=13, the steps of eʳ's Taylor series (divisions would not vectorise well).
const INV_1_TO_13: [f64; 13] = {
    let mut a = [0.0; 13];
    let mut i = 0;
    while i < 13 {
        a[i] = 1.0 / (i + 1) as f64;
        i += 1;
    }
    a
};

/// Terms enough for 1e-13 when every lane has |t| ≤ [`SHORT_SERIES_UP_TO`]: 4²⁶/26!/53 ≈ 2e-13.
const SHORT_SERIES_TERMS: usize = 26;
/// GELU's inputs are mostly small: 74 % of blocks of 64 N(0,1) pre-activations have every
/// |x/√2| ≤ 2 (P(|x| > 2√2) ≈ 0.47 %), and take the short series.
const SHORT_SERIES_UP_TO: f64 = 2.0;

// Every per-lane step below is a plain `for` loop over the lanes, not `map` or `from_fn`: their
// closures are compiled as functions of their own, for the baseline CPU, and called per lane
// (perf showed them as `Fn::call`, a quarter of the train step), where a loop is inlined into the
// AVX-512 or AVX2 copy and vectorised.

/// erf(t) per lane, to ~1e-10 absolute.
#[inline(always)]
fn erf(t: Lanes) -> Lanes {
    // The Taylor series at 0 over the clamped argument: its terms peak near 16ⁿ/n! ≈ 9e5 at
    // |t| = 4, so cancellation costs 6 of f64's 16 digits, leaving ~1e-10, 600× below an f32 ulp.
    let (mut c, mut z) = ([0.0; LANES], [0.0; LANES]);
    let mut short = true;
    for l in 0..LANES {
        c[l] = t[l].clamp(-ERF_ONE_AT, ERF_ONE_AT);
        z[l] = c[l] * c[l];
        short &= c[l].abs() <= SHORT_SERIES_UP_TO;
    }
    // One branch per block, not per lane, so the loops stay vectorised.
    let terms = if short {
        &ERF_COEFFS[..SHORT_SERIES_TERMS]
    } else {
        &ERF_COEFFS[..]
    };
    let mut acc = [0.0; LANES];
    for a in terms.iter().rev() {
        for l in 0..LANES {
            acc[l] = acc[l] * z[l] + a;
        }
    }
    let mut out = [0.0; LANES];
    for l in 0..LANES {
        let series = std::f64::consts::FRAC_2_SQRT_PI * c[l] * acc[l];
        out[l] = if t[l].abs() >= ERF_ONE_AT {
            t[l].signum()
        } else {
            series
        };
    }
    out
}

/// eʸ per lane for y ≤ 0 (clamped at −700, where it is 0 in f32 anyway), to ~1e-16 relative.
#[inline(always)]
fn exp_nonpositive(y: Lanes) -> Lanes {
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // Adding and subtracting 1.5·2⁵² rounds to the nearest integer without a call to `round`.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // y = k·ln2 + r with |r| ≤ ln2/2: eʳ by Taylor to r¹³ (error < 2e-16), 2ᵏ from exponent bits.
    let (mut k, mut r) = ([0.0; LANES], [0.0; LANES]);
    for l in 0..LANES {
        let y = y[l].clamp(-700.0, 0.0);
        k[l] = (y * std::f64::consts::LOG2_E + ROUND) - ROUND;
        r[l] = (y - k[l] * LN2_HI) - k[l] * LN2_LO;
    }
    let mut p = [1.0; LANES];
    for inv_i in INV_1_TO_13.iter().rev() {
        for l in 0..LANES {
            p[l] = 1.0 + p[l] * r[l] * inv_i;
        }
    }
    for l in 0..LANES {
        p[l] *= f64::from_bits(((k[l] as i64 + 1023) as u64) << 52);
    }
    p
}

/// Φ(x) = ½·(1 + erf(x/√2)), the standard normal CDF.
#[inline(always)]
fn normal_cdf(x: Lanes) -> Lanes {
    let mut t = [0.0; LANES];
    for l in 0..LANES {
        t[l] = x[l] * std::f64::consts::FRAC_1_SQRT_2;
    }
    let mut e = erf(t);
    for e in &mut e {
        *e = 0.5 * (1.0 + *e);
    }
    e
}

/// φ(x) = e^(−x²/2)/√(2π), the standard normal density.
#[inline(always)]
fn normal_pdf(x: Lanes) -> Lanes {
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    let mut y = [0.0; LANES];
    for l in 0..LANES {
        y[l] = -0.5 * x[l] * x[l];
    }
    let mut e = exp_nonpositive(y);
    for e in &mut e {
        *e *= INV_SQRT_2PI;
    }
    e
}

/// Applies `$f` to `$inputs` (equal lengths) [`LANES`] elements at a time, writing `$out`. A macro,
/// because a function item passed as `impl Fn` is called through `Fn::call`, compiled for the
/// baseline CPU outside the AVX-512 and AVX2 copies, with all of `$f`'s math inlined there.
macro_rules! per_lanes {
    ($inputs:expr, $out:expr, $f:ident) => {
        let inputs: [&[f32]; _] = $inputs;
        for (start, out) in (0..).step_by(LANES).zip($out.chunks_mut(LANES)) {
            let mut lanes = [[0.0; LANES]; _];
            for (lanes, input) in lanes.iter_mut().zip(inputs) {
                for (lane, &v) in lanes.iter_mut().zip(&input[start..]) {
                    *lane = v as f64;
                }
            }
            for (o, v) in out.iter_mut().zip($f(lanes)) {
                *o = v as f32;
            }
        }
    };
}

/// Compiles `$generic` again with `$features` enabled and picks the best at run time.
macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) { $generic($($arg),*) }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) { $generic($($arg),*) }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

// The per-block bodies are named `inline(always)` functions, not closures: a closure is compiled
// as its own function for the baseline CPU and would not get the AVX-512 or AVX2 code.
#[inline(always)]
fn gelu_lanes([x]: [Lanes; 1]) -> Lanes {
    let mut y = normal_cdf(x);
    for l in 0..LANES {
        y[l] *= x[l];
    }
    y
}

#[inline(always)]
fn gelu_backward_lanes([x, g]: [Lanes; 2]) -> Lanes {
    let (cdf, pdf) = (normal_cdf(x), normal_pdf(x));
    let mut dx = [0.0; LANES];
    for l in 0..LANES {
        dx[l] = g[l] * (cdf[l] + x[l] * pdf[l]);
    }
    dx
}

#[cfg(test)]
#[inline(always)]
fn erf_lanes([t]: [Lanes; 1]) -> Lanes {
    erf(t)
}

#[inline(always)]
fn gelu_generic(x: &[f32], y: &mut [f32]) {
    per_lanes!([x], y, gelu_lanes);
}

#[inline(always)]
fn gelu_backward_generic(x: &[f32], g: &[f32], dx: &mut [f32]) {
    per_lanes!([x, g], dx, gelu_backward_lanes);
}

#[cfg(test)]
#[inline(always)]
fn erf_generic(t: &[f32], out: &mut [f32]) {
    per_lanes!([t], out, erf_lanes);
}

dispatch!(gelu, gelu_generic, (x: &[f32], y: &mut [f32]));
dispatch!(gelu_backward, gelu_backward_generic, (x: &[f32], g: &[f32], dx: &mut [f32]));
// erf alone, as GELU evaluates it, for the test against `erff`.
#[cfg(test)]
dispatch!(erf_f32, erf_generic, (t: &[f32], out: &mut [f32]));

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in f32 ulps, across zero too.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |x: f32| {
            let bits = x.to_bits() as i64;
            if bits < 0x8000_0000 {
                bits
            } else {
                0x8000_0000 - bits
            }
        };
        (key(a) - key(b)).unsigned_abs() as u32
    }

    #[test]
    fn erf_is_within_one_ulp_of_libm_erff() {
        // Every 997th f32 in [−5, 5] (2 M values, as dense near 0 as the f32s are), the boundaries
        // of erff's ranges and ours, and a length that leaves a partial block of lanes.
        let mut xs: Vec<f32> = (0..5.0f32.to_bits())
            .step_by(997)
            .map(f32::from_bits)
            .flat_map(|x| [x, -x])
            .collect();
        for x in [
            0.0,
            1e-30,
            0.5,
            0.84375,
            1.25,
            2.857,
            3.9,
            3.92,
            4.0,
            6.0,
            1e30,
            f32::MAX,
        ] {
            xs.extend([x, -x]);
        }
        xs.push(0.3);
        let mut ours = vec![0.0; xs.len()];
        erf_f32(&xs, &mut ours);
        let (worst, at) = xs
            .iter()
            .zip(&ours)
            .map(|(&x, &e)| (ulps(e, libm::erff(x)), x))
            .fold((0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(worst <= 1, "{worst} ulps at x = {at:e}");
    }

    #[test]
    fn exp_matches_std_to_a_few_f64_ulps() {
        for i in (0..=70_000).step_by(LANES) {
            let y: Lanes = std::array::from_fn(|l| -((i + l).min(70_000) as f64) / 100.0);
            for (y, ours) in y.iter().zip(exp_nonpositive(y)) {
                let exact = y.exp();
                assert!(
                    (ours - exact).abs() <= 4.0 * f64::EPSILON * exact,
                    "e^{y}: {ours} vs {exact}"
                );
            }
        }
    }
}
