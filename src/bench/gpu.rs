//! The GPU check behind `minisora bench gpu-check`: one prepared run that
//! fits a single call of the GPU machine (`scripts/gpu-check.sh` gives it
//! about five of its eight minutes).
//!
//! 1. Parity: each of minisora's kernels on random inputs against its CPU
//!    reference in f32 (bf16 and f16 inputs are rounded first, and the
//!    reference sees the rounded values, so the error measured is the
//!    kernel's): relative error `max|gpu - cpu| / max|cpu|` under 1e-4 in
//!    f32 and 1e-2 in 16-bit types; then a whole DiT forward on the GPU
//!    against the CPU.
//! 2. The bf16 matrix multiply peak of the machine (an 8192^3 product).
//! 3. minisora's attention kernel alone at the shapes of the DiT presets.
//! 4. One denoising step (a DiT forward) for every preset and token count,
//!    with a time budget: each case's repeats are sized from its counted
//!    FLOPs, and cases that would not fit are reported as skipped.
//!
//! Everything is reported as lines as soon as it is measured (a run cut
//! short still shows what it did) and as a [`GpuCheckReport`] that
//! `benches/peer/gpu_speed.py` reads to time PyTorch on the same shapes.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{grid_for_tokens, latent_for_grid, matmul_peak, median_p90, synchronize};
use super::{StepCase, StepReport};
use crate::ops::{self, AttentionKernel};
use crate::rng::Rng;
use crate::train::randn;
use crate::Result;

/// What to run.
#[derive(Clone, Debug)]
pub struct GpuCheckOptions {
    pub presets: Vec<String>,
    pub tokens: Vec<usize>,
    /// Clips per forward.
    pub batch: usize,
    pub dtype: DType,
    /// Side of the square matrices of the peak measurement.
    pub peak_size: usize,
    /// Wall time for everything; the step cases get what parity and the
    /// peak leave.
    pub budget: Duration,
    /// Parity on inputs a tenth the size and no 32k-token check: a dry run
    /// of the whole command on the CPU (tests), not a GPU measurement.
    pub quick: bool,
    /// A block's ops timed one by one (see [`block_breakdown`]) at this
    /// preset and token count, before the steps.
    pub breakdown: Option<(String, usize)>,
}

/// One parity check.
#[derive(Clone, Debug, Serialize)]
pub struct Parity {
    pub what: String,
    /// The attention kernel checked (`scalar`, `mma`, `pipelined`), or empty.
    pub kernel: String,
    pub dtype: String,
    pub rel_error: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// minisora's attention kernel alone.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionTiming {
    /// `mma` or `pipelined` (see `kernels/README.md`).
    pub kernel: String,
    pub batch: usize,
    pub heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
    pub dtype: String,
    pub median_ms: f64,
    /// `4 B H N^2 Dh` over the median time.
    pub tflops: f64,
}

/// A step case, with what the PyTorch peer needs to rebuild it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedCase {
    pub preset: String,
    pub dit: crate::dit::DitConfig,
    pub tokens: usize,
    pub grid: [usize; 3],
    /// Latent size `(T', H', W')` whose patches make the tokens.
    pub latent: [usize; 3],
    /// Clips per forward.
    pub batch: usize,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GpuCheckReport {
    /// The step cases, measured or not (the peer times all of them).
    pub plan: Vec<PlannedCase>,
    pub matmul_peak_gflops: f64,
    pub parity: Vec<Parity>,
    pub attention: Vec<AttentionTiming>,
    /// [`block_breakdown`] at `GpuCheckOptions::breakdown`, if asked.
    pub breakdown: Vec<BlockOp>,
    /// The attention kernel the steps ran (the fastest that passed parity).
    pub attention_kernel: String,
    pub steps: Vec<StepReport>,
    /// The step cases from 16k tokens again with the fused linear layers.
    pub steps_fused_linear: Vec<StepReport>,
    /// Cases left out, with the reason.
    pub skipped: Vec<String>,
}

/// The step cases of `opts`, preset by preset.
pub fn plan(opts: &GpuCheckOptions) -> Result<Vec<PlannedCase>> {
    let mut out = Vec::new();
    for name in &opts.presets {
        let preset = crate::preset::preset(name)?;
        for &tokens in &opts.tokens {
            let grid = grid_for_tokens(tokens)?;
            out.push(PlannedCase {
                preset: preset.name.to_string(),
                dit: preset.dit.clone(),
                tokens,
                grid,
                latent: latent_for_grid(grid, preset.dit.patch),
                batch: opts.batch,
            });
        }
    }
    Ok(out)
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-4
    } else {
        1e-2
    }
}

