//! What a denoising step costs: latency of one DiT forward measured after
//! warm-up, its FLOPs counted from the shapes ([`DitConfig::step_cost`]),
//! the FLOP rate that makes, and that rate against the machine's own matrix
//! multiply peak, measured by [`matmul_peak`] in the same run; and the heap
//! a step holds at its peak, counted by [`CountingAlloc`].

pub mod gpu;
pub mod gpu_memory;
pub mod plot;
pub mod steps;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::dit::{Dit, DitConfig, StepCost};
use crate::patch::PatchSize;
use crate::rng::Rng;
use crate::train::randn;
use crate::{invalid, Result};

/// A latent grid of `tokens` patch positions, as close to a cube as the
/// factors of `tokens` allow (time gets the smallest factor).
pub fn grid_for_tokens(tokens: usize) -> Result<[usize; 3]> {
    const MAX_TOKENS: usize = 1 << 24;
    if tokens == 0 || tokens > MAX_TOKENS {
        invalid!("--tokens must be from 1 to {MAX_TOKENS}, got {tokens}");
    }
    let divisors = |n: usize| (1..=n).filter(move |d| n % d == 0);
    let cube = (tokens as f64).cbrt();
    let t = divisors(tokens)
        .filter(|&d| d as f64 <= cube + 1e-9)
        .max()
        .unwrap_or(1);
    let rest = tokens / t;
    let h = divisors(rest)
        .filter(|&d| (d * d) <= rest)
        .max()
        .unwrap_or(1);
    Ok([t, h, rest / h])
}

/// Latent size `(T', H', W')` whose patches form `grid`.
pub fn latent_for_grid(grid: [usize; 3], patch: PatchSize) -> [usize; 3] {
    [grid[0] * patch.t, grid[1] * patch.h, grid[2] * patch.w]
}

/// Median and 90th percentile of `samples` (sorted in place).
pub fn median_p90(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// Waits for the device's queued work (a no-op on CPU), so that a clock
/// read afterwards includes it.
pub fn synchronize(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// The machine's matrix multiply rate in GFLOP/s: the median of `repeat`
/// products of two `size x size` matrices of `dtype`, after one warm-up.
pub fn matmul_peak(device: &Device, dtype: DType, size: usize, repeat: usize) -> Result<f64> {
    let mut rng = Rng::new(1);
    let a = randn(&mut rng, &[size, size], device)?.to_dtype(dtype)?;
    let b = randn(&mut rng, &[size, size], device)?.to_dtype(dtype)?;
    // on the same threads as a step's matmuls (bench_step)
    let product = || crate::ops::on_cpu_pool(device, || a.matmul(&b));
    product()?;
    synchronize(device)?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let c = product()?;
        synchronize(device)?;
        times.push(t0.elapsed().as_secs_f64());
        drop(c);
    }
    let (median, _) = median_p90(&mut times);
    Ok(2.0 * (size as f64).powi(3) / median / 1e9)
}

/// A global allocator that can count the bytes live on the heap and their
/// peak, so that a benchmark can report what a step really holds. The
/// `minisora` binary installs it (`#[global_allocator]`); it counts only
/// after [`count_heap`] (one relaxed load per allocation otherwise, so other
/// commands do not pay for shared counters). Where it is not installed or not
/// counting, [`bench_step`] reports no peak.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            // saturating: blocks allocated before counting began come back too
            let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(layout.size()))
            });
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(layout.size()))
            });
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

/// Starts counting heap bytes from zero (what is live already is not
/// counted, and freeing it does not go below zero). Returns whether the
/// counting allocator is installed, found by watching one allocation.
pub fn count_heap() -> bool {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let probe = std::hint::black_box(Box::new(0u64));
    let installed = LIVE.load(Ordering::Relaxed) > 0;
    drop(probe);
    if !installed {
        COUNTING.store(false, Ordering::Relaxed);
    }
    installed
}

/// Bytes allocated and not freed since [`count_heap`], if counting.
pub fn heap_live() -> Option<usize> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| LIVE.load(Ordering::Relaxed))
}

/// The peak of live heap bytes since [`count_heap`], if counting.
pub fn heap_peak() -> Option<usize> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| PEAK.load(Ordering::Relaxed))
}

/// One benchmark case.
#[derive(Clone, Debug)]
pub struct StepCase {
    pub preset: String,
    pub dit: DitConfig,
    /// Patch grid `(t, h, w)`; tokens per clip are its product.
    pub grid: [usize; 3],
    /// Clips per step (before guidance doubles it).
    pub batch: usize,
    /// Run the conditional and unconditional predictions of
    /// classifier-free guidance as one batch of `2 * batch`.
    pub guidance: bool,
    pub dtype: DType,
    pub repeat: usize,
    pub warmup: usize,
}

