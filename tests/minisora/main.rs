//! minisora's integration tests: one binary, a module per area.

mod candle_patches;
mod cli;
mod clips;
mod detector;
mod diffusion;
mod dit;
mod generate;
mod inspect;
mod parser;
mod patch;
mod peer;
mod shapes_world;
mod vae;
mod video;
