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
mod inplace;
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
pub use inplace::{adam_update, average_into, inplace_ok, AdamUpdate};
pub use linear::{fused_linear, linear, linear_fused, linear_reference, set_fused_linear};

/// Runs `f` with candle's CPU thread pool installed, this thread's work
/// included, when `device` is the CPU and candle uses more than one thread
/// (else runs `f` as it is). Inside it the matrix multiplies (gemm on rayon)
/// and the element-wise ops (candle's other pool, which minisora's candle
/// patch sends to the calling rayon pool: `third_party/README.md`) share
/// one thread per core. Outside it the caller sleeps through each matmul
/// while two rayon workers run it, and a worker of candle's element-wise
/// pool spins between ops on a core the matmul wants.
/// `MINISORA_SPLIT_POOLS=1` runs `f` as it is, to compare. Both settings
/// are read once, at the first call.
pub fn on_cpu_pool<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    static POOLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let pooled = *POOLED.get_or_init(|| {
        std::env::var_os("MINISORA_SPLIT_POOLS").is_none()
            && candle_core::utils::get_num_threads() > 1
    });
    if device.is_cpu() && pooled {
        device.with_context(f)
    } else {
        f()
    }
}

/// Whether `MINISORA_REFERENCE_OPS` asks for the reference path of every op
/// (to compare whole runs). Read once: this runs for every op of every step.
pub(crate) fn reference_only() -> bool {
    static REFERENCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REFERENCE.get_or_init(|| std::env::var_os("MINISORA_REFERENCE_OPS").is_some())
}
