//! minisora: a small, runnable, from-scratch Sora-style text-to-video system.
//!
//! The pipeline follows OpenAI's Sora report, scaled down (see `README.md`):
//! a video compression network and spacetime patches turn clips into tokens, a
//! diffusion transformer denoises them conditioned on text, and a decoder and
//! the [`video`] writers turn the result back into a clip.
//!
//! Stages built so far:
//! - [`data::shapes_world`]: the procedural training world: caption grammar
//!   ([`data::shapes_world::Scene`]), seeded caption sampler and renderer
//!   ([`data::shapes_world::render`]).
//! - [`data::clips`]: the on-disk clip folder format that `minisora data`
//!   writes and training reads.
//! - [`video`]: mp4 (FFmpeg), GIF, PNG contact sheets and PNG frame folders,
//!   written atomically; a reader for anything FFmpeg decodes; conversion
//!   between `u8` frames and `(B, C, T, H, W)` tensors.
//!
//! Frames at the I/O edge are [`video::Frames`]: `u8` arrays shaped
//! `(T, H, W, 3)`. All randomness comes from an explicit seed through
//! [`rng::Rng`], so the same seed gives the same bytes on every machine.

pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod diffusion;
pub mod dit;
pub mod error;
pub mod eval;
pub mod inspect;
pub mod nn;
pub mod ops;
pub mod patch;
pub mod pipeline;
pub mod preset;
pub mod rng;
pub mod text;
pub mod train;
pub mod vae;
pub mod video;

pub use error::{Error, Result};