/// What one case measured.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub preset: String,
    pub device: String,
    pub dtype: String,
    pub grid: [usize; 3],
    pub tokens: usize,
    /// Clips in the forward (2x the batch with guidance).
    pub forward_batch: usize,
    pub guidance: bool,
    pub repeat: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    /// Video tokens denoised per second (all clips of the forward).
    pub tokens_per_s: f64,
    pub cost: StepCost,
    /// Counted FLOPs over the median time, in GFLOP/s.
    pub achieved_gflops: f64,
    /// The machine's matrix multiply rate measured in this run, GFLOP/s.
    pub matmul_peak_gflops: f64,
    /// `achieved / peak`.
    pub peak_fraction: f64,
    /// Bytes a step holds at its peak beyond what was live before it
    /// (weights and inputs excluded): on the CPU the heap, with
    /// [`CountingAlloc`] installed; on a GPU the device memory pool's
    /// high-water mark (`cuda` builds); `None` where neither is known.
    pub peak_memory_bytes: Option<u64>,
}

/// Times one DiT forward (random weights and inputs) for `case`.
pub fn bench_step(case: &StepCase, device: &Device, matmul_peak_gflops: f64) -> Result<StepReport> {
    let cfg = &case.dit;
    // initialised in f32 (candle's CUDA backend draws no random bf16 or
    // f16), then converted to plain tensors: a model on variables would
    // keep every intermediate of the step alive for a backward pass
    let weights = {
        let f32_vars = VarMap::new();
        Dit::new(cfg, VarBuilder::from_varmap(&f32_vars, DType::F32, device))?;
        crate::checkpoint::inference_tensors(&f32_vars, case.dtype)?
    };
    let dit = Dit::new(cfg, VarBuilder::from_tensors(weights, case.dtype, device))?;
    let b = case.batch * if case.guidance { 2 } else { 1 };
    let [lt, lh, lw] = latent_for_grid(case.grid, cfg.patch);
    let mut rng = Rng::new(7);
    let x = randn(&mut rng, &[b, cfg.latent_channels, lt, lh, lw], device)?.to_dtype(case.dtype)?;
    let t = Tensor::from_vec(vec![0.5f32; b], b, device)?.to_dtype(case.dtype)?;
    let context =
        randn(&mut rng, &[b, cfg.context_len, cfg.context_dim], device)?.to_dtype(case.dtype)?;
    let pooled = randn(&mut rng, &[b, cfg.context_dim], device)?.to_dtype(case.dtype)?;
    let keep = Tensor::ones((b, cfg.context_len), case.dtype, device)?;
    // a self-conditioning DiT reads an estimate at every step but a
    // sampler's first, as the FLOP count assumes
    let estimate = cfg.self_cond.then(|| x.clone());
    let step = || -> Result<Tensor> {
        crate::ops::on_cpu_pool(device, || {
            dit.forward_with_estimate(&x, estimate.as_ref(), &t, &context, &pooled, &keep)
        })
    };
    for _ in 0..case.warmup {
        step()?;
    }
    synchronize(device)?;
    let counting = device.is_cpu() && count_heap();
    let before = heap_live();
    let gpu_before = gpu_memory::reset_peak(device);
    let mut times = Vec::with_capacity(case.repeat);
    for _ in 0..case.repeat.max(1) {
        let t0 = Instant::now();
        let out = step()?;
        synchronize(device)?;
        times.push(t0.elapsed().as_secs_f64());
        drop(out);
    }
    let peak = match (counting, before, heap_peak()) {
        (true, Some(before), Some(peak)) => Some(peak.saturating_sub(before) as u64),
        _ => match (gpu_before, gpu_memory::peak(device)) {
            (Some(before), Some(peak)) => Some(peak.saturating_sub(before)),
            _ => None,
        },
    };
    let (median, p90) = median_p90(&mut times);
    let tokens = case.grid.iter().product::<usize>();
    let cost = cfg.step_cost(tokens, b);
    let achieved = cost.total_flops as f64 / median / 1e9;
    Ok(StepReport {
        preset: case.preset.clone(),
        device: if device.is_cpu() { "cpu" } else { "cuda" }.into(),
        dtype: format!("{:?}", case.dtype).to_lowercase(),
        grid: case.grid,
        tokens,
        forward_batch: b,
        guidance: case.guidance,
        repeat: times.len(),
        median_ms: median * 1e3,
        p90_ms: p90 * 1e3,
        tokens_per_s: (tokens * b) as f64 / median,
        cost,
        achieved_gflops: achieved,
        matmul_peak_gflops,
        peak_fraction: achieved / matmul_peak_gflops,
        peak_memory_bytes: peak,
    })
}

