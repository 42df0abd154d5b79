//! Heun's method (the explicit trapezoidal rule, as in EDM, Karras et al.
//! 2022, algorithm 1): two model calls per step, second order.

use candle_core::Tensor;

use super::{Denoiser, Sampler, SamplerState};
use crate::Result;

pub struct Heun;

impl Sampler for Heun {
    fn step(
        &self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: f64,
        t_next: f64,
        _: &mut SamplerState,
    ) -> Result<Tensor> {
        let dt = t_next - t;
        // (1) Euler predictor: x' = x + dt v(x, t)
        let v = model.velocity(x, t)?;
        let predicted = (x + (&v * dt)?)?;
        // (2) the final step to t = 0 stays first order (EDM algorithm 1, line 7)
        if t_next <= 0.0 {
            return Ok(predicted);
        }
        // (3) corrector: average the slopes at both ends
        let v_next = model.velocity(&predicted, t_next)?;
        Ok((x + ((v + v_next)? * (0.5 * dt))?)?)
    }

    fn evaluations_per_step(&self) -> usize {
        2
    }

    /// The last step, to `t = 0`, makes one call.
    fn evaluations(&self, steps: usize) -> usize {
        (2 * steps).saturating_sub(1)
    }
}
