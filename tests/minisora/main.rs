//! minisora's integration tests: one binary, a module per area.

mod cli;
mod clips;
mod parser;
mod shapes_world;
mod video;
