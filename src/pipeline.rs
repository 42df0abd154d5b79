//! Text to video: the denoising loop written out. A prompt is tokenized and
//! encoded, noise is integrated from `t = 1` to `t = 0` by a sampler that
//! calls the DiT through classifier-free guidance, and the latent is decoded
//! to frames.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};

use crate::data::shapes_world::{Canvas, Scene};
use crate::diffusion::{guide, sampler, timesteps, Denoiser, SamplerState};
use crate::rng::Rng;
use crate::train::dit::{Caption, DitMeta, TextToVideo};
use crate::train::randn;
use crate::train::vae::VaeCheckpoint;
use crate::video::{frames_to_tensor, tensor_to_frames, Frames};
use crate::Result;

/// How to sample one clip.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub seed: u64,
    pub steps: usize,
    /// `euler`, `heun` or `dpm++2m`.
    pub sampler: String,
    /// Guidance scale; 1 is the conditional prediction alone.
    pub cfg: f64,
    /// The times `[from, to]` (0 = data, 1 = noise) at which guidance
    /// applies; outside them a step takes the conditional prediction alone
    /// (a guidance interval, Kynkaanniemi et al. 2024). `[0, 1]`: every step.
    pub cfg_interval: [f64; 2],
    /// Timestep shift (1 = uniform steps); `None`: the shift the model was
    /// trained with.
    pub shift: Option<f64>,
    pub canvas: Canvas,
    /// Clips sampled for the prompt (one batch), of which the one the model
    /// itself judges to show the prompt best is kept ([`prompt_scores`]);
    /// 1 samples one clip and scores nothing.
    pub candidates: usize,
    /// `true`: weigh each candidate against the captions it is most easily
    /// taken for ([`Scene::rivals`], for a prompt of the Shapes World
    /// grammar) besides the empty caption; `false`: against the empty
    /// caption alone. See [`prompt_scores`].
    pub rivals: bool,
}

/// The DiT with one prompt and guidance folded in, as a [`Denoiser`] of a
/// batch of `B` clips of that prompt; it remembers the data prediction `x -
/// t v` of its last call.
struct Guided<'a> {
    model: &'a TextToVideo,
    /// The prompt, `B` times.
    cond: Caption,
    /// The prompt `B` times, then the empty caption `B` times (one guided
    /// call's batch of `2B`).
    both: Caption,
    cfg: f64,
    cfg_interval: [f64; 2],
    last_prediction: RefCell<Option<Tensor>>,
    /// For a self-conditioning DiT: the last call's clean estimates in the
    /// model's dtype, conditional and unconditional `(2B, C, T', H', W')`,
    /// each branch fed its own (as in training, never the guided mix).
    estimates: RefCell<Option<Tensor>>,
}

impl Denoiser for Guided<'_> {
    /// The sampler's state stays in f32 whatever the model's dtype: `x_t`
    /// goes in rounded to the weights' dtype, the velocity comes back in f32.
    fn velocity(&self, x_t: &Tensor, t: f64) -> Result<Tensor> {
        let device = x_t.device();
        let b = x_t.dim(0)?;
        let x = x_t.to_dtype(self.model.dit.dtype())?;
        let [from, to] = self.cfg_interval;
        let self_cond = self.model.dit.config.self_cond;
        let previous = self.estimates.borrow().clone();
        let v = if self.cfg == 1.0 || t < from || t > to {
            let time = Tensor::from_vec(vec![t as f32; b], b, device)?;
            let estimate = previous.map(|e| e.narrow(0, 0, b)).transpose()?;
            let v = self
                .model
                .velocity_for(&self.cond, &x, estimate.as_ref(), &time)?;
            if self_cond {
                let e = (&x - (&v * t)?)?;
                self.estimates.replace(Some(Tensor::cat(&[&e, &e], 0)?));
            }
            v.to_dtype(DType::F32)?
        } else {
            // conditional and unconditional in one batch of 2B
            let x2 = Tensor::cat(&[&x, &x], 0)?;
            let time = Tensor::from_vec(vec![t as f32; 2 * b], 2 * b, device)?;
            let v = self
                .model
                .velocity_for(&self.both, &x2, previous.as_ref(), &time)?;
            if self_cond {
                self.estimates.replace(Some((&x2 - (&v * t)?)?));
            }
            let v = v.to_dtype(DType::F32)?;
            guide(&v.narrow(0, 0, b)?, &v.narrow(0, b, b)?, self.cfg)?
        };
        self.last_prediction.replace(Some((x_t - (&v * t)?)?));
        Ok(v)
    }
}

