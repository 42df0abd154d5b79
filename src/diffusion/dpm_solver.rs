//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2), written
//! for the rectified-flow path `x_t = alpha_t x0 + sigma_t eps` with
//! `alpha_t = 1 - t`, `sigma_t = t`. One model call per step, second order
//! from the second step on, through the previous data prediction kept in
//! [`SamplerState`].

use candle_core::Tensor;

use super::{Denoiser, Sampler, SamplerState};
use crate::Result;

pub struct DpmSolver2M;

/// `lambda_t = log(alpha_t / sigma_t)`, the half log-SNR (infinite at the ends).
fn lambda(t: f64) -> f64 {
    ((1.0 - t) / t).ln()
}

impl Sampler for DpmSolver2M {
    fn step(
        &self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: f64,
        t_next: f64,
        state: &mut SamplerState,
    ) -> Result<Tensor> {
        // (1) data prediction from the velocity: x0 = x_t - t v
        let v = model.velocity(x, t)?;
        let d = (x - (&v * t)?)?;
        let previous = state.previous.replace((d.clone(), t));
        // (2) the last step lands on t = 0, where x_0 is the data prediction
        if t_next <= 0.0 {
            return Ok(d);
        }
        let (alpha_next, sigma_next) = (1.0 - t_next, t_next);
        // e^{-h} = (alpha_s sigma_t) / (sigma_s alpha_t), exact even where lambda_s = -inf (t = 1)
        let exp_neg_h = ((1.0 - t) * sigma_next) / (t * alpha_next);
        // (3) second order: D = (1 + 1/(2r)) D_s - 1/(2r) D_{s-1}, r = h_{s-1} / h  (eq. 16)
        let d = match previous {
            Some((d_prev, t_prev)) if lambda(t_prev).is_finite() => {
                let h = lambda(t_next) - lambda(t);
                let r = (lambda(t) - lambda(t_prev)) / h;
                ((&d * (1.0 + 0.5 / r))? - (d_prev * (0.5 / r))?)?
            }
            _ => d,
        };
        // (4) x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D  (eq. 15)
        Ok(((x * (sigma_next / t))? - (d * (alpha_next * (exp_neg_h - 1.0)))?)?)
    }

    fn evaluations_per_step(&self) -> usize {
        1
    }
}
