//! The element-wise loops of the fused CPU ops (softmax, GELU, SiLU), written so
//! that the compiler vectorises them: a branch-free `exp` built from
//! arithmetic and bit operations instead of a libm call per element, and
//! each loop compiled twice, for the baseline target and for AVX2 + FMA,
//! chosen at run time (this project's CPU has AVX2; CI's may not).
//!
//! Plain float arithmetic only: Rust never contracts `a * b + c` into an
//! FMA or reorders a sum without being told, so both copies compute the
//! same bits, and a run is reproducible on any x86-64 machine.

/// Loops over fewer values than this run on the calling thread: waking
/// candle's CPU thread pool costs a few microseconds.
const PAR_MIN: usize = 1 << 15;

/// Values per block handed to one thread of the pool at a time.
const PAR_BLOCK: usize = 1 << 13;

/// Calls `f(offset, block)` for consecutive blocks of `out` that together
/// cover it, on candle's CPU thread pool (`CANDLE_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else one per core; with one, on the caller's). Each block is a
/// whole number of `row`s, and `offset` is its start in `out`, so `f` can
/// read the matching part of its inputs. Blocks are written by one thread
/// each; the result does not depend on the number of threads.
pub fn par_blocks(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let row = row.max(1);
    if out.len() < PAR_MIN {
        f(0, out);
        return;
    }
    par_row_blocks(out, row, PAR_BLOCK.div_ceil(row), f);
}

/// [`par_blocks`] with the block size given: `rows` rows of `row` values a
/// block, in parallel whenever there are two blocks or more (for work that
/// costs far more per value than an element-wise op: attention rows).
pub fn par_row_blocks(
    out: &mut [f32],
    row: usize,
    rows: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let block = row.max(1) * rows.max(1);
    let pool = candle_core::utils::barrier_pool();
    if out.len() <= block || pool.n_workers() == 0 {
        f(0, out);
        return;
    }
    // one lock per block, each taken once and never contended: safe
    // disjoint &mut access from the pool's threads
    let blocks: Vec<std::sync::Mutex<(usize, &mut [f32])>> = out
        .chunks_mut(block)
        .enumerate()
        .map(|(i, b)| std::sync::Mutex::new((i * block, b)))
        .collect();
    pool.execute_chunked(blocks.len(), |range| {
        for i in range {
            let mut guard = blocks[i].lock().unwrap_or_else(|e| e.into_inner());
            let (offset, ref mut b) = *guard;
            f(offset, b);
        }
    });
}

/// Below this `exp` returns 0 (`e^x < 2e-38`, about the smallest normal f32).
const EXP_LO: f32 = -86.9;
/// Above this `exp` returns infinity (`ln(f32::MAX)` is 88.72).
const EXP_HI: f32 = 88.7;

/// `e^x` to about 2 ulp for `x` in `[-86.9, 88.7]`, 0 below, infinity above
/// (and NaN for NaN): `2^n e^r` with `n = round(x / ln 2)`, `r = x - n ln 2`
/// in `[-ln 2 / 2, ln 2 / 2]`, and `e^r` by its degree-6 Taylor polynomial
/// (remainder under `r^7 / 7! < 1.3e-7`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI - LN2_LO (Cephes): LN2_HI has 9 significant bits, so
    // n * LN2_HI is exact
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = 2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND; // in [-125, 128]
    let r = (xc - n * LN2_HI) + n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^(n-1) from n's bits (the low mantissa bits of t hold n + 0x40_0000),
    // then times 2: 2^n itself overflows the exponent field at n = 128
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let half_scale = f32::from_bits(((ni + 126) << 23) as u32);
    let y = p * 2.0 * half_scale; // 2p first: p 2^(n-1) can be subnormal at n = -125
    if x < EXP_LO {
        0.0
    } else if x > EXP_HI {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// Compiles `$body` (a function of the arguments) once for the baseline
/// and once with AVX2 + FMA, and calls the best one this CPU runs.
macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU was just checked to have both features
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// Folds `xs` with `f` in 8 interleaved lanes, then the lanes in order:
/// a fixed order (so the same bits in both compiled copies) that the
/// compiler can keep in one vector register, where a plain fold is a
/// chain of dependent scalar operations.
#[inline(always)]
fn lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a = f(*a, v);
    }
    acc.into_iter().fold(init, f)
}