/// A generated clip: frames, its final latent, and the data prediction after
/// each step (normalised latents) for `--show-steps`; with several
/// candidates, the kept one's, and every candidate's score.
pub struct Generated {
    pub frames: Frames,
    pub latent: Tensor,
    pub predictions: Vec<Tensor>,
    /// [`prompt_scores`] of the candidates, in candidate order (empty for
    /// one candidate, which is not scored).
    pub scores: Vec<f64>,
    /// The candidate kept: the best scored (0 for one candidate).
    pub chosen: usize,
    /// Rival captions the candidates were weighed against besides the
    /// empty caption (0 without [`SampleOptions::rivals`], for a prompt
    /// outside the grammar, or for one candidate).
    pub rivals: usize,
}

/// Decodes normalised latents `(1, C, T', H', W')` to frames (in the
/// autoencoder's dtype).
pub fn decode(vae: &VaeCheckpoint, z: &Tensor) -> Result<Frames> {
    let (scale, shift) = (vae.meta.scale_factor, vae.meta.latent_mean);
    let latent = z.affine(1.0 / scale, shift)?.to_dtype(vae.dtype()?)?;
    tensor_to_frames(&vae.vae.decode(&latent)?.clamp(-1.0, 1.0)?)
}

/// Encodes frames `(T, H, W, 3)` to the normalised latent `(1, C, T', H',
/// W')` the DiT works in (the encoder's mean): the inverse of [`decode`].
pub fn encode(vae: &VaeCheckpoint, frames: &Frames, device: &Device) -> Result<Tensor> {
    let x = frames_to_tensor(&frames.view(), device)?.to_dtype(vae.dtype()?)?;
    let z = vae.vae.encode(&x)?.mean.to_dtype(DType::F32)?;
    let (scale, shift) = (vae.meta.scale_factor, vae.meta.latent_mean);
    Ok(z.affine(scale, -shift * scale)?)
}

/// A clip to start from instead of pure noise (SDEdit, Meng et al. 2022; the
/// Sora report's video-to-video editing): only the last `strength` share of
/// the sampling steps is run, from the clip's latent noised to the time the
/// first of them starts at ([`init_time`]); so 1 ignores the clip, and small
/// values keep its layout and redraw its detail.
#[derive(Clone, Debug)]
pub struct Init {
    /// Normalised latent `(1, C, T', H', W')`, from [`encode`].
    pub latent: Tensor,
    /// In `(0, 1]`: the share of the sampling schedule that is run.
    pub strength: f64,
}

/// How many of `steps` steps an [`Init`] of `strength` runs: the last
/// `strength` of them, at least one.
pub fn init_steps(steps: usize, strength: f64) -> usize {
    ((strength * steps as f64).round() as usize)
        .max(1)
        .min(steps)
}

/// The time an [`Init`] of `strength` is noised to, with `steps` steps
/// spaced by `shift`.
pub fn init_time(steps: usize, shift: f64, strength: f64) -> f64 {
    timesteps(steps, shift)[steps - init_steps(steps, strength)]
}

/// Generates one clip of `prompt`.
pub fn generate(
    model: &TextToVideo,
    meta: &DitMeta,
    vae: &VaeCheckpoint,
    prompt: &str,
    options: &SampleOptions,
    device: &Device,
) -> Result<Generated> {
    generate_from(model, meta, vae, prompt, options, None, device)
}

