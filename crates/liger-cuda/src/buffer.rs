//! Device memory: a typed buffer on the context's stream, and the element types kernels take.

use crate::context::GpuContext;
use crate::error::driver_error;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use liger_core::Result;
use std::ops::Range;

/// An element type stored on the GPU: f32, or bf16 with fp32 arithmetic in the kernels.
pub trait GpuElement: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    /// Suffix of the kernel variants for this type (`rms_norm_forward_f32`).
    const KERNEL_SUFFIX: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl GpuElement for f32 {
    const KERNEL_SUFFIX: &'static str = "f32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuElement for bf16 {
    const KERNEL_SUFFIX: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// A buffer of `T` in GPU memory, used on its context's stream.
pub struct GpuBuffer<T> {
    data: CudaSlice<T>,
}

impl<T: DeviceRepr + ValidAsZeroBits> GpuBuffer<T> {
    /// A buffer of `len` zeros.
    pub fn zeros(ctx: &GpuContext, len: usize) -> Result<Self> {
        let data = ctx.stream().alloc_zeros(len).map_err(|e| driver_error(e, &alloc_what::<T>(len)))?;
        Ok(GpuBuffer { data })
    }
}

impl<T: DeviceRepr> GpuBuffer<T> {
    /// A copy of `host` on the GPU.
    pub fn from_host(ctx: &GpuContext, host: &[T]) -> Result<Self> {
        let data = ctx.stream().clone_htod(host).map_err(|e| driver_error(e, &alloc_what::<T>(host.len())))?;
        Ok(GpuBuffer { data })
    }

    /// A buffer of `len` copies of `value` (tests fill outputs with NaN this way).
    pub fn filled(ctx: &GpuContext, len: usize, value: T) -> Result<Self>
    where
        T: Clone,
    {
        Self::from_host(ctx, &vec![value; len])
    }

    /// Overwrites the buffer with `host`, which must have the same length.
    pub fn copy_from_host(&mut self, host: &[T]) -> Result<()> {
        crate::launch::expect_len("host data", host.len(), self.len())?;
        let stream = self.data.stream().clone();
        stream.memcpy_htod(host, &mut self.data).map_err(|e| driver_error(e, "copying to the GPU"))
    }

    /// The contents, copied back after all work queued on the stream has finished; a kernel
    /// fault from earlier work surfaces here.
    pub fn to_host(&self) -> Result<Vec<T>> {
        let stream = self.data.stream();
        let host = stream.clone_dtoh(&self.data).map_err(|e| driver_error(e, "copying from the GPU"))?;
        stream.synchronize().map_err(|e| driver_error(e, "waiting for the GPU"))?;
        Ok(host)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }

    /// The underlying cudarc slice, for kernel arguments.
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.data
    }

    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.data
    }

    /// A view of elements `range`.
    pub fn view(&self, range: Range<usize>) -> CudaView<'_, T> {
        self.data.slice(range)
    }

    pub fn view_mut(&mut self, range: Range<usize>) -> CudaViewMut<'_, T> {
        self.data.slice_mut(range)
    }
}

fn alloc_what<T>(len: usize) -> String {
    let bytes = len * std::mem::size_of::<T>();
    format!("allocating {:.1} MB", bytes as f64 / 1e6)
}
