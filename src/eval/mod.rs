//! Prompt adherence on Shapes World: a detector written for the data
//! contract (`shared/SHAPES_WORLD.md`) that reads a clip's frames and says,
//! per object of the prompt, whether its colour is there and which shape,
//! size and motion it shows.

mod detector;

pub use detector::{detect, ObjectScore};
