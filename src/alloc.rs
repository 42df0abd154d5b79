//! The C allocator's settings for tensor work.
//!
//! A training step allocates and frees tensors of a few MiB by the hundred.
//! glibc's malloc serves blocks above its mmap threshold (128 KiB at start,
//! raised only as such blocks are freed) with fresh `mmap`s and returns
//! freed memory at the top of its heaps to the kernel, so the same pages
//! were mapped, zeroed by the kernel on first touch and unmapped again on
//! every step: a perf profile of `minisora train vae` had a quarter of its
//! samples in the kernel's page-fault and page-clearing paths. Keeping the
//! memory inside the process trained the autoencoder at 44.1 clips/s
//! instead of 27.6 (steps 21-80, the same logged losses at every step).

/// Largest mmap threshold glibc accepts on 64-bit targets (`HEAP_MAX_SIZE / 2`).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory a heap keeps before trimming, and the extra asked of the
/// kernel at each growth.
const TRIM_THRESHOLD: i32 = 1 << 30;
const TOP_PAD: i32 = 64 << 20;

/// Serves allocations up to 32 MiB from malloc's heaps and keeps up to
/// 1 GiB of freed memory in them, instead of handing pages back to the
/// kernel and faulting them in again. Does nothing where the allocator is
/// not glibc's, or where the user has tuned it (any `MALLOC_*` variable or
/// `GLIBC_TUNABLES` in the environment). Call first thing in `main`, before
/// other threads exist.
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned_by_user = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES"
        });
        if tuned_by_user {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; called before
        // any other thread exists
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}