/// Generates one clip of `prompt`, from `init` when given (see [`Init`]).
pub fn generate_from(
    model: &TextToVideo,
    meta: &DitMeta,
    vae: &VaeCheckpoint,
    prompt: &str,
    options: &SampleOptions,
    init: Option<&Init>,
    device: &Device,
) -> Result<Generated> {
    crate::ops::on_cpu_pool(device, || {
        let sampler = sampler(&options.sampler)?;
        if options.steps == 0 {
            crate::invalid!("--steps must be at least 1");
        }
        let c = options.canvas;
        let [lt, lh, lw] = vae.meta.vae.latent_size([c.frames, c.height, c.width])?;
        // said in the user's units: a size must fill whole tokens, and a token
        // spans compression x patch pixels (the default model: 16 frames, 4 x 4)
        let (p, v) = (meta.dit.patch, &vae.meta.vae);
        for (axis, n, latent, patch, factor) in [
            ("--frames", c.frames, lt, p.t, v.ft),
            ("--height", c.height, lh, p.h, v.fs),
            ("--width", c.width, lw, p.w, v.fs),
        ] {
            if latent % patch != 0 {
                let step = patch * factor;
                crate::invalid!(
                "{axis} {n} does not fit this model: its tokens span {step} along that axis, so use a multiple of {step} (e.g. {})",
                (n / step).max(1) * step
            );
            }
        }
        let n = options.candidates;
        if n == 0 {
            crate::invalid!("--candidates must be at least 1");
        }
        let shift = options.shift.unwrap_or(meta.time_shift);
        if !(shift.is_finite() && shift > 0.0) {
            crate::invalid!("--shift must be a positive number, got {shift}");
        }
        let [from, to] = options.cfg_interval;
        if !(0.0..=1.0).contains(&from) || !(from..=1.0).contains(&to) {
            crate::invalid!(
                "--cfg-interval must be two times FROM,TO with 0 <= FROM <= TO <= 1, got {from},{to}"
            );
        }
        let tok = &meta.tokenizer;
        let ids = |v: Vec<u32>| Tensor::from_vec(v, (1, tok.max_len), device);
        let (cond, uncond) = (ids(tok.encode(prompt)?)?, ids(tok.null())?);
        // the prompt n times, then the empty caption n times, encoded once
        let both = model.encode(&Tensor::cat(
            &[cond.repeat((n, 1))?, uncond.repeat((n, 1))?],
            0,
        )?)?;
        let guided = Guided {
            model,
            cond: both.narrow(0, n)?,
            both,
            cfg: options.cfg,
            cfg_interval: options.cfg_interval,
            last_prediction: RefCell::new(None),
            estimates: RefCell::new(None),
        };
        // candidate i's noise is drawn from its own seed, so a clip's
        // candidates do not depend on how many there are
        let one = [1, meta.dit.latent_channels, lt, lh, lw];
        let noise = (0..n)
            .map(|i| randn(&mut Rng::new(candidate_seed(options.seed, i)), &one, device))
            .collect::<Result<Vec<_>>>()?;
        let mut x = Tensor::cat(&noise, 0)?;
        let times = timesteps(options.steps, shift);
        let mut first = 0;
        if let Some(init) = init {
            let s = init.strength;
            if !(s > 0.0 && s <= 1.0) {
                crate::invalid!("the strength must be in (0, 1], got {s}");
            }
            if init.latent.dims() != one {
                crate::invalid!(
                "the starting clip's latent is {:?}, this clip's is {:?}: give a clip of the same frames, height and width",
                init.latent.dims(),
                one
            );
            }
            first = options.steps - init_steps(options.steps, s);
            let t0 = times[first];
            let start = (init.latent.to_dtype(DType::F32)? * (1.0 - t0))?;
            x = start.broadcast_add(&(x * t0)?)?;
        }
        let mut state = SamplerState::default();
        let mut predictions = Vec::with_capacity(options.steps.min(1 << 16));
        for w in times[first..].windows(2) {
            x = sampler.step(&guided, &x, w[0], w[1], &mut state)?;
            if let Some(p) = guided.last_prediction.borrow().as_ref() {
                predictions.push(p.clone());
            }
        }
        let (scores, chosen, rivals) = if n == 1 {
            (Vec::new(), 0, 0)
        } else {
            let mut against = vec![uncond.clone()];
            if options.rivals {
                for rival in rival_captions(prompt) {
                    // a rival the model cannot read (a word outside its
                    // vocabulary) is a mistake it cannot make: left out
                    if let Ok(words) = tok.encode(&rival) {
                        against.push(ids(words)?);
                    }
                }
            }
            let scores = prompt_scores(model, &cond, &Tensor::cat(&against, 0)?, &x, options.seed)?;
            let chosen = (0..n).fold(0, |best, i| if scores[i] > scores[best] { i } else { best });
            (scores, chosen, against.len() - 1)
        };
        let x = x.narrow(0, chosen, 1)?;
        let predictions = predictions
            .iter()
            .map(|p| p.narrow(0, chosen, 1))
            .collect::<candle_core::Result<_>>()?;
        Ok(Generated {
            frames: decode(vae, &x)?,
            latent: x,
            predictions,
            scores,
            chosen,
            rivals,
        })
    })
}

