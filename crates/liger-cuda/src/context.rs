//! The GPU context: one device, one stream, the kernels compiled for it and a cuBLAS handle.

use crate::error::{check_driver_version, cublas_error, driver_error, no_driver_error};
use crate::kernels::KernelFile;
use crate::nvrtc::{kernel_cache_dir, load_or_compile};
use crate::profile::{Profile, ProfileEntry};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError};
use cudarc::nvrtc::Ptx;
use liger_core::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Largest dynamic shared memory of a block on sm_90, the architecture the kernels are built for.
pub const MAX_SHARED_BYTES: usize = 227 * 1024;

/// Environment variable: when set to 1, every launch is followed by a stream synchronisation,
/// so that a faulting kernel is reported by name instead of at a later call.
pub const SYNC_ENV: &str = "LIGER_CUDA_SYNC";

/// Environment variable: when set to 1, the context starts with profiling on
/// ([`GpuContext::set_profiling`]).
pub const PROFILE_ENV: &str = "LIGER_CUDA_PROFILE";

/// What the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    /// (major, minor): (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub free_memory: usize,
    /// As the driver reports it: 13000 for CUDA 13.0.
    pub driver_version: i32,
}

pub struct GpuContext {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    kernel_dir: PathBuf,
    sync_after_launch: bool,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
    /// f32 working memory of the operations (see `with_scratch`), grown on demand, never shrunk.
    scratch: Mutex<Option<CudaSlice<f32>>>,
    /// Time per operation while profiling is on (see `profile.rs`).
    profile: Mutex<Option<Profile>>,
    /// Whether `profile` is on: read at every launch without taking the lock.
    profiling: AtomicBool,
}

/// Loads the driver, checks its version and initialises it.
fn init_driver() -> Result<i32> {
    // SAFETY: loading the driver library runs only its initialisers.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(no_driver_error());
    }
    let mut version = 0;
    // SAFETY: the driver writes one int.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    status.result().map_err(|e| driver_error(e, "reading the driver version"))?;
    check_driver_version(version)?;
    cudarc::driver::result::init().map_err(|e| driver_error(e, "initialising the CUDA driver"))?;
    Ok(version)
}

impl GpuContext {
    /// Number of GPUs the driver sees.
    pub fn device_count() -> Result<usize> {
        init_driver()?;
        let count = CudaContext::device_count().map_err(|e| driver_error(e, "counting GPUs"))?;
        Ok(count.max(0) as usize)
    }

    /// Opens GPU `index` (0 for the first) with one stream.
    pub fn new(index: usize) -> Result<Self> {
        let driver_version = init_driver()?;
        let count = CudaContext::device_count().map_err(|e| driver_error(e, "counting GPUs"))?.max(0) as usize;
        if index >= count {
            return Err(Error::invalid_argument(format!(
                "GPU {index} does not exist: this machine has {count} (pick 0..{count}), or use the CPU backend"
            )));
        }
        let opening = format!("opening GPU {index}");
        let ctx = CudaContext::new(index).map_err(|e| driver_error(e, &opening))?;
        // One stream for all work, so ordering is implicit and per-buffer events are not needed.
        // SAFETY: nothing else uses this context's buffers from another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_error(e, &opening))?;
        let (free_memory, total_memory) = ctx.mem_get_info().map_err(|e| driver_error(e, &opening))?;
        let info = DeviceInfo {
            index,
            name: ctx.name().map_err(|e| driver_error(e, &opening))?,
            compute_capability: ctx.compute_capability().map_err(|e| driver_error(e, &opening))?,
            total_memory,
            free_memory,
            driver_version,
        };
        let profile_at_start = std::env::var(PROFILE_ENV).is_ok_and(|v| v == "1");
        Ok(GpuContext {
            ctx,
            stream,
            info,
            kernel_dir: kernel_cache_dir(),
            sync_after_launch: std::env::var(SYNC_ENV).is_ok_and(|v| v == "1"),
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
            scratch: Mutex::new(None),
            profile: Mutex::new(profile_at_start.then(Profile::new)),
            profiling: AtomicBool::new(profile_at_start),
        })
    }

