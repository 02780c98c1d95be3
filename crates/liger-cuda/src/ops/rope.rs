//! RoPE forward and backward (`kernels/rope.cu`); CPU twins: `liger_core::model::ops::rope`
//! and `liger_core::train::backward::rope_backward`.

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::ROPE;
use crate::launch::{as_int, elementwise, expect_len, rows_of};
use cudarc::driver::PushKernelArg;
use liger_core::{Error, Result};

/// `y` = `x` (`T x heads*head_dim`) rotated, token t at position `pos0 + t`.
pub fn rope_forward(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    y: &mut GpuBuffer<f32>,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    inv_freq: &GpuBuffer<f32>,
) -> Result<()> {
    rope_launch(ctx, "rope_forward_f32", x, y, heads, head_dim, pos0, inv_freq)
}

/// `dx` = `dy` rotated back (the transpose of the forward rotation).
pub fn rope_backward(
    ctx: &GpuContext,
    dy: &GpuBuffer<f32>,
    dx: &mut GpuBuffer<f32>,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    inv_freq: &GpuBuffer<f32>,
) -> Result<()> {
    rope_launch(ctx, "rope_backward_f32", dy, dx, heads, head_dim, pos0, inv_freq)
}

#[allow(clippy::too_many_arguments)]
fn rope_launch(
    ctx: &GpuContext,
    name: &'static str,
    x: &GpuBuffer<f32>,
    y: &mut GpuBuffer<f32>,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    inv_freq: &GpuBuffer<f32>,
) -> Result<()> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::invalid_argument(format!("RoPE needs an even head_dim, got {head_dim}")));
    }
    expect_len("rope inv_freq", inv_freq.len(), head_dim / 2)?;
    let tokens = rows_of("rope input", x.len(), heads * head_dim)?;
    expect_len("rope output", y.len(), x.len())?;
    if tokens == 0 {
        return Ok(());
    }
    let f = ctx.function(&ROPE, name)?;
    as_int("last position", pos0 + tokens)?;
    let args =
        [as_int("tokens", tokens)?, as_int("heads", heads)?, as_int("head_dim", head_dim)?, as_int("pos0", pos0)?];
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(inv_freq.slice());
    for a in &args {
        launch.arg(a);
    }
    // SAFETY: x and y hold tokens x heads x head_dim values; one thread per rotated pair.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len() / 2)) }, name)
}
