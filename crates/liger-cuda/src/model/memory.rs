//! The driver's default memory pool, where the model's buffers live (cudarc allocates them
//! stream-ordered): keeping freed memory pooled, and reading its high-water mark.

use crate::context::GpuContext;
use cudarc::driver::sys;
use liger_core::{Error, Result};
use std::ffi::c_void;

fn default_pool(ctx: &GpuContext) -> Result<sys::CUmemoryPool> {
    let fail = |what: &str| Error::internal(format!("{what} failed while reading the GPU memory pool"));
    let (mut dev, mut pool) = (0, std::ptr::null_mut());
    let index = i32::try_from(ctx.info().index).map_err(|_| fail("the device index"))?;
    // SAFETY: plain driver calls with out-pointers to locals; the driver is initialised by
    // the context.
    unsafe {
        sys::cuDeviceGet(&mut dev, index).result().map_err(|_| fail("cuDeviceGet"))?;
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev).result().map_err(|_| fail("cuDeviceGetDefaultMemPool"))?;
    }
    Ok(pool)
}

fn set_attribute(ctx: &GpuContext, attr: sys::CUmemPool_attribute, mut value: u64) -> Result<()> {
    let pool = default_pool(ctx)?;
    // SAFETY: the attribute takes a u64, as given.
    unsafe { sys::cuMemPoolSetAttribute(pool, attr, &mut value as *mut u64 as *mut c_void) }
        .result()
        .map_err(|_| Error::internal("cuMemPoolSetAttribute failed"))
}

/// Keeps freed memory in the pool instead of returning it to the driver at every
/// synchronisation, so that the many per-step scratch buffers are not mapped afresh.
pub fn keep_freed_memory_pooled(ctx: &GpuContext) -> Result<()> {
    set_attribute(ctx, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)
}

/// Starts a new peak measurement: the pool's high-water mark is set to what is in use now.
pub fn reset_peak_memory(ctx: &GpuContext) -> Result<()> {
    set_attribute(ctx, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)
}

fn get_attribute(ctx: &GpuContext, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let pool = default_pool(ctx)?;
    let mut value = 0u64;
    // SAFETY: the attribute is a u64 written to a local.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut c_void) }
        .result()
        .map_err(|_| Error::internal("cuMemPoolGetAttribute failed"))?;
    Ok(value)
}

/// The most bytes the pool had in use since the last [`reset_peak_memory`].
pub fn peak_memory(ctx: &GpuContext) -> Result<u64> {
    get_attribute(ctx, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// Bytes a new allocation can still get: what the driver has free plus what the pool holds
/// from earlier frees without using it (with freed memory kept pooled, the driver's free
/// figure alone misses that part).
pub fn available_memory(ctx: &GpuContext) -> Result<u64> {
    let (free, _) = ctx
        .stream()
        .context()
        .mem_get_info()
        .map_err(|e| crate::error::driver_error(e, "reading the free GPU memory"))?;
    let reserved = get_attribute(ctx, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
    let used = get_attribute(ctx, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
    Ok(free as u64 + reserved.saturating_sub(used))
}