    /// Another handle on the same GPU and the same stream (so work of both stays ordered
    /// without events), with kernels, cuBLAS handle and scratch memory of its own: for a
    /// second model that works beside the first (a teacher), each with its own context.
    pub fn on_same_stream(&self) -> GpuContext {
        let profiling = self.profiling.load(std::sync::atomic::Ordering::Relaxed);
        GpuContext {
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            info: self.info.clone(),
            kernel_dir: self.kernel_dir.clone(),
            sync_after_launch: self.sync_after_launch,
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
            scratch: Mutex::new(None),
            profile: Mutex::new(profiling.then(Profile::new)),
            profiling: AtomicBool::new(profiling),
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Synchronise after every launch (slower; errors point at the kernel that caused them).
    pub fn set_sync_after_launch(&mut self, on: bool) {
        self.sync_after_launch = on;
    }

    /// Waits for all queued work; reports any error it raised.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_error(e, "waiting for the GPU"))?;
        self.ctx.check_err().map_err(|e| driver_error(e, "checking the CUDA context"))
    }

    /// The kernel `entry` of `file`, compiling and loading the file at first use.
    pub(crate) fn function(&self, file: &KernelFile, entry: &'static str) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().map_err(|_| Error::internal("the kernel table lock is poisoned"))?;
        if let Some(f) = functions.get(entry) {
            return Ok(f.clone());
        }
        let ptx = load_or_compile(&self.kernel_dir, file, self.info.compute_capability)?;
        let loading = format!("loading kernels {}.cu", file.name);
        let module = self.retry_out_of_memory(|| {
            self.ctx.load_module(Ptx::from_src(ptx.clone())).map_err(|e| driver_error(e, &loading))
        })?;
        for &name in file.entry_points {
            let f = module.load_function(name).map_err(|e| driver_error(e, &format!("{loading}: {name}")))?;
            functions.insert(name, f);
        }
        functions
            .get(entry)
            .cloned()
            .ok_or_else(|| Error::internal(format!("kernel {entry} is not an entry point of {}.cu", file.name)))
    }

    /// The kernel `entry` of `file`, allowed `shared` bytes of dynamic shared memory per block
    /// (past the default 48 KB a kernel must opt in; at most [`MAX_SHARED_BYTES`]).
    pub(crate) fn function_with_shared(
        &self,
        file: &KernelFile,
        entry: &'static str,
        shared: usize,
    ) -> Result<CudaFunction> {
        let f = self.function(file, entry)?;
        if shared > 48 * 1024 {
            let attribute = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attribute, shared as i32)
                .map_err(|e| driver_error(e, &format!("allowing {entry} {shared} bytes of shared memory")))?;
        }
        Ok(f)
    }

    /// Checks a launch's status, and with sync-after-launch on, the kernel's completion.
    pub(crate) fn check_launch<T>(&self, launched: std::result::Result<T, DriverError>, kernel: &str) -> Result<()> {
        let what = format!("launching {kernel}");
        launched.map_err(|e| driver_error(e, &what))?;
        self.ctx.check_err().map_err(|e| driver_error(e, &what))?;
        if self.sync_after_launch {
            self.stream.synchronize().map_err(|e| driver_error(e, &format!("running {kernel}")))?;
        }
        self.profile_mark(kernel)
    }

    /// Whether the stream's work may be captured into a CUDA graph: not while every launch
    /// waits for the GPU (LIGER_CUDA_SYNC) or the profiler times each operation.
    pub(crate) fn capture_allowed(&self) -> bool {
        !self.sync_after_launch && !self.profiling.load(Ordering::Relaxed)
    }

    /// Turns the time profile on (from an empty one) or off. While on, every operation waits
    /// for the GPU, so steps get slower; see `profile.rs`.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        let mut profile = self.profile.lock().map_err(|_| Error::internal("the profile lock is poisoned"))?;
        *profile = on.then(Profile::new);
        self.profiling.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// The time profile so far, most time first (empty when profiling is off).
    pub fn profile(&self) -> Result<Vec<ProfileEntry>> {
        let profile = self.profile.lock().map_err(|_| Error::internal("the profile lock is poisoned"))?;
        Ok(profile.as_ref().map(Profile::entries).unwrap_or_default())
    }

    /// With profiling on: waits for the GPU and charges the time since the last mark to `name`.
    pub(crate) fn profile_mark(&self, name: &str) -> Result<()> {
        self.profile_mark_with(|| name.to_string())
    }

