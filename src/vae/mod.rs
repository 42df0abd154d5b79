//! The video compression network: a spacetime VAE that maps frames
//! `(B, 3, T, H, W)` in `[-1, 1]` to a latent `(B, C, T/ft, H/fs, W/fs)` and
//! back (Sora's "video compression network"; KL-regularised as in Kingma and
//! Welling 2014 and the latent diffusion autoencoder of Rombach et al. 2022).
//!
//! The encoder cuts the clip into `ft x fs x fs` spacetime patches (the
//! compression is the patch size), embeds each with an MLP, and mixes
//! neighbouring patches with factorised (2+1)D residual blocks: a 3x3 spatial
//! mix then a 3-tap temporal mix, each a matrix multiply over gathered
//! neighbours, so almost all the work is GEMM. The decoder mirrors it and
//! ends in a per-patch MLP that paints each patch's pixels.

pub mod blocks;
mod config;
pub mod eval;
mod model;

pub use config::VaeConfig;
pub use model::{Posterior, Vae};