/// `max|a - b| / max|b|`, in f32 on the CPU.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let d: f32 = (&a - &b)?.abs()?.max_all()?.to_scalar()?;
    let m: f32 = b.abs()?.max_all()?.to_scalar()?;
    // a NaN anywhere must fail, and NaN comparisons are all false
    if !d.is_finite() || !m.is_finite() {
        return Ok(f64::INFINITY);
    }
    Ok(d as f64 / (m as f64).max(1e-30))
}

/// A CPU f32 tensor, rounded through `dtype` (so that the GPU and the
/// reference see the same values).
fn input(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Result<Tensor> {
    let t = (randn(&mut Rng::new(seed), shape, &Device::Cpu)? * scale)?;
    Ok(t.to_dtype(dtype)?.to_dtype(DType::F32)?)
}

fn gpu(t: &Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(t.to_dtype(dtype)?.to_device(device)?)
}

/// Per-token segment ids `(B, N)`: row 0 three packed clips (one of a
/// single token) and padding at the end, row 1 two clips.
fn packed_segments(b: usize, n: usize) -> Result<Tensor> {
    let ids: Vec<u32> = (0..b * n)
        .map(|k| {
            let (row, i) = (k / n, k % n);
            match row % 2 {
                0 if i < n / 2 => 1,
                0 if i == n / 2 => 2,
                0 if i < n - n / 10 => 3,
                0 => 0,
                _ if i < n / 3 => 4,
                _ => 5,
            }
        })
        .collect();
    Ok(Tensor::from_vec(ids, (b, n), &Device::Cpu)?)
}

/// The kernels against their CPU references; `quick`: smaller inputs (see
/// [`GpuCheckOptions::quick`]).
pub fn parity_checks(
    device: &Device,
    quick: bool,
    mut on_line: impl FnMut(String),
) -> Result<Vec<Parity>> {
    let sz = |n: usize| if quick { n.div_ceil(10) } else { n };
    let mut out = Vec::new();
    // a check whose GPU side fails (a launch error, a kernel that does not
    // load) is recorded as failed with its error; the run goes on
    let mut record = |what: String, dtype: DType, tol: f64, err: Result<f64>| {
        let err = match err {
            Ok(e) => e,
            Err(e) => {
                on_line(format!("parity {what} {}: error: {e}", dtype_name(dtype)));
                f64::INFINITY
            }
        };
        let kernel = AttentionKernel::ALL
            .iter()
            .map(|k| k.name())
            .find(|k| what.starts_with("attention") && what.ends_with(&format!(", {k}")))
            .unwrap_or("")
            .to_string();
        let p = Parity {
            what,
            kernel,
            dtype: dtype_name(dtype),
            rel_error: err,
            tolerance: tol,
            pass: err < tol,
        };
        on_line(format!(
            "parity {:<48} {:<5} rel err {:>9.2e} (< {:.0e}) {}",
            p.what,
            p.dtype,
            p.rel_error,
            p.tolerance,
            if p.pass { "pass" } else { "FAIL" }
        ));
        out.push(p);
    };

    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let tol = tolerance(dtype);
        // LayerNorm + modulation, per clip and per token (XL's width)
        let n = sz(999);
        for (s, what) in [(1, "per clip"), (n, "per token")] {
            let x = (input(&[2, n, 1152], 1, 2.0, dtype)? + 0.5)?;
            let x = x.to_dtype(dtype)?.to_dtype(DType::F32)?;
            let shift = input(&[2, s, 1152], 2, 0.5, dtype)?;
            let scale = input(&[2, s, 1152], 3, 0.5, dtype)?;
            let want = ops::norm_modulate_reference(&x, &shift, &scale, 1e-6)?;
            let got = || {
                let got = ops::norm_modulate(
                    &gpu(&x, dtype, device)?,
                    &gpu(&shift, dtype, device)?,
                    &gpu(&scale, dtype, device)?,
                    1e-6,
                )?;
                rel_error(&got, &want)
            };
            record(
                format!("norm_modulate 2x{n}x1152, {what}"),
                dtype,
                tol,
                got(),
            );
        }
        // RoPE with the DiT's 3D tables (head dim 72, as XL)
        let positions = crate::patch::positions(grid_for_tokens(n)?);
        let (cos, sin) = crate::nn::rope_3d(
            &positions,
            crate::nn::rope_thirds(72),
            crate::nn::ROPE_BASE,
            &Device::Cpu,
        )?;
        let x = input(&[2, 4, n, 72], 4, 1.0, dtype)?;
        let want = ops::rope_reference(&x, &cos, &sin)?;
        let got = || {
            let got = ops::rope(
                &gpu(&x, dtype, device)?,
                &cos.to_device(device)?,
                &sin.to_device(device)?,
            )?;
            rel_error(&got, &want)
        };
        record(format!("rope 2x4x{n}x72"), dtype, tol, got());

        // a linear layer with its bias (and GELU) in cuBLASLt's epilogue
        if dtype != DType::F32 {
            let rows = sz(1000);
            let x = input(&[rows, 1152], 60, 1.0, dtype)?;
            let w = input(&[1536, 1152], 61, 0.03, dtype)?;
            let b = input(&[1536], 62, 0.5, dtype)?;
            for gelu in [false, true] {
                let want = ops::linear_reference(&x, &w, &b, gelu)?;
                let got = || {
                    let got = ops::linear_fused(
                        &gpu(&x, dtype, device)?,
                        &gpu(&w, dtype, device)?,
                        &gpu(&b, dtype, device)?,
                        gelu,
                    )?;
                    rel_error(&got, &want)
                };
                let what = if gelu { " + GELU" } else { "" };
                record(
                    format!("fused linear {rows}x1152 -> 1536{what}"),
                    dtype,
                    tol,
                    got(),
                );
            }
        }
    }

    // attention: (B, H, N, M, Dh, segments); every kernel on every case
    // (f32: the scalar kernel only, the one f32 runs); the shapes cover
    // both tile sizes and buffer counts of the pipelined kernel, partial
    // tiles of queries and keys, and head dims padded up to 16
    type Case = (usize, usize, usize, usize, usize, &'static str);
    let cases: [Case; 9] = [
        (2, 4, 1000, 1000, 64, "none"),
        (2, 4, 1000, 1000, 72, "none"),
        (1, 2, 777, 1234, 128, "none"),
        (1, 2, 300, 200, 96, "none"),
        (2, 3, 500, 500, 32, "none"),
        (2, 4, 1000, 1000, 64, "packed"),
        (3, 4, 1000, 16, 72, "key padding"),
        (2, 2, 100, 100, 16, "none"),
        (1, 2, 130, 70, 36, "none"),
    ];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (i, &(b, h, n, m, dh, mask)) in cases.iter().enumerate() {
            let (n, m) = (sz(n), if m == 16 { m } else { sz(m) });
            let seed = 10 + 3 * i as u64;
            let q = input(&[b, h, n, dh], seed, 1.5, dtype)?;
            let k = input(&[b, h, m, dh], seed + 1, 1.5, dtype)?;
            let v = input(&[b, h, m, dh], seed + 2, 1.0, dtype)?;
            let segments = match mask {
                "packed" => Some((packed_segments(b, n)?, packed_segments(b, m)?)),
                "key padding" => {
                    let keys: Vec<u32> = (0..b * m)
                        .map(|k| u32::from(k % m < [m, 3, 1][(k / m) % 3]))
                        .collect();
                    Some((
                        Tensor::ones((b, n), DType::U32, &Device::Cpu)?,
                        Tensor::from_vec(keys, (b, m), &Device::Cpu)?,
                    ))
                }
                _ => None,
            };
            let want =
                ops::flash_attention_reference(&q, &k, &v, segments.as_ref().map(|(a, b)| (a, b)))?;
            let on_gpu = || -> Result<_> {
                Ok(match &segments {
                    Some((a, b)) => Some((a.to_device(device)?, b.to_device(device)?)),
                    None => None,
                })
            };
            let gpu_segments = on_gpu();
            let kernels: &[AttentionKernel] = if dtype == DType::F32 {
                &[AttentionKernel::Scalar]
            } else {
                &AttentionKernel::ALL
            };
            for &kernel in kernels {
                let got = || {
                    let segs = match &gpu_segments {
                        Ok(s) => s.as_ref().map(|(a, b)| (a, b)),
                        Err(e) => crate::invalid!("segment ids to the GPU: {e}"),
                    };
                    let got = ops::flash_attention_with(
                        &gpu(&q, dtype, device)?,
                        &gpu(&k, dtype, device)?,
                        &gpu(&v, dtype, device)?,
                        segs,
                        kernel,
                    )?;
                    rel_error(&got, &want)
                };
                record(
                    format!("attention {b}x{h}x{n}x{m}x{dh} {mask}, {}", kernel.name()),
                    dtype,
                    tolerance(dtype),
                    got(),
                );
            }
        }
    }

    // a long sequence: 32k keys, checked on its first and last 64 queries
    // (the reference's scores for all 32k queries would be 8 GB)
    if !quick {
        long_sequence_check(device, &mut record)?;
    }

    // a whole DiT forward (default preset, random weights) against the CPU
    let preset = crate::preset::preset("default")?;
    let grid = grid_for_tokens(sz(256))?;
    let (cpu_model, varmap) = super::random_dit(&preset.dit, 5, &Device::Cpu)?;
    let [lt, lh, lw] = latent_for_grid(grid, preset.dit.patch);
    let cfg = &preset.dit;
    let mut rng = Rng::new(6);
    let x = randn(
        &mut rng,
        &[2, cfg.latent_channels, lt, lh, lw],
        &Device::Cpu,
    )?;
    let t = Tensor::new(&[0.3f32, 0.8], &Device::Cpu)?;
    let ctx = randn(
        &mut rng,
        &[2, cfg.context_len, cfg.context_dim],
        &Device::Cpu,
    )?;
    let pooled = randn(&mut rng, &[2, cfg.context_dim], &Device::Cpu)?;
    let keep: Vec<f32> = (0..2 * cfg.context_len)
        .map(|j| f32::from(j % cfg.context_len < 10))
        .collect();
    let keep = Tensor::from_vec(keep, (2, cfg.context_len), &Device::Cpu)?;
    // the adaLN layers at a tenth of random_dit's scale: with N(0, 1 /
    // fan_in) modulations the random network is chaotic and amplifies any
    // rounding (measured on the CPU: bf16 17% off f32, f16 4.6%); at this
    // scale, as in a trained DiT whose modulations stay small, bf16 is 1.6%
    let mut tensors = crate::checkpoint::named_tensors(&varmap)?;
    for (name, t) in tensors.iter_mut() {
        if name.contains("ada") {
            *t = (&*t * 0.1)?;
        }
    }
    drop(cpu_model);
    let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let want = crate::dit::Dit::new(cfg, vb)?.forward(&x, &t, &ctx, &pooled, &keep)?;
    // f32 sums in another order over six blocks; bf16 rounds every
    // activation to 8 bits: these are whole-model tolerances, not kernel ones
    for (dtype, tol) in [(DType::F32, 1e-3), (DType::BF16, 5e-2)] {
        let got = || {
            let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), dtype, device);
            let model = crate::dit::Dit::new(cfg, vb)?;
            let on = |t: &Tensor| gpu(t, dtype, device);
            let got = model.forward(&on(&x)?, &on(&t)?, &on(&ctx)?, &on(&pooled)?, &on(&keep)?)?;
            rel_error(&got, &want)
        };
        record(
            format!("DiT forward, default preset, 2x{} tokens", sz(256)),
            dtype,
            tol,
            got(),
        );
    }
    Ok(out)
}

