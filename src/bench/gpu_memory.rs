//! A GPU step's peak memory: the high-water mark of the device's default
//! memory pool, which candle's allocations come from (cudarc allocates
//! stream-ordered, `cuMemAllocAsync`). `None` wherever that is unknown: a
//! CPU device, a build without `cuda`, or a driver call that fails.

use candle_core::Device;

/// Resets the pool's high-water mark to what is in use now, and returns
/// that (the weights and inputs, which the peak then excludes).
#[cfg(feature = "cuda")]
pub fn reset_peak(device: &Device) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
    let Device::Cuda(dev) = device else {
        return None;
    };
    let pool = pool(dev)?;
    let used = attribute(pool, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
    let mut zero: u64 = 0;
    // SAFETY: the pool is the device's default pool, and the attribute
    // takes a u64 (setting the high-water mark to 0 resets it to current).
    let reset = unsafe {
        candle_core::cuda_backend::cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            A::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    };
    reset.result().ok()?;
    Some(used)
}

/// The pool's high-water mark of bytes in use since [`reset_peak`].
#[cfg(feature = "cuda")]
pub fn peak(device: &Device) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
    let Device::Cuda(dev) = device else {
        return None;
    };
    attribute(pool(dev)?, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

#[cfg(feature = "cuda")]
fn pool(
    dev: &candle_core::CudaDevice,
) -> Option<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().ok()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: out-pointer to a pool handle, for the context's device.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .ok()?;
    Some(pool)
}

#[cfg(feature = "cuda")]
fn attribute(
    pool: candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool,
    attr: candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute,
) -> Option<u64> {
    let mut value: u64 = 0;
    // SAFETY: the memory attributes are u64 values.
    unsafe {
        candle_core::cuda_backend::cudarc::driver::sys::cuMemPoolGetAttribute(
            pool,
            attr,
            (&mut value as *mut u64).cast(),
        )
    }
    .result()
    .ok()?;
    Some(value)
}

/// Lets the device's default memory pool keep what it has reserved instead
/// of handing it back to the driver at every synchronisation (the pool's
/// release threshold is 0 by default, so each step would map its memory
/// afresh; PyTorch's caching allocator never hands memory back either).
/// Returns whether the setting took. Unmeasured so far: see the README's
/// GPU section.
#[cfg(feature = "cuda")]
pub fn keep_reserved_memory(device: &Device) -> bool {
    use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
    let Device::Cuda(dev) = device else {
        return false;
    };
    let Some(pool) = pool(dev) else {
        return false;
    };
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the pool is the device's default pool, and the attribute
    // takes a u64.
    let set = unsafe {
        candle_core::cuda_backend::cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            A::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
    set.result().is_ok()
}

#[cfg(not(feature = "cuda"))]
pub fn keep_reserved_memory(_device: &Device) -> bool {
    false
}

#[cfg(not(feature = "cuda"))]
pub fn reset_peak(_device: &Device) -> Option<u64> {
    None
}

#[cfg(not(feature = "cuda"))]
pub fn peak(_device: &Device) -> Option<u64> {
    None
}
