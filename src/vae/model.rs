//! The autoencoder: encoder, decoder, and the training loss.

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::blocks::{apply_last, linear_zero, ResBlock, SpatialMix};
use super::VaeConfig;
use crate::ops::silu;
use crate::patch::{patchify, unpatchify, PatchSize, Remainder};
use crate::Result;

/// The encoder's Gaussian over latents.
#[derive(Clone, Debug)]
pub struct Posterior {
    /// `(B, C, T', H', W')`.
    pub mean: Tensor,
    /// `(B, C, T', H', W')`, clamped to `[-30, 20]`.
    pub logvar: Tensor,
}

impl Posterior {
    /// A sample `mean + exp(logvar / 2) * eps` with `eps ~ N(0, I)` given.
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + (self.logvar.affine(0.5, 0.0)?.exp()? * eps)?)?)
    }

    /// KL divergence to `N(0, I)`, averaged over latent values.
    pub fn kl(&self) -> Result<Tensor> {
        // KL = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2)
        let kl = ((self.mean.sqr()? + self.logvar.exp()?)? - 1.0)? - &self.logvar;
        Ok((kl? * 0.5)?.mean_all()?)
    }
}

struct Encoder {
    embed1: Linear,
    embed2: Linear,
    blocks: Vec<ResBlock>,
    out: Linear,
}

struct Decoder {
    input: Linear,
    blocks: Vec<ResBlock>,
    head1: Linear,
    head2: Linear,
    pixel: Option<PixelRefine>,
}

/// Full-resolution refinement, channels last: `rgb = x[..3] + out(silu(conv3x3(x)))`,
/// with `out` starting at zero so a fresh refinement passes the coarse RGB through.
struct PixelRefine {
    conv: SpatialMix,
    out: Linear,
}

impl PixelRefine {
    /// `(B, T, H, W, P) -> (B, T, H, W, 3)`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hid = silu(&self.conv.forward(x)?)?;
        Ok((x.narrow(4, 0, 3)? + apply_last(&self.out, &hid)?)?)
    }
}

/// The spacetime VAE.
pub struct Vae {
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
}

impl Vae {
    pub fn new(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (p, d, c) = (config.patch_dim(), config.width, config.latent_channels);
        let blocks = |vb: VarBuilder| -> Result<Vec<ResBlock>> {
            (0..config.blocks)
                .map(|i| ResBlock::new(d, vb.pp(i)))
                .collect()
        };
        let venc = vb.pp("encoder");
        let encoder = Encoder {
            embed1: candle_nn::linear(p, d, venc.pp("embed1"))?,
            embed2: candle_nn::linear(d, d, venc.pp("embed2"))?,
            blocks: blocks(venc.pp("blocks"))?,
            out: candle_nn::linear(d, 2 * c, venc.pp("out"))?,
        };
        let vdec = vb.pp("decoder");
        let decoder = Decoder {
            input: candle_nn::linear(c, d, vdec.pp("input"))?,
            blocks: blocks(vdec.pp("blocks"))?,
            head1: candle_nn::linear(d, 2 * d, vdec.pp("head1"))?,
            head2: candle_nn::linear(
                2 * d,
                config.ft * config.fs * config.fs * config.decoded_channels(),
                vdec.pp("head2"),
            )?,
            pixel: if config.pixel_channels == 0 {
                None
            } else {
                let vp = vdec.pp("pixel");
                Some(PixelRefine {
                    conv: SpatialMix::new(
                        config.pixel_channels,
                        config.pixel_width,
                        false,
                        vp.pp("conv"),
                    )?,
                    out: linear_zero(config.pixel_width, 3, vp.pp("out"))?,
                })
            },
        };
        Ok(Self {
            config: config.clone(),
            encoder,
            decoder,
        })
    }

    fn patch(&self) -> PatchSize {
        PatchSize {
            t: self.config.ft,
            h: self.config.fs,
            w: self.config.fs,
        }
    }