/// 32k keys and queries in bf16, checked on the first and last 64 queries.
fn long_sequence_check(
    device: &Device,
    record: &mut impl FnMut(String, DType, f64, Result<f64>),
) -> Result<()> {
    let (n, dh) = (32_768, 64);
    let q = input(&[1, 2, n, dh], 50, 1.0, DType::BF16)?;
    let k = input(&[1, 2, n, dh], 51, 1.0, DType::BF16)?;
    let v = input(&[1, 2, n, dh], 52, 1.0, DType::BF16)?;
    let rows = |t: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(
            &[t.narrow(2, 0, 64)?, t.narrow(2, n - 64, 64)?],
            2,
        )?)
    };
    let want = ops::flash_attention_reference(&rows(&q)?, &k, &v, None)?;
    for kernel in [AttentionKernel::Mma, AttentionKernel::Pipelined] {
        let got = || {
            let got = ops::flash_attention_with(
                &gpu(&q, DType::BF16, device)?,
                &gpu(&k, DType::BF16, device)?,
                &gpu(&v, DType::BF16, device)?,
                None,
                kernel,
            )?
            .to_device(&Device::Cpu)?;
            rel_error(&rows(&got)?, &want)
        };
        record(
            format!(
                "attention 1x2x32768x32768x64 (128 rows checked), {}",
                kernel.name()
            ),
            DType::BF16,
            1e-2,
            got(),
        );
    }
    Ok(())
}

