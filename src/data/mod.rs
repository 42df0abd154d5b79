//! Training data: the procedural Shapes World and folders of captioned clips.

pub mod clips;
pub mod shapes_world;