/// A DiT of `dit` with every weight random, the zero-initialised adaLN and
/// output layers included (a fresh DiT outputs zeros, which would make a
/// parity check vacuous): `N(0, 1 / fan_in)` for matrices, `N(0, 0.02^2)`
/// for vectors.
pub fn random_dit(dit: &DitConfig, seed: u64, device: &Device) -> Result<(Dit, VarMap)> {
    let varmap = VarMap::new();
    let model = Dit::new(dit, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::Invalid("variable map poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let std = if dims.len() >= 2 {
            1.0 / (dims[1..].iter().product::<usize>() as f64).sqrt()
        } else {
            0.02
        };
        var.set(&(randn(&mut Rng::derive(seed, i as u64), &dims, device)? * std)?)?;
    }
    drop(vars);
    Ok((model, varmap))
}

/// Writes what a peer implementation needs to check itself against
/// minisora's DiT on the CPU in f32: `config.json` (the DiT's configuration,
/// grid, latent size and batch), `weights.safetensors` (random weights,
/// [`random_dit`]), `inputs.safetensors` (`x`, `t`, `context`, `pooled`,
/// `keep`, with the last caption position padded, and for a
/// self-conditioning DiT `estimate`, a previous clean estimate shaped like
/// `x`) and `output.safetensors` (`out`, minisora's prediction).
pub fn export(
    dit: &DitConfig,
    grid: [usize; 3],
    batch: usize,
    dir: &std::path::Path,
) -> Result<()> {
    use crate::checkpoint::{write_json, write_tensors};
    use std::collections::HashMap;
    let device = Device::Cpu;
    let (model, varmap) = random_dit(dit, 11, &device)?;
    let [lt, lh, lw] = latent_for_grid(grid, dit.patch);
    let mut rng = Rng::new(12);
    let x = randn(&mut rng, &[batch, dit.latent_channels, lt, lh, lw], &device)?;
    let t = Tensor::from_vec(
        (0..batch)
            .map(|i| (i as f32 + 0.5) / batch as f32)
            .collect::<Vec<_>>(),
        batch,
        &device,
    )?;
    let context = randn(
        &mut rng,
        &[batch, dit.context_len, dit.context_dim],
        &device,
    )?;
    let pooled = randn(&mut rng, &[batch, dit.context_dim], &device)?;
    let l = dit.context_len;
    let keep: Vec<f32> = (0..batch * l)
        .map(|j| if j % l == l - 1 && l > 1 { 0.0 } else { 1.0 })
        .collect();
    let keep = Tensor::from_vec(keep, (batch, l), &device)?;
    // a self-conditioning DiT is checked as a sampler calls it, with an
    // estimate, so that its embedding is part of the parity
    let estimate = if dit.self_cond {
        Some(randn(&mut rng, x.dims(), &device)?)
    } else {
        None
    };
    let out = model.forward_with_estimate(&x, estimate.as_ref(), &t, &context, &pooled, &keep)?;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "dit": dit,
            "grid": grid,
            "latent": [lt, lh, lw],
            "batch": batch,
        }),
    )?;
    write_tensors(
        &dir.join("weights.safetensors"),
        &crate::checkpoint::named_tensors(&varmap)?,
    )?;
    let inputs: HashMap<String, Tensor> = [
        ("x", Some(x)),
        ("t", Some(t)),
        ("context", Some(context)),
        ("pooled", Some(pooled)),
        ("keep", Some(keep)),
        ("estimate", estimate),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect();
    write_tensors(&dir.join("inputs.safetensors"), &inputs)?;
    write_tensors(
        &dir.join("output.safetensors"),
        &HashMap::from([("out".to_string(), out)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_multiply_to_the_tokens_and_stay_near_cubes() {
        for n in [1, 7, 64, 128, 256, 1000, 1024, 4096, 16384, 32768] {
            let g = grid_for_tokens(n).unwrap();
            assert_eq!(g.iter().product::<usize>(), n, "{n}: {g:?}");
        }
        assert_eq!(grid_for_tokens(64).unwrap(), [4, 4, 4]);
        assert_eq!(grid_for_tokens(128).unwrap(), [4, 4, 8]);
        assert_eq!(grid_for_tokens(7).unwrap(), [1, 1, 7]);
        assert!(grid_for_tokens(0).is_err());
    }

    #[test]
    fn median_and_p90_by_hand() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0, 11.0];
        assert_eq!(median_p90(&mut v), (6.0, 10.0));
    }
}