/// Median milliseconds of `f` over `repeat` runs after one warm-up, each
/// run on the threads a step's ops run on ([`crate::ops::on_cpu_pool`]).
fn time_ms(
    device: &Device,
    repeat: usize,
    mut f: impl FnMut() -> Result<()> + Send,
) -> Result<f64> {
    let mut run = || crate::ops::on_cpu_pool(device, &mut f);
    run()?;
    synchronize(device)?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        run()?;
        synchronize(device)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median_p90(&mut times).0)
}

/// minisora's tensor-core attention kernels alone at `(B, H, N, Dh)` shapes.
pub fn attention_timings(
    device: &Device,
    dtype: DType,
    kernels: &[AttentionKernel],
    shapes: &[[usize; 4]],
    mut on_line: impl FnMut(String),
) -> Result<Vec<AttentionTiming>> {
    let mut out = Vec::new();
    for &[b, h, n, dh] in shapes {
        let mk = |seed: u64| -> Result<Tensor> {
            Ok(randn(&mut Rng::new(seed), &[b, h, n, dh], device)?.to_dtype(dtype)?)
        };
        let (q, k, v) = (mk(1)?, mk(2)?, mk(3)?);
        for &kernel in kernels {
            let timed = time_ms(device, 5, || {
                ops::flash_attention_with(&q, &k, &v, None, kernel)?;
                Ok(())
            });
            let ms = match timed {
                Ok(ms) => ms,
                Err(e) => {
                    on_line(format!(
                        "attention kernel {} {b}x{h}x{n}x{dh}: error: {e}",
                        kernel.name()
                    ));
                    continue;
                }
            };
            let flops = 4.0 * (b * h) as f64 * (n as f64).powi(2) * dh as f64;
            let t = AttentionTiming {
                kernel: kernel.name().into(),
                batch: b,
                heads: h,
                tokens: n,
                head_dim: dh,
                dtype: dtype_name(dtype),
                median_ms: ms,
                tflops: flops / (ms / 1e3) / 1e12,
            };
            on_line(format!(
                "attention kernel {:<9} {b}x{h}x{n}x{dh} {}: {:.2} ms, {:.1} TFLOP/s",
                t.kernel, t.dtype, t.median_ms, t.tflops
            ));
            out.push(t);
        }
    }
    Ok(out)
}

