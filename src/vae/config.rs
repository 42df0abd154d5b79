//! The autoencoder's hyper-parameters.

use serde::{Deserialize, Serialize};

use crate::{invalid, Result};

/// Every hyper-parameter of the compression network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Temporal compression: frames per latent frame (1, 2 or 4).
    pub ft: usize,
    /// Spatial compression: pixels per latent pixel along height and width (4 or 8).
    pub fs: usize,
    /// Latent channels `C`.
    pub latent_channels: usize,
    /// Width of the hidden features at latent resolution.
    pub width: usize,
    /// Residual (2+1)D blocks in the encoder and, as many, in the decoder.
    pub blocks: usize,
    /// Weight of the KL term (mean over latent values) against the mean
    /// squared reconstruction error: small, so the latent stays close to a
    /// Gaussian without costing detail.
    pub kl_weight: f64,
    /// Channels per pixel the patch decoder hands to the full-resolution
    /// refinement (0: the patch decoder writes RGB directly and there is no
    /// refinement). The first 3 are a coarse RGB; a 3x3 convolution over all
    /// of them adds a correction, so edges can line up across patch borders.
    #[serde(default)]
    pub pixel_channels: usize,
    /// Hidden width of the refinement's 3x3 convolution.
    #[serde(default)]
    pub pixel_width: usize,
}

impl VaeConfig {
    /// The default compression network: 2x in time, 4x in space, 16
    /// channels (a 16x32x32 clip becomes 16x8x8x8, 6x fewer values). The
    /// shipped autoencoder `samples/vae`; the shipped text-to-video model's
    /// own is this with 8 channels ([`crate::preset::MODEL_LATENT_CHANNELS`]).
    ///
    /// Chosen by short runs on the 2-core machine (batch 8, lr 2e-3): 16
    /// channels led 8 by about 0.4 dB at equal steps; width 64 trains 2.3x
    /// faster than 128 (14.5 vs 6.3 clips/s) and was ahead at equal wall
    /// time (21.3 dB after 112 s vs about 18.7); a decoder stage at twice the
    /// latent resolution cost 30% speed for no early gain.
    pub fn default_preset() -> Self {
        Self {
            ft: 2,
            fs: 4,
            latent_channels: 16,
            width: 64,
            blocks: 3,
            kl_weight: 1e-4,
            pixel_channels: 0,
            pixel_width: 0,
        }
    }

    /// A tiny configuration for tests.
    pub fn tiny() -> Self {
        Self {
            ft: 2,
            fs: 4,
            latent_channels: 4,
            width: 16,
            blocks: 1,
            kl_weight: 1e-4,
            pixel_channels: 0,
            pixel_width: 0,
        }
    }

    /// The preset called `name`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "default" => Ok(Self::default_preset()),
            "tiny" => Ok(Self::tiny()),
            _ => invalid!("unknown autoencoder preset \"{name}\": expected default or tiny"),
        }
    }

    /// Checks the factors and widths.
    pub fn validate(&self) -> Result<()> {
        if ![1, 2, 4].contains(&self.ft) {
            invalid!("temporal factor ft must be 1, 2 or 4, got {}", self.ft);
        }
        if ![4, 8].contains(&self.fs) {
            invalid!("spatial factor fs must be 4 or 8, got {}", self.fs);
        }
        if self.latent_channels == 0 || self.width == 0 {
            invalid!("latent channels and width must be positive");
        }
        if self.pixel_channels != 0 && (self.pixel_channels < 3 || self.pixel_width == 0) {
            invalid!(
                "the pixel refinement needs at least 3 channels and a positive width (got {} and {}); 0 channels turns it off",
                self.pixel_channels,
                self.pixel_width
            );
        }
        Ok(())
    }

    /// Values in one input patch: `3 * ft * fs * fs`.
    pub fn patch_dim(&self) -> usize {
        3 * self.ft * self.fs * self.fs
    }

    /// Channels per pixel the patch decoder writes: 3, or the refinement's input.
    pub fn decoded_channels(&self) -> usize {
        if self.pixel_channels == 0 {
            3
        } else {
            self.pixel_channels
        }
    }

    /// Latent size `[T', H', W']` for an input `[T, H, W]`, or an error
    /// naming the axis the factors do not divide.
    pub fn latent_size(&self, size: [usize; 3]) -> Result<[usize; 3]> {
        let factors = [self.ft, self.fs, self.fs];
        for (axis, (&n, &f)) in ["frames", "height", "width"]
            .iter()
            .zip(size.iter().zip(&factors))
        {
            if n == 0 || n % f != 0 {
                invalid!(
                    "{axis} {n} is not divisible by the compression factor {f} (use a multiple of {f}, e.g. {})",
                    (n / f).max(1) * f
                );
            }
        }
        Ok([size[0] / self.ft, size[1] / self.fs, size[2] / self.fs])
    }
}
