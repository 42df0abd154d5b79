//! Text to video: the denoising loop written out. A prompt is tokenized and
//! encoded, noise is integrated from `t = 1` to `t = 0` by a sampler that
//! calls the DiT through classifier-free guidance, and the latent is decoded
//! to frames.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};

use crate::data::shapes_world::Canvas;
use crate::diffusion::{guide, sampler, timesteps, Denoiser, SamplerState};
use crate::rng::Rng;
use crate::train::dit::{DitMeta, TextToVideo};
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
}

/// The DiT with one prompt and guidance folded in, as a [`Denoiser`]; it
/// remembers the data prediction `x - t v` of its last call.
struct Guided<'a> {
    model: &'a TextToVideo,
    cond: Tensor,
    uncond: Tensor,
    cfg: f64,
    cfg_interval: [f64; 2],
    last_prediction: RefCell<Option<Tensor>>,
    /// For a self-conditioning DiT: the last call's clean estimates in the
    /// model's dtype, conditional and unconditional `(2, C, T', H', W')`,
    /// each branch fed its own (as in training, never the guided mix).
    estimates: RefCell<Option<Tensor>>,
}

impl Denoiser for Guided<'_> {
    /// The sampler's state stays in f32 whatever the model's dtype: `x_t`
    /// goes in rounded to the weights' dtype, the velocity comes back in f32.
    fn velocity(&self, x_t: &Tensor, t: f64) -> Result<Tensor> {
        let device = x_t.device();
        let x = x_t.to_dtype(self.model.dit.dtype())?;
        let [from, to] = self.cfg_interval;
        let self_cond = self.model.dit.config.self_cond;
        let previous = self.estimates.borrow().clone();
        let v = if self.cfg == 1.0 || t < from || t > to {
            let time = Tensor::new(&[t as f32], device)?;
            let estimate = previous.map(|e| e.narrow(0, 0, 1)).transpose()?;
            let v = self
                .model
                .velocity(&x, estimate.as_ref(), &time, &self.cond)?;
            if self_cond {
                let e = (&x - (&v * t)?)?;
                self.estimates.replace(Some(Tensor::cat(&[&e, &e], 0)?));
            }
            v.to_dtype(DType::F32)?
        } else {
            // conditional and unconditional in one batch of 2
            let x2 = Tensor::cat(&[&x, &x], 0)?;
            let time = Tensor::new(&[t as f32, t as f32], device)?;
            let ids = Tensor::cat(&[&self.cond, &self.uncond], 0)?;
            let v = self.model.velocity(&x2, previous.as_ref(), &time, &ids)?;
            if self_cond {
                self.estimates.replace(Some((&x2 - (&v * t)?)?));
            }
            let v = v.to_dtype(DType::F32)?;
            guide(&v.narrow(0, 0, 1)?, &v.narrow(0, 1, 1)?, self.cfg)?
        };
        self.last_prediction.replace(Some((x_t - (&v * t)?)?));
        Ok(v)
    }
}

/// A generated clip: frames, its final latent, and the data prediction after
/// each step (normalised latents) for `--show-steps`.
pub struct Generated {
    pub frames: Frames,
    pub latent: Tensor,
    pub predictions: Vec<Tensor>,
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
        let tok = &meta.tokenizer;
        let ids = |v: Vec<u32>| Tensor::from_vec(v, (1, tok.max_len), device);
        let guided = Guided {
            model,
            cond: ids(tok.encode(prompt)?)?,
            uncond: ids(tok.null())?,
            cfg: options.cfg,
            cfg_interval: options.cfg_interval,
            last_prediction: RefCell::new(None),
            estimates: RefCell::new(None),
        };
        let mut x = randn(
            &mut Rng::new(options.seed),
            &[1, meta.dit.latent_channels, lt, lh, lw],
            device,
        )?;
        let mut state = SamplerState::default();
        let mut predictions = Vec::with_capacity(options.steps.min(1 << 16));
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
        let times = timesteps(options.steps, shift);
        let mut first = 0;
        if let Some(init) = init {
            let s = init.strength;
            if !(s > 0.0 && s <= 1.0) {
                crate::invalid!("the strength must be in (0, 1], got {s}");
            }
            if init.latent.dims() != x.dims() {
                crate::invalid!(
                "the starting clip's latent is {:?}, this clip's is {:?}: give a clip of the same frames, height and width",
                init.latent.dims(),
                x.dims()
            );
            }
            first = options.steps - init_steps(options.steps, s);
            let t0 = times[first];
            x = ((init.latent.to_dtype(DType::F32)? * (1.0 - t0))? + (x * t0)?)?;
        }
        for w in times[first..].windows(2) {
            x = sampler.step(&guided, &x, w[0], w[1], &mut state)?;
            if let Some(p) = guided.last_prediction.borrow().as_ref() {
                predictions.push(p.clone());
            }
        }
        Ok(Generated {
            frames: decode(vae, &x)?,
            latent: x,
            predictions,
        })
    })
}