    /// # Shapes
    /// `x`: `(B, 3, T, H, W)` in `[-1, 1]` -> posterior over `(B, C, T/ft, H/fs, W/fs)`
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let (b, _, t, h, w) = x.dims5()?;
        let [lt, lh, lw] = self.config.latent_size([t, h, w])?;
        let tokens = patchify(x, self.patch(), Remainder::Reject)?.tokens; // (B, N, 3*ft*fs*fs)
        let e = &self.encoder;
        let hid = silu(&apply_last(&e.embed1, &tokens)?)?;
        let mut hid = apply_last(&e.embed2, &hid)?.reshape((b, lt, lh, lw, self.config.width))?;
        for block in &e.blocks {
            hid = block.forward(&hid)?;
        }
        let stats = apply_last(&e.out, &silu(&hid)?)?.permute((0, 4, 1, 2, 3))?; // (B, 2C, T', H', W')
        let c = self.config.latent_channels;
        Ok(Posterior {
            mean: stats.narrow(1, 0, c)?.contiguous()?,
            logvar: stats.narrow(1, c, c)?.clamp(-30.0, 20.0)?.contiguous()?,
        })
    }

    /// # Shapes
    /// `z`: `(B, C, T', H', W')` -> frames `(B, 3, T' * ft, H' * fs, W' * fs)`, unclamped
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (b, _, lt, lh, lw) = z.dims5()?;
        let d = &self.decoder;
        let mut hid = apply_last(&d.input, &z.permute((0, 2, 3, 4, 1))?.contiguous()?)?; // (B, T', H', W', D)
        for block in &d.blocks {
            hid = block.forward(&hid)?;
        }
        let hid = silu(&apply_last(&d.head1, &silu(&hid)?)?)?;
        let (ft, fs) = (self.config.ft, self.config.fs);
        let Some(pixel) = &d.pixel else {
            let tokens =
                apply_last(&d.head2, &hid)?.reshape((b, lt * lh * lw, self.config.patch_dim()))?;
            return unpatchify(
                &tokens,
                [lt, lh, lw],
                self.patch(),
                3,
                [lt * ft, lh * fs, lw * fs],
            );
        };
        // patches to pixels, channels last: (B, T', H', W', ft, fs, fs, P) -> (B, T, H, W, P)
        let p = self.config.pixel_channels;
        let (t, h, w) = (lt * ft, lh * fs, lw * fs);
        let pixels = apply_last(&d.head2, &hid)?
            .reshape(vec![b, lt, lh, lw, ft, fs, fs, p])?
            .permute(vec![0, 1, 4, 2, 5, 3, 6, 7])?
            .contiguous()?
            .reshape((b, t, h, w, p))?;
        Ok(pixel
            .forward(&pixels)?
            .permute((0, 4, 1, 2, 3))?
            .contiguous()?)
    }

    /// Encode, sample with `eps`, decode: returns `(loss, mse, kl)` scalars,
    /// `loss = mse + kl_weight * kl`.
    pub fn loss(&self, x: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let posterior = self.encode(x)?;
        let recon = self.decode(&posterior.sample(eps)?)?;
        let mse = (recon - x)?.sqr()?.mean_all()?;
        let kl = posterior.kl()?;
        let loss = (&mse + (&kl * self.config.kl_weight)?)?;
        Ok((loss, mse, kl))
    }

    /// Mean reconstruction (decoding the posterior mean), clamped to `[-1, 1]`.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.decode(&self.encode(x)?.mean)?.clamp(-1.0, 1.0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use crate::ops::test_util::rel_diff;

    /// The compression network in bf16 and f16 on the CPU agrees with f32
    /// (what a GPU run in those dtypes needs; with a pixel refinement stage
    /// too, since it takes another path through the decoder).
    #[test]
    fn half_precision_encode_and_decode_agree_with_f32() {
        let dev = Device::Cpu;
        for cfg in [
            VaeConfig::tiny(),
            VaeConfig {
                pixel_channels: 8,
                pixel_width: 8,
                ..VaeConfig::tiny()
            },
        ] {
            let vars = VarMap::new();
            let vae = Vae::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev)).unwrap();
            crate::train::seeded_init(&vars, 1).unwrap();
            let weights = crate::checkpoint::named_tensors(&vars).unwrap();
            let shape = [1, 3, 2 * cfg.ft, 4 * cfg.fs, 4 * cfg.fs];
            let x = (crate::train::randn(&mut crate::rng::Rng::new(2), &shape, &dev).unwrap()
                * 0.5)
                .unwrap();
            let want_z = vae.encode(&x).unwrap().mean;
            let want_x = vae.decode(&want_z).unwrap();
            for (dtype, tol) in [(DType::BF16, 5e-2), (DType::F16, 1e-2)] {
                let vb = VarBuilder::from_tensors(weights.clone(), dtype, &dev);
                let half = Vae::new(&cfg, vb).unwrap();
                let z = half.encode(&x.to_dtype(dtype).unwrap()).unwrap().mean;
                let y = half.decode(&want_z.to_dtype(dtype).unwrap()).unwrap();
                assert_eq!((z.dtype(), y.dtype()), (dtype, dtype));
                let (dz, dy) = (rel_diff(&z, &want_z), rel_diff(&y, &want_x));
                assert!(
                    dz < tol && dy < tol,
                    "{dtype:?}: encode off by {dz}, decode by {dy}"
                );
            }
        }
    }
}
