//! The diffusion transformer (DiT, Peebles and Xie 2023) over spacetime
//! patches: its configuration and analytic costs (`config`) and the model
//! (`model`).

pub mod config;
pub mod model;

pub use config::{DitConfig, StepCost};
pub use model::Dit;
