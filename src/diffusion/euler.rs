//! Euler's method on the flow ODE: one model call per step, first order.

use candle_core::Tensor;

use super::{Denoiser, Sampler, SamplerState};
use crate::Result;

/// `x_{t'} = x_t + (t' - t) v(x_t, t)`.
pub struct Euler;

impl Sampler for Euler {
    fn step(
        &self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: f64,
        t_next: f64,
        _: &mut SamplerState,
    ) -> Result<Tensor> {
        // (1) the velocity at the current point
        let v = model.velocity(x, t)?;
        // (2) a straight step along it: dt = t' - t < 0
        Ok((x + (v * (t_next - t))?)?)
    }

    fn evaluations_per_step(&self) -> usize {
        1
    }
}
