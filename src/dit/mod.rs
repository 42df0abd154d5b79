//! The diffusion transformer (DiT, Peebles and Xie 2023) over spacetime
//! patches. So far: its configuration, the named presets and the analytic
//! counts (parameters, FLOPs, activation memory) that `minisora inspect` and
//! `minisora bench` report; the model itself comes with issue 5.

pub mod config;

pub use config::{DitConfig, StepCost};