multiversion! {
    /// Softmax of each row of `d` values of `x` into `out`.
    pub fn softmax_rows(x: &[f32], out: &mut [f32], d: usize) {
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let max = lanes(row, f32::NEG_INFINITY, f32::max);
            for (oj, &v) in o.iter_mut().zip(row) {
                *oj = exp(v - max);
            }
            let inv = 1.0 / lanes(o, 0.0, |a, b| a + b);
            o.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

multiversion! {
    /// In place: the softmax of each row of `d` values of `x`; a row with
    /// no finite value (every key masked) becomes zeros.
    pub fn softmax_rows_inplace(x: &mut [f32], d: usize) {
        for row in x.chunks_exact_mut(d) {
            let max = lanes(row, f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            for v in row.iter_mut() {
                *v = exp(*v - max);
            }
            let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `(1 + tanh(u)) / 2 = 1 / (1 + exp(-2u))` at `u = sqrt(2 / pi) (v + 0.044715 v^3)`.
#[inline(always)]
pub fn half_one_plus_tanh(v: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
    1.0 / (1.0 + exp(-2.0 * u))
}

multiversion! {
    /// GELU (tanh approximation) of `x` into `out`.
    pub fn gelu(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * half_one_plus_tanh(v);
        }
    }
}

multiversion! {
    /// The gradient of GELU at `x` times `dy`, into `out`.
    pub fn gelu_backward(x: &[f32], dy: &[f32], out: &mut [f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
            // s = sigmoid(2u) = (1 + tanh u) / 2, ds/du = 2 s (1 - s)
            let s = half_one_plus_tanh(v);
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
            *o = g * (s + v * 2.0 * s * (1.0 - s) * du);
        }
    }
}

/// `1 / (1 + e^-v)`.
#[inline(always)]
pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

multiversion! {
    /// SiLU `v * sigmoid(v)` of `x` into `out`.
    pub fn silu(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * sigmoid(v);
        }
    }
}

multiversion! {
    /// The gradient of SiLU at `x` times `dy`, into `out`.
    pub fn silu_backward(x: &[f32], dy: &[f32], out: &mut [f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(dy) {
            let s = sigmoid(v);
            *o = g * s * (1.0 + v * (1.0 - s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_over_its_range() {
        let mut worst = 0f64;
        // every 1/1024 over the whole range, and the points where the
        // reduction switches n
        let xs = (-86 * 1024 - 900..=88 * 1024 + 700)
            .map(|i| i as f32 / 1024.0)
            .chain((-124..=127).map(|n| (n as f32 + 0.5) * std::f32::consts::LN_2));
        for x in xs {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_handles_the_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(1e9), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // the smallest normal result and the largest finite one are still right
        for x in [-86.8f32, 88.7] {
            let rel = f64::from(exp(x)) / f64::from(x).exp() - 1.0;
            assert!(rel.abs() < 1e-6, "exp({x}) off by {rel}");
        }
        assert!(exp(88.7).is_finite());
    }

    #[test]
    fn par_blocks_covers_every_value_once_in_whole_rows() {
        for (len, row) in [(100_003, 7), (3 * PAR_MIN + 5, 1), (100, 10)] {
            let mut out = vec![-1f32; len];
            par_blocks(&mut out, row, |offset, block| {
                assert_eq!(offset % row, 0, "a block starts inside a row");
                for (i, o) in block.iter_mut().enumerate() {
                    assert_eq!(*o, -1.0, "value {} written twice", offset + i);
                    *o = (offset + i) as f32;
                }
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
        }
    }

    #[test]
    fn both_compiled_copies_give_the_same_bits() {
        // the dispatched copy (AVX2 here) against the inlined baseline loop
        let x: Vec<f32> = (0..999)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut got = vec![0f32; x.len()];
        gelu(&x, &mut got);
        let want: Vec<f32> = x.iter().map(|&v| v * half_one_plus_tanh(v)).collect();
        assert_eq!(got, want);
    }
}
