//! SwiGLU forward and backward (`kernels/swiglu.cu`); CPU twins:
//! `liger_core::nn::swiglu::{swiglu_inplace, swiglu_backward}`.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::SWIGLU;
use crate::launch::{elementwise, expect_len};
use cudarc::driver::PushKernelArg;
use liger_core::Result;

/// `out = silu(gate) * up`, elementwise.
pub fn swiglu_forward<T: GpuElement>(
    ctx: &GpuContext,
    gate: &GpuBuffer<T>,
    up: &GpuBuffer<T>,
    out: &mut GpuBuffer<T>,
) -> Result<()> {
    let n = gate.len();
    expect_len("swiglu up", up.len(), n)?;
    expect_len("swiglu output", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("swiglu_forward_f32", "swiglu_forward_bf16");
    let f = ctx.function(&SWIGLU, name)?;
    let n_arg = n as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(gate.slice()).arg(up.slice()).arg(out.slice_mut()).arg(&n_arg);
    // SAFETY: all three buffers hold n values.
    ctx.check_launch(unsafe { launch.launch(elementwise(n)) }, name)
}

/// `out = silu(gate) * up` from f32 `gate` and `up`, stored as `T` (the training forward,
/// whose product feeds the down projection).
pub fn swiglu_forward_to<T: GpuElement>(
    ctx: &GpuContext,
    gate: &GpuBuffer<f32>,
    up: &GpuBuffer<f32>,
    out: &mut GpuBuffer<T>,
) -> Result<()> {
    let n = gate.len();
    expect_len("swiglu up", up.len(), n)?;
    expect_len("swiglu output", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("swiglu_forward_f32", "swiglu_forward_to_bf16");
    let f = ctx.function(&SWIGLU, name)?;
    let n_arg = n as u64;
    // The bf16 kernel takes four values per thread.
    let threads = if name == "swiglu_forward_to_bf16" { n.div_ceil(4) } else { n };
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(gate.slice()).arg(up.slice()).arg(out.slice_mut()).arg(&n_arg);
    // SAFETY: all three buffers hold n values.
    ctx.check_launch(unsafe { launch.launch(elementwise(threads)) }, name)
}

/// Writes `dgate` and `dup` (stored as `T`, the type the next GEMM reads) given `da`, the
/// gradient of `silu(gate) * up`.
pub fn swiglu_backward<T: GpuElement>(
    ctx: &GpuContext,
    gate: &GpuBuffer<f32>,
    up: &GpuBuffer<f32>,
    da: &GpuBuffer<f32>,
    dgate: &mut GpuBuffer<T>,
    dup: &mut GpuBuffer<T>,
) -> Result<()> {
    let n = gate.len();
    for (what, len) in
        [("swiglu up", up.len()), ("swiglu da", da.len()), ("swiglu dgate", dgate.len()), ("swiglu dup", dup.len())]
    {
        expect_len(what, len, n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("swiglu_backward_f32", "swiglu_backward_to_bf16");
    let f = ctx.function(&SWIGLU, name)?;
    let n_arg = n as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(gate.slice()).arg(up.slice()).arg(da.slice()).arg(dgate.slice_mut()).arg(dup.slice_mut()).arg(&n_arg);
    // SAFETY: all five buffers hold n values; the kernel takes four per thread.
    ctx.check_launch(unsafe { launch.launch(elementwise(n.div_ceil(4))) }, name)
}
