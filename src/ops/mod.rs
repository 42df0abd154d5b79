//! minisora's own tensor ops with hand-written backward passes, where
//! candle's generic ops spend their time in strided copies. Each has a
//! reference built from candle's generic ops that tests compare it with.

mod fused;
mod gather;

pub use fused::{
    gelu, gelu_reference, norm_modulate, norm_modulate_reference, rope, rope_reference,
    softmax_last, softmax_last_reference,
};
pub use gather::{gather_neighbours, gather_neighbours_reference};