/// The tensor-core kernels whose every parity check passed, in the order
/// of [`AttentionKernel::ALL`].
fn passing_kernels(parity: &[Parity]) -> Vec<AttentionKernel> {
    [AttentionKernel::Mma, AttentionKernel::Pipelined]
        .into_iter()
        .filter(|k| {
            let checks: Vec<_> = parity.iter().filter(|p| p.kernel == k.name()).collect();
            !checks.is_empty() && checks.iter().all(|p| p.pass)
        })
        .collect()
}

/// The fastest of `kernels` by total time over the shapes timed.
fn fastest(kernels: &[AttentionKernel], timings: &[AttentionTiming]) -> Option<AttentionKernel> {
    let total = |k: &AttentionKernel| -> f64 {
        timings
            .iter()
            .filter(|t| t.kernel == k.name())
            .map(|t| t.median_ms)
            .sum()
    };
    kernels
        .iter()
        .copied()
        .min_by(|a, b| total(a).total_cmp(&total(b)))
}

/// One op of a DiT block timed alone at a step's shapes, and how many times
/// a block runs it.
#[derive(Clone, Debug, Serialize)]
pub struct BlockOp {
    pub what: String,
    pub per_block: usize,
    pub median_ms: f64,
}

/// The ops of one DiT block of `preset` at `tokens` tokens, each timed alone
/// on random inputs at the block's shapes (`batch` clips, `dtype`): where a
/// step's time goes, without a profiler. Their weighted sum against the
/// step's time per block shows what the list leaves out.
pub fn block_breakdown(
    device: &Device,
    preset: &str,
    tokens: usize,
    batch: usize,
    dtype: DType,
    mut on_line: impl FnMut(String),
) -> Result<Vec<BlockOp>> {
    let cfg = crate::preset::preset(preset)?.dit;
    let (b, n, d, h) = (batch, tokens, cfg.hidden, cfg.heads);
    let (dh, l, hidden) = (cfg.head_dim(), cfg.context_len, cfg.mlp_ratio * d);
    let mut seed = 100u64;
    let mut rand = |shape: &[usize], scale: f64| -> Result<Tensor> {
        seed += 1;
        Ok((randn(&mut Rng::new(seed), shape, device)? * scale)?.to_dtype(dtype)?)
    };
    let x = rand(&[b, n, d], 1.0)?;
    let rows = x.reshape((b * n, d))?;
    let (shift, scale, gate) = (
        rand(&[b, 1, d], 0.1)?,
        rand(&[b, 1, d], 0.1)?,
        rand(&[b, 1, d], 0.1)?,
    );
    let linear = |rand: &mut dyn FnMut(&[usize], f64) -> Result<Tensor>,
                  i: usize,
                  o: usize|
     -> Result<candle_nn::Linear> {
        Ok(candle_nn::Linear::new(rand(&[o, i], 0.03)?, None))
    };
    let (w_qkv, w_d, w_up, w_down) = (
        linear(&mut rand, d, 3 * d)?,
        linear(&mut rand, d, d)?,
        linear(&mut rand, d, hidden)?,
        linear(&mut rand, hidden, d)?,
    );
    let (b3, b1, b4) = (
        rand(&[3 * d], 0.1)?,
        rand(&[d], 0.1)?,
        rand(&[hidden], 0.1)?,
    );
    let qkv_rows = candle_core::Module::forward(&w_qkv, &rows)?;
    let up_rows = candle_core::Module::forward(&w_up, &rows)?;
    let heads = qkv_rows
        .reshape((b, n, 3, h, dh))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (heads.get(0)?, heads.get(1)?, heads.get(2)?);
    let positions = crate::patch::positions(grid_for_tokens(n)?);
    let (cos, sin) = crate::nn::rope_3d(
        &positions,
        crate::nn::rope_thirds(dh),
        crate::nn::ROPE_BASE,
        device,
    )?;
    let (ck, cv) = (rand(&[b, h, l, dh], 1.0)?, rand(&[b, h, l, dh], 1.0)?);
    let bias = crate::nn::key_padding_bias(&Tensor::ones((b, l), DType::F32, device)?, dtype)?;
    let qseg = Tensor::ones((b, n), DType::U32, device)?;
    let kseg = Tensor::ones((b, l), DType::U32, device)?;

    type Op<'a> = (String, usize, Box<dyn Fn() -> Result<Tensor> + Sync + 'a>);
    let ops: Vec<Op> = vec![
        (
            "norm_modulate (LayerNorm + shift, scale)".into(),
            3,
            Box::new(|| ops::norm_modulate(&x, &shift, &scale, 1e-6)),
        ),
        (
            format!("matmul {d} -> {} (qkv)", 3 * d),
            1,
            Box::new(|| Ok(candle_core::Module::forward(&w_qkv, &rows)?)),
        ),
        (
            format!("matmul {d} -> {d} (proj, q, cross_proj)"),
            3,
            Box::new(|| Ok(candle_core::Module::forward(&w_d, &rows)?)),
        ),
        (
            format!("matmul {d} -> {hidden} (fc1)"),
            1,
            Box::new(|| Ok(candle_core::Module::forward(&w_up, &rows)?)),
        ),
        (
            format!("matmul {hidden} -> {d} (fc2)"),
            1,
            Box::new(|| Ok(candle_core::Module::forward(&w_down, &up_rows)?)),
        ),
        (
            format!("bias add, {} columns", 3 * d),
            1,
            Box::new(|| Ok(qkv_rows.broadcast_add(&b3)?)),
        ),
        (
            format!("bias add, {d} columns"),
            4,
            Box::new(|| Ok(rows.broadcast_add(&b1)?)),
        ),
        (
            format!("bias add, {hidden} columns"),
            1,
            Box::new(|| Ok(up_rows.broadcast_add(&b4)?)),
        ),
        ("gelu".into(), 1, Box::new(|| ops::gelu(&up_rows))),
        (
            "q, k, v split (one permuted copy)".into(),
            1,
            Box::new(|| {
                Ok(qkv_rows
                    .reshape((b, n, 3, h, dh))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?)
            }),
        ),
        (
            "split heads (q of cross-attention)".into(),
            1,
            Box::new(|| crate::nn::split_heads(&x, h)),
        ),
        (
            "merge heads".into(),
            2,
            Box::new(|| crate::nn::merge_heads(&q)),
        ),
        ("rope".into(), 2, Box::new(|| ops::rope(&q, &cos, &sin))),
        (
            // as the DiT runs them on this device: fused on a GPU; on the
            // CPU, self-attention by matmuls, cross-attention with a bias
            "self-attention".into(),
            1,
            Box::new(|| crate::nn::attention(&q, &k, &v, None)),
        ),
        (
            format!("cross-attention ({l} keys)"),
            1,
            Box::new(|| {
                if device.is_cuda() {
                    ops::flash_attention(&q, &ck, &cv, Some((&qseg, &kseg)))
                } else {
                    crate::nn::attention(&q, &ck, &cv, Some(&bias))
                }
            }),
        ),
        (
            "gate multiply".into(),
            2,
            Box::new(|| Ok(x.broadcast_mul(&gate)?)),
        ),
        ("residual add".into(), 3, Box::new(|| Ok((&x + &x)?))),
    ];
    let mut out = Vec::new();
    let mut total = 0.0;
    for (what, per_block, f) in &ops {
        let ms = time_ms(device, 5, || {
            f()?;
            Ok(())
        })?;
        total += ms * *per_block as f64;
        on_line(format!("block op {what:<44} x{per_block}  {ms:>8.3} ms"));
        out.push(BlockOp {
            what: what.clone(),
            per_block: *per_block,
            median_ms: ms,
        });
    }
    on_line(format!(
        "block ops of {preset} at {tokens} tokens, summed with their counts: {total:.2} ms a block, {:.1} ms for {} blocks",
        total * cfg.depth as f64,
        cfg.depth
    ));
    Ok(out)
}