/// The noise seed of candidate `i` of a clip of seed `seed`: candidate 0 is
/// the clip's own seed, so one candidate is the plain sampler.
pub fn candidate_seed(seed: u64, i: usize) -> u64 {
    if i == 0 {
        seed
    } else {
        Rng::derive(seed ^ 0xc4d1_da7e, i as u64).next_u64()
    }
}

/// Noise draws per candidate of [`prompt_scores`].
pub const SCORE_DRAWS: usize = 16;

/// The most clip-rows one forward of [`prompt_scores`] takes (whole
/// captions' rows: more when one caption has more).
const SCORE_ROWS: usize = 128;

/// The times [`prompt_scores`] noises a latent to: [`SCORE_DRAWS`] spread
/// evenly over `(0.5, 1)`. The high half only, because that is where the
/// layout (how many objects, where, how large) is decided and what the
/// other half sees of it is mostly edges: on the 200 two-object eval
/// prompts of the model shipped 2026-12-06, 8 candidates each, scoring
/// over `t >= 0.5` kept a passing clip 52.0% of the time, over `t < 0.5`
/// 42.5%, and a candidate drawn at random passes 42.2%
/// (samples/model/history.md, "Sampling: four candidates").
pub fn score_times() -> Vec<f32> {
    let k = SCORE_DRAWS as f64;
    (0..SCORE_DRAWS)
        .map(|i| (0.5 + 0.5 * (i as f64 + 0.5) / k) as f32)
        .collect()
}

/// The captions of the scenes a clip of `prompt` is most easily taken for
/// ([`Scene::rivals`]); none for a prompt outside the Shapes World grammar.
pub fn rival_captions(prompt: &str) -> Vec<String> {
    Scene::parse(prompt)
        .map(|scene| scene.rivals().iter().map(Scene::caption).collect())
        .unwrap_or_default()
}

