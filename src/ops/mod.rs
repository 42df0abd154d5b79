//! minisora's own tensor ops with hand-written backward passes, where
//! candle's generic ops spend their time in strided copies, and the fused
//! attention that long sequences need. Each has a reference built from
//! candle's generic ops that tests compare it with; with the `cuda` feature
//! LayerNorm + modulation, RoPE and attention also run as minisora's own
//! CUDA kernels (`kernels/`, loaded by [`cuda`]).

mod attention;
pub mod cuda;
mod fused;
mod gather;
mod linear;
#[cfg(test)]
pub(crate) mod test_util;
mod vmath;

pub use attention::{
    default_attention_kernel, flash_attention, flash_attention_reference, flash_attention_with,
    set_default_attention_kernel, AttentionKernel,
};
pub use fused::{
    gelu, gelu_reference, norm_modulate, norm_modulate_reference, rope, rope_reference, silu,
    silu_reference, softmax_last, softmax_last_reference,
};
pub use gather::{gather_neighbours, gather_neighbours_reference};
pub use linear::{fused_linear, linear, linear_fused, linear_reference, set_fused_linear};

/// Whether `MINISORA_REFERENCE_OPS` asks for the reference path of every op
/// (to compare whole runs). Read once: this runs for every op of every step.
pub(crate) fn reference_only() -> bool {
    static REFERENCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFERENCE.get_or_init(|| std::env::var_os("MINISORA_REFERENCE_OPS").is_some())
}