/// The whole check: parity, peak, attention, steps, within `opts.budget`.
/// `on_line` gets each line of the report as it is measured, `on_report`
/// the report so far after each part (to save it: a run cut short keeps
/// what it did).
pub fn run(
    device: &Device,
    opts: &GpuCheckOptions,
    mut on_line: impl FnMut(String),
    mut on_report: impl FnMut(&GpuCheckReport),
) -> Result<GpuCheckReport> {
    let start = Instant::now();
    let mut report = GpuCheckReport {
        plan: plan(opts)?,
        ..Default::default()
    };
    let parity = parity_checks(device, opts.quick, &mut on_line)?;
    let failed = parity.iter().filter(|p| !p.pass).count();
    on_line(format!(
        "parity: {} of {} checks pass{}",
        parity.len() - failed,
        parity.len(),
        if failed > 0 { " (FAILURES ABOVE)" } else { "" }
    ));

    report.parity = parity;
    on_report(&report);

    let peak = matmul_peak(device, DType::BF16, opts.peak_size, 10)?;
    on_line(format!(
        "matmul peak, bf16 {0}x{0}x{0}: {1:.1} TFLOP/s",
        opts.peak_size,
        peak / 1e3
    ));
    report.matmul_peak_gflops = peak;

    // attention at the presets' head shapes and the largest token counts
    let mut shapes = Vec::new();
    for name in &opts.presets {
        let cfg = crate::preset::preset(name)?.dit;
        for &n in opts.tokens.iter().filter(|&&n| n >= 16_384) {
            let shape = [opts.batch, cfg.heads, n, cfg.head_dim()];
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
    }
    // the kernels that passed, timed; the fastest runs the steps
    let kernels = passing_kernels(&report.parity);
    report.attention = attention_timings(device, opts.dtype, &kernels, &shapes, &mut on_line)?;
    match fastest(&kernels, &report.attention) {
        Some(k) => {
            ops::set_default_attention_kernel(k);
            on_line(format!("attention kernel of the steps: {}", k.name()));
        }
        None => on_line(
            "no tensor-core attention kernel passed its parity checks: the steps run the default one anyway (FAILURES ABOVE)".into(),
        ),
    }
    report.attention_kernel = ops::default_attention_kernel().name().into();
    on_report(&report);

    if let Some((preset, tokens)) = &opts.breakdown {
        match block_breakdown(
            device,
            preset,
            *tokens,
            opts.batch,
            opts.dtype,
            &mut on_line,
        ) {
            Ok(ops) => report.breakdown = ops,
            Err(e) => on_line(format!("block breakdown: error: {e}")),
        }
        on_report(&report);
    }

    let cases = report.plan.clone();
    on_line(format!(
        "{:<6} {:>6} {:>5} {:>10} {:>10} {:>9} {:>6} {:>10}",
        "preset", "tokens", "batch", "median ms", "TFLOP", "TFLOP/s", "peak", "mem GiB"
    ));
    for (i, case) in cases.iter().enumerate() {
        let (name, tokens) = (&case.preset, case.tokens);
        let flops = case.dit.step_cost(tokens, opts.batch).total_flops as f64;
        // a conservative guess of one step: a quarter of the peak, plus
        // launch overheads; the remaining budget is shared by the remaining
        // cases, and each case gets 1 to 5 timed steps after its warm-up
        let guess = flops / (0.25 * peak * 1e9) + 0.05;
        let left = opts.budget.saturating_sub(start.elapsed()).as_secs_f64();
        let share = left / (cases.len() - i) as f64;
        if 2.0 * guess > left {
            let why = format!("{name} at {tokens} tokens: skipped, about {guess:.1} s a step and {left:.0} s of the budget left");
            on_line(why.clone());
            report.skipped.push(why);
            continue;
        }
        let repeat = ((share / guess) as usize).saturating_sub(1).clamp(1, 5);
        let step = StepCase {
            preset: name.clone(),
            dit: case.dit.clone(),
            grid: case.grid,
            batch: opts.batch,
            guidance: false,
            dtype: opts.dtype,
            repeat,
            warmup: 1,
        };
        let step_report = match super::bench_step(&step, device, peak) {
            Ok(r) => r,
            // out of memory or a kernel failure in one case: say so, go on
            Err(e) => {
                let why = format!("{name} at {tokens} tokens: failed: {e}");
                on_line(why.clone());
                report.skipped.push(why);
                continue;
            }
        };
        let r = &step_report;
        on_line(format!(
            "{:<6} {:>6} {:>5} {:>10.2} {:>10.2} {:>9.1} {:>5.0}% {:>10}",
            r.preset,
            r.tokens,
            r.forward_batch,
            r.median_ms,
            r.cost.total_flops as f64 / 1e12,
            r.achieved_gflops / 1e3,
            100.0 * r.peak_fraction,
            r.peak_memory_bytes.map_or("-".into(), |b| format!(
                "{:.2}",
                b as f64 / (1u64 << 30) as f64
            )),
        ));
        report.steps.push(step_report);
        on_report(&report);
    }
    // the same steps with every linear layer's bias (and fc1's GELU) fused
    // into its GEMM, where that op passed its parity checks: off by
    // default until a run like this one shows what it is worth
    let linear_ok = report
        .parity
        .iter()
        .filter(|p| p.what.starts_with("fused linear"))
        .all(|p| p.pass);
    if linear_ok {
        ops::set_fused_linear(true);
        for case in cases.iter().filter(|c| c.tokens >= 16_384) {
            let flops = case.dit.step_cost(case.tokens, opts.batch).total_flops as f64;
            let guess = flops / (0.25 * peak * 1e9) + 0.05;
            let left = opts.budget.saturating_sub(start.elapsed()).as_secs_f64();
            if 3.0 * guess > left {
                on_line(format!(
                    "fused linears: {} at {} tokens skipped, {left:.0} s of the budget left",
                    case.preset, case.tokens
                ));
                continue;
            }
            let step = StepCase {
                preset: case.preset.clone(),
                dit: case.dit.clone(),
                grid: case.grid,
                batch: opts.batch,
                guidance: false,
                dtype: opts.dtype,
                repeat: 2,
                warmup: 1,
            };
            match super::bench_step(&step, device, peak) {
                Ok(r) => {
                    on_line(format!(
                        "fused linears: {:<6} {:>6} {:>10.2} ms {:>9.1} TFLOP/s {:>5.0}%",
                        r.preset,
                        r.tokens,
                        r.median_ms,
                        r.achieved_gflops / 1e3,
                        100.0 * r.peak_fraction
                    ));
                    report.steps_fused_linear.push(r);
                }
                Err(e) => on_line(format!(
                    "fused linears: {} at {} tokens failed: {e}",
                    case.preset, case.tokens
                )),
            }
            on_report(&report);
        }
        ops::set_fused_linear(false);
    }
    on_line(format!(
        "minisora's part took {:.0} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole check as a dry run on the CPU (small inputs): every path
    /// but the CUDA launches, and the CPU ops pass the parity they would
    /// be held to on a GPU.
    #[test]
    fn the_check_runs_on_the_cpu_and_its_parity_passes() {
        let opts = GpuCheckOptions {
            presets: vec!["tiny".into()],
            tokens: vec![16],
            batch: 2,
            dtype: DType::F32,
            peak_size: 64,
            budget: Duration::from_secs(120),
            quick: true,
            breakdown: Some(("tiny".into(), 16)),
        };
        let mut lines = Vec::new();
        let mut saved = 0;
        let report = run(&Device::Cpu, &opts, |l| lines.push(l), |_| saved += 1).unwrap();
        let failed: Vec<_> = report.parity.iter().filter(|p| !p.pass).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(report.parity.len() > 20);
        assert_eq!(report.plan.len(), 1);
        assert_eq!(report.steps.len(), 1, "{lines:#?}");
        assert_eq!(report.steps[0].tokens, 16);
        assert!(saved >= 3);
        assert!(report.matmul_peak_gflops > 0.0);
        assert_eq!(report.breakdown.len(), 17, "{lines:#?}");
        assert!(report.breakdown.iter().all(|op| op.median_ms > 0.0));
    }

    /// The CUDA kernels against their CPU references (the parity part of
    /// `bench gpu-check`): only in `cuda` builds, and a no-op where no GPU
    /// can be opened.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_kernels_match_their_cpu_references() {
        let device = match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipped: no GPU ({e})");
                return;
            }
        };
        let report = parity_checks(&device, false, |l| eprintln!("{l}")).unwrap();
        let failed: Vec<_> = report.iter().filter(|p| !p.pass).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