/// How much better the prompt `cond` `(1, L)` explains each clean latent of
/// `x0` `(B, C, T', H', W')` than the captions `against` `(R, L)` do (the
/// empty caption, and maybe rivals), as the model itself judges it: a
/// diffusion classifier (Li et al. 2023). Each latent is noised at the
/// [`score_times`]; its score is the mean over them and over `against` of
/// that caption's velocity's squared error minus the prompt's. Each error
/// bounds the latent's log likelihood under its caption, so the difference
/// estimates how much more likely the prompt makes the clip: a clip with an
/// extra object, two merged ones or the wrong shape is explained worse.
/// The prompt's error alone is no score: it prefers plain clips (fewer or
/// smaller objects), whatever the prompt. Every latent gets the same draws
/// (times and noise, from `seed`), so the scores of one prompt's candidates
/// are compared on equal terms. Higher is better. The DiT reads no
/// self-conditioning estimate here.
pub fn prompt_scores(
    model: &TextToVideo,
    cond: &Tensor,
    against: &Tensor,
    x0: &Tensor,
    seed: u64,
) -> Result<Vec<f64>> {
    let device = x0.device();
    if cond.dim(0)? != 1 || against.dim(0)? == 0 {
        crate::invalid!(
            "prompt_scores weighs one prompt (1, L) against at least one caption, got {:?} against {:?}",
            cond.dims(),
            against.dims()
        );
    }
    let (b, k) = (x0.dim(0)?, SCORE_DRAWS);
    let one = [&[1][..], &x0.dims()[1..]].concat();
    let times = score_times();
    let eps = randn(
        &mut Rng::derive(seed ^ 0x5c0e_d1ff, 0),
        &[&[k][..], &one[1..]].concat(),
        device,
    )?;
    // row i * k + j: latent i at draw j
    let x0 = x0.to_dtype(DType::F32)?.unsqueeze(1)?;
    let rows = [&[b, k][..], &one[1..]].concat();
    let x0 = x0.broadcast_as(rows.as_slice())?.flatten_to(1)?;
    let eps = eps
        .unsqueeze(0)?
        .broadcast_as(rows.as_slice())?
        .flatten_to(1)?;
    let t = Tensor::from_vec(times.repeat(b), b * k, device)?;
    let (x_t, target) = crate::diffusion::interpolate(&x0, &eps, &t)?;
    let n = 1 + against.dim(0)?;
    let x_t = x_t.to_dtype(model.dit.dtype())?;
    // the captions encoded once; each caption's rows are the latents at
    // their draws, and on the CPU a forward takes whole captions' rows, at
    // most SCORE_ROWS of them (one batch of every caption's rows at once
    // runs slower per row there; a GPU takes them all at once)
    let captions = model.encode(&Tensor::cat(&[cond, against], 0)?)?;
    let per_forward = match device.is_cpu() {
        true => (SCORE_ROWS / (b * k)).max(1),
        false => n,
    };
    // the latents, times and targets of a whole forward, made once (a
    // shorter last forward takes their first rows)
    let whole = |x: &Tensor| Tensor::cat(&vec![x; per_forward.min(n)], 0);
    let (x_all, t_all, target_all) = (whole(&x_t)?, whole(&t)?, whole(&target)?);
    let mut err: Vec<f32> = Vec::with_capacity(n * b * k);
    for first in (0..n).step_by(per_forward) {
        let m = per_forward.min(n - first);
        let part = |x: &Tensor| x.narrow(0, 0, m * b * k);
        let rows = |x: &Tensor| -> Result<Tensor> {
            let each = |i: usize| -> Result<Tensor> {
                let r = x.narrow(0, i, 1)?;
                let mut reps = vec![1; r.rank()];
                reps[0] = b * k;
                Ok(r.repeat(reps.as_slice())?)
            };
            let all = (first..first + m).map(each).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&all, 0)?)
        };
        let group = Caption {
            context: rows(&captions.context)?,
            pooled: rows(&captions.pooled)?,
            keep: rows(&captions.keep)?,
        };
        let v = model
            .velocity_for(&group, &part(&x_all)?, None, &part(&t_all)?)?
            .to_dtype(DType::F32)?;
        err.extend(
            (v - part(&target_all)?)?
                .sqr()?
                .flatten_from(1)?
                .mean(1)?
                .to_vec1::<f32>()?,
        );
    }
    // err[(j * b + i) * k + d]: caption j (0 the prompt), latent i, draw d
    let (c, others) = err.split_at(b * k);
    Ok((0..b)
        .map(|i| {
            let d = i * k..(i + 1) * k;
            others
                .chunks(b * k)
                .map(|o| {
                    o[d.clone()]
                        .iter()
                        .zip(&c[d.clone()])
                        .map(|(&o, &c)| (o - c) as f64)
                        .sum::<f64>()
                })
                .sum::<f64>()
                / (k * (n - 1)) as f64
        })
        .collect())
}
