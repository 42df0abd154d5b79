//! Text conditioning: a word-level tokenizer whose vocabulary comes from the
//! training captions (and is saved with the model), and a small transformer
//! encoder trained with the DiT.

mod encoder;
mod tokenizer;

pub use encoder::{TextConfig, TextEncoder};
pub use tokenizer::{Tokenizer, NULL_ID, PAD_ID};