    /// [`Self::profile_mark`] with a name made only when profiling is on.
    pub(crate) fn profile_mark_with(&self, name: impl FnOnce() -> String) -> Result<()> {
        if !self.profiling.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut profile = self.profile.lock().map_err(|_| Error::internal("the profile lock is poisoned"))?;
        if let Some(p) = profile.as_mut() {
            let name = name();
            self.stream.synchronize().map_err(|e| driver_error(e, &format!("running {name}")))?;
            p.mark(&name);
        }
        Ok(())
    }

    /// With profiling on: restarts the profile's clock (host work before a measured region is
    /// charged to nobody).
    pub fn profile_restart(&self) -> Result<()> {
        let mut profile = self.profile.lock().map_err(|_| Error::internal("the profile lock is poisoned"))?;
        if let Some(p) = profile.as_mut() {
            self.stream.synchronize().map_err(|e| driver_error(e, "waiting for the GPU"))?;
            p.restart();
        }
        Ok(())
    }

    /// Runs `f` with the device address of at least `len` f32 of working memory, 256-byte
    /// aligned, its contents left from earlier uses. The memory is allocated at the first use and
    /// when a call needs more than any before, then kept with the context, so that an operation
    /// run again allocates nothing. Every user queues its work on the one stream, so a call's
    /// kernels are done with the memory before the next call's start. `f` must not call it again.
    pub(crate) fn with_scratch<R>(&self, len: usize, f: impl FnOnce(u64) -> Result<R>) -> Result<R> {
        let mut scratch = self.scratch.lock().map_err(|_| Error::internal("the scratch memory lock is poisoned"))?;
        if scratch.as_ref().is_none_or(|s| s.len() < len) {
            *scratch = None; // free the old block first (stream-ordered)
                             // SAFETY: the memory is only written and read by kernels queued on this stream,
                             // which write each value before they read it.
            let block = unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(|e| {
                driver_error(e, &format!("allocating {} MB of GPU working memory", len * 4 / (1 << 20)))
            })?;
            *scratch = Some(block);
        }
        let block = scratch.as_ref().ok_or_else(|| Error::internal("the scratch memory is missing"))?;
        let (address, _sync) = block.device_ptr(&self.stream);
        f(address)
    }

    /// The cuBLAS handle on this context's stream, created at first use.
    pub(crate) fn blas(&self) -> Result<Arc<CudaBlas>> {
        let mut blas = self.blas.lock().map_err(|_| Error::internal("the cuBLAS handle lock is poisoned"))?;
        if let Some(handle) = blas.as_ref() {
            return Ok(handle.clone());
        }
        // SAFETY: loading cuBLAS runs only its initialisers.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::invalid_argument(
                "cuBLAS (libcublas.so.13) could not be loaded: install the CUDA 13 libraries, or use the CPU backend",
            ));
        }
        let handle = Arc::new(self.retry_out_of_memory(|| {
            CudaBlas::new(self.stream.clone()).map_err(|e| cublas_error(e, "creating the cuBLAS handle"))
        })?);
        *blas = Some(handle.clone());
        Ok(handle)
    }

    /// Runs `work`; if it fails for want of memory, gives the memory that freed buffers left in
    /// the device's pool back to the driver and runs it once more. Buffers are freed into the
    /// pool (stream-ordered allocation), which only the pool's own allocations reuse; module
    /// loads and library handles allocate outside it, so after a run out of memory they could
    /// fail even once the buffers are gone.
    fn retry_out_of_memory<T>(&self, work: impl Fn() -> Result<T>) -> Result<T> {
        match work() {
            Err(err) if err.code == liger_core::ErrorCode::OutOfMemory => {
                self.release_pool_memory()?;
                work()
            }
            other => other,
        }
    }

    /// Hands the device pool's unused memory back to the driver, after every stream's pending
    /// frees have happened (buffers of other models or contexts are freed on their own streams).
    pub fn release_pool_memory(&self) -> Result<()> {
        self.ctx.synchronize().map_err(|e| driver_error(e, "waiting for the GPU"))?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: the driver writes the device's default pool handle, which it owns.
        unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .map_err(|e| driver_error(e, "finding the GPU's memory pool"))?;
        // SAFETY: trimming keeps every allocation in use; it releases only unused reserved memory.
        unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }
            .result()
            .map_err(|e| driver_error(e, "releasing the GPU's memory pool"))
    }
}
