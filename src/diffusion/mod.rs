//! Rectified flow (Liu et al. 2022; flow matching, Lipman et al. 2023), the
//! objective Sora-era models (SD3, Open-Sora) train with.
//!
//! A clean latent `x0` and noise `eps` are joined by the straight path
//! `x_t = (1 - t) x0 + t eps`, `t` in `[0, 1]`; the model learns the velocity
//! `v = eps - x0` that moves along it. Sampling integrates `dx/dt = v` from
//! `t = 1` (pure noise) to `t = 0` with one of the samplers (`euler`,
//! `heun`, `dpm_solver`). The model and the samplers never see each other:
//! samplers call anything that implements [`Denoiser`].

pub mod dpm_solver;
pub mod euler;
pub mod heun;

use candle_core::Tensor;

use crate::rng::Rng;
use crate::{invalid, Result};

pub use dpm_solver::DpmSolver2M;
pub use euler::Euler;
pub use heun::Heun;

/// Something that predicts the flow's velocity at `(x_t, t)` (a DiT with its
/// conditioning and guidance folded in, or an analytic field in tests).
pub trait Denoiser {
    /// `x_t` of any shape -> velocity of the same shape.
    fn velocity(&self, x_t: &Tensor, t: f64) -> Result<Tensor>;
}

/// One solver of the flow ODE. Multistep solvers keep their history in
/// [`SamplerState`], so a loop can be paused, inspected and resumed.
pub trait Sampler {
    /// Moves `x` from time `t` to `t_next < t`, calling `model` as often as
    /// the method needs.
    fn step(
        &self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: f64,
        t_next: f64,
        state: &mut SamplerState,
    ) -> Result<Tensor>;

    /// Model calls per step (1 for Euler and DPM-Solver++(2M), 2 for Heun).
    fn evaluations_per_step(&self) -> usize;

    /// Model calls of a whole `steps`-step run.
    fn evaluations(&self, steps: usize) -> usize {
        steps * self.evaluations_per_step()
    }
}

/// What a multistep solver carries from one step to the next.
#[derive(Clone, Debug, Default)]
pub struct SamplerState {
    /// The previous step's data prediction and its time.
    pub previous: Option<(Tensor, f64)>,
}

/// The samplers by name.
pub const SAMPLERS: &[&str] = &["euler", "heun", "dpm++2m"];

/// A sampler by name.
pub fn sampler(name: &str) -> Result<Box<dyn Sampler>> {
    match name {
        "euler" => Ok(Box::new(Euler)),
        "heun" => Ok(Box::new(Heun)),
        "dpm++2m" | "dpm" => Ok(Box::new(DpmSolver2M)),
        _ => invalid!(
            "unknown sampler \"{name}\": expected one of {}",
            SAMPLERS.join(", ")
        ),
    }
}

/// `steps + 1` times from 1 to 0. `shift > 1` spends more steps at high
/// noise, where the coarse layout is decided (SD3's timestep shift:
/// `t' = shift t / (1 + (shift - 1) t)`).
pub fn timesteps(steps: usize, shift: f64) -> Vec<f64> {
    (0..=steps)
        .map(|i| shift_time(1.0 - i as f64 / steps as f64, shift))
        .collect()
}

/// SD3's timestep shift `t' = shift t / (1 + (shift - 1) t)`: a monotone map
/// of `[0, 1]` onto itself that moves mass towards `t = 1` for `shift > 1`.
/// Training draws its times through it and sampling spaces its steps by it,
/// with the same `shift`, which the model's checkpoint records.
pub fn shift_time(t: f64, shift: f64) -> f64 {
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// The point `x_t = (1 - t) x0 + t eps` of the path and its velocity target
/// `eps - x0`. `t` is `(B,)`; `x0` and `eps` are `(B, ...)`.
pub fn interpolate(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut shape = vec![x0.dim(0)?];
    shape.extend(std::iter::repeat_n(1, x0.rank() - 1));
    let t = t.reshape(shape)?;
    let x_t = (x0.broadcast_mul(&(1.0 - &t)?)? + eps.broadcast_mul(&t)?)?;
    Ok((x_t, (eps - x0)?))
}

/// Training times from the logit-normal distribution `t = sigmoid(n)`,
/// `n ~ N(mean, std)` (SD3, Esser et al. 2024), then shifted by
/// [`shift_time`]: most weight in the middle, where the velocity is hardest to
/// predict, moved towards high noise by `shift > 1`.
///
/// Why shift: a Shapes World latent is mostly flat background, so an object
/// stays visible through a lot of noise and its place (and with it the
/// motion, which ties the places of all frames together) is decided only
/// above `t = 0.9`, where unshifted logit-normal draws fall 1.4% of the time.
pub fn logit_normal(rng: &mut Rng, n: usize, mean: f64, std: f64, shift: f64) -> Vec<f32> {
    logit_normal_mixed(rng, &vec![false; n], mean, std, shift)
}

/// [`logit_normal`] with some draws left unshifted: draw `i` is shifted
/// unless `unshifted[i]`. A mixture keeps the training at high noise that the
/// shift buys while still training the middle times, where the unshifted
/// distribution puts its weight and where an object's shape is settled.
pub fn logit_normal_mixed(
    rng: &mut Rng,
    unshifted: &[bool],
    mean: f64,
    std: f64,
    shift: f64,
) -> Vec<f32> {
    crate::train::gaussian(rng, unshifted.len())
        .into_iter()
        .zip(unshifted)
        .map(|(z, &plain)| {
            let t = 1.0 / (1.0 + (-(mean + std * z as f64)).exp());
            shift_time(t, if plain { 1.0 } else { shift }) as f32
        })
        .collect()
}

/// Classifier-free guidance (Ho and Salimans 2022): `v_u + g (v_c - v_u)`.
/// `g = 1` is the conditional prediction itself.
pub fn guide(v_cond: &Tensor, v_uncond: &Tensor, scale: f64) -> Result<Tensor> {
    if scale == 1.0 {
        return Ok(v_cond.clone());
    }
    Ok((v_uncond + ((v_cond - v_uncond)? * scale)?)?)
}
