//! Throughput of the generation path: one denoising step (a DiT forward)
//! per preset and token count, spacetime patchify and unpatchify, the
//! compression network's decoder, and the samplers' own update cost.
//! `cargo bench --bench denoise`; `minisora bench` reports FLOP rates.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use minisora::bench::{grid_for_tokens, latent_for_grid};
use minisora::diffusion::{sampler, Denoiser, SamplerState};
use minisora::dit::Dit;
use minisora::ops::on_cpu_pool;
use minisora::patch::{patchify, unpatchify, PatchSize, Remainder};
use minisora::preset::preset;
use minisora::rng::Rng;
use minisora::train::randn;
use minisora::vae::{Vae, VaeConfig};

fn random(shape: &[usize], seed: u64) -> Tensor {
    randn(&mut Rng::new(seed), shape, &Device::Cpu).unwrap()
}

fn bench_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("denoising_step");
    group.sample_size(10);
    for (name, tokens) in [("default", 128), ("default", 512), ("S", 128), ("S", 512)] {
        let cfg = preset(name).unwrap().dit;
        let varmap = VarMap::new();
        let dit = Dit::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let [lt, lh, lw] = latent_for_grid(grid_for_tokens(tokens).unwrap(), cfg.patch);
        // batch 2: the conditional and unconditional halves of guidance
        let x = random(&[2, cfg.latent_channels, lt, lh, lw], 1);
        let t = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap();
        let context = random(&[2, cfg.context_len, cfg.context_dim], 2);
        let pooled = random(&[2, cfg.context_dim], 3);
        let keep = Tensor::ones((2, cfg.context_len), DType::F32, &Device::Cpu).unwrap();
        // a self-conditioning DiT (the default) reads an estimate at every
        // sampler step but the first
        let estimate = cfg.self_cond.then(|| x.clone());
        group.throughput(Throughput::Elements(2 * tokens as u64));
        group.bench_function(format!("{name} {tokens} tokens x2"), |b| {
            // on the threads `minisora bench` and `generate` run a step on
            b.iter(|| {
                on_cpu_pool(&Device::Cpu, || {
                    dit.forward_with_estimate(&x, estimate.as_ref(), &t, &context, &pooled, &keep)
                })
                .unwrap()
            })
        });
    }
    group.finish();
}

fn bench_patches(c: &mut Criterion) {
    let mut group = c.benchmark_group("patches");
    let patch = PatchSize::new(1, 2, 2).unwrap();
    for (t, h, w) in [(8, 8, 8), (16, 32, 32)] {
        let x = random(&[1, 16, t, h, w], 4);
        let tokens = patchify(&x, patch, Remainder::Reject).unwrap();
        group.throughput(Throughput::Elements((16 * t * h * w) as u64));
        group.bench_function(format!("patchify 16x{t}x{h}x{w}"), |b| {
            b.iter(|| patchify(&x, patch, Remainder::Reject).unwrap())
        });
        group.bench_function(format!("unpatchify 16x{t}x{h}x{w}"), |b| {
            b.iter(|| unpatchify(&tokens.tokens, tokens.grid, patch, 16, [t, h, w]).unwrap())
        });
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let config = VaeConfig::default_preset();
    let varmap = VarMap::new();
    let vae = Vae::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    // one default clip: 16 frames of 32x32
    let z = random(&[1, config.latent_channels, 8, 8, 8], 5);
    let mut group = c.benchmark_group("vae");
    group.throughput(Throughput::Elements(16));
    group.sample_size(20);
    group.bench_function("decode 16x32x32", |b| {
        b.iter(|| on_cpu_pool(&Device::Cpu, || vae.decode(&z)).unwrap())
    });
    group.finish();
}

/// A denoiser that costs nothing, so the samplers' own arithmetic is what is timed.
struct Free;

impl Denoiser for Free {
    fn velocity(&self, x_t: &Tensor, _t: f64) -> minisora::Result<Tensor> {
        Ok(x_t.clone())
    }
}

fn bench_samplers(c: &mut Criterion) {
    let x = random(&[1, 16, 8, 8, 8], 6);
    let mut group = c.benchmark_group("sampler_update");
    group.throughput(Throughput::Elements(x.elem_count() as u64));
    for name in ["euler", "heun", "dpm++2m"] {
        let s = sampler(name).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut state = SamplerState::default();
                let y = s.step(&Free, &x, 0.6, 0.5, &mut state).unwrap();
                s.step(&Free, &y, 0.5, 0.4, &mut state).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_step,
    bench_patches,
    bench_decode,
    bench_samplers
);
criterion_main!(benches);
