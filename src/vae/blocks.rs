//! Building blocks at latent resolution, channels last `(B, T, H, W, D)`:
//! neighbourhood mixes written as one matrix multiply over gathered
//! neighbours (im2col by hand), so candle runs them as a single GEMM.

use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use crate::ops::{gather_neighbours, silu};
use crate::Result;

/// A linear layer whose weights and bias start at zero, so that a residual
/// branch ending in it starts as the identity.
pub fn linear_zero(inp: usize, out: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out, inp), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(out, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Applies `linear` to the last axis of a tensor of any rank.
pub fn apply_last(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (lead, d) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let x = x.reshape((rows, d[0]))?;
    let y = match linear.bias() {
        // bias fused into the GEMM where that is turned on (a GPU)
        Some(b) if crate::ops::fused_linear() && x.device().is_cuda() => {
            crate::ops::linear(&x, linear.weight(), b, false)?
        }
        _ => linear.forward(&x)?,
    };
    let mut out = lead.to_vec();
    out.push(y.dim(1)?);
    Ok(y.reshape(out)?)
}

/// 3x3 spatial neighbourhood mix (zero padding): `(B, T, H, W, D) -> (B, T, H, W, D_out)`.
pub struct SpatialMix {
    linear: Linear,
}

impl SpatialMix {
    pub fn new(d: usize, out: usize, zero: bool, vb: VarBuilder) -> Result<Self> {
        let linear = if zero {
            linear_zero(9 * d, out, vb)?
        } else {
            candle_nn::linear(9 * d, out, vb)?
        };
        Ok(Self { linear })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, w, d) = x.dims5()?;
        let g = gather_neighbours(&x.reshape((b * t, h, w, d))?, 3, 3)?; // (B*T, H, W, 9D)
        apply_last(&self.linear, &g.reshape((b, t, h, w, 9 * d))?)
    }
}

/// 3-tap temporal mix (zero padding): `(B, T, H, W, D) -> (B, T, H, W, D_out)`.
pub struct TemporalMix {
    linear: Linear,
}

impl TemporalMix {
    pub fn new(d: usize, out: usize, zero: bool, vb: VarBuilder) -> Result<Self> {
        let linear = if zero {
            linear_zero(3 * d, out, vb)?
        } else {
            candle_nn::linear(3 * d, out, vb)?
        };
        Ok(Self { linear })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, w, d) = x.dims5()?;
        // time as the gather's height, space flattened as its width, 3x1 kernel
        let g = gather_neighbours(&x.reshape((b, t, h * w, d))?, 3, 1)?; // (B, T, HW, 3D)
        apply_last(&self.linear, &g.reshape((b, t, h, w, 3 * d))?)
    }
}

/// Residual (2+1)D block: `x + temporal(silu(spatial(silu(x))))`; the
/// temporal mix starts at zero, so a fresh block is the identity.
pub struct ResBlock {
    spatial: SpatialMix,
    temporal: TemporalMix,
}

impl ResBlock {
    pub fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            spatial: SpatialMix::new(d, d, false, vb.pp("spatial"))?,
            temporal: TemporalMix::new(d, d, true, vb.pp("temporal"))?,
        })
    }

    /// # Shapes
    /// `(B, T, H, W, D) -> (B, T, H, W, D)`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.spatial.forward(&silu(x)?)?;
        let y = self.temporal.forward(&silu(&y)?)?;
        Ok((x + y)?)
    }
}
