//! RMSNorm forward and backward (`kernels/rms_norm.cu`); CPU twins:
//! `liger_core::nn::rms_norm::{rms_norm, rms_norm_backward}`.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::RMS_NORM;
use crate::launch::{as_int, block_per_row, elementwise, expect_len, rows_of};
use cudarc::driver::PushKernelArg;
use liger_core::Result;

/// `y = x / rms(x) * weight` per row of `weight.len()` values; `rstd` receives each row's 1/rms.
pub fn rms_norm_forward<T: GpuElement>(
    ctx: &GpuContext,
    x: &GpuBuffer<T>,
    weight: &GpuBuffer<f32>,
    eps: f32,
    y: &mut GpuBuffer<T>,
    rstd: &mut GpuBuffer<f32>,
) -> Result<()> {
    let cols = weight.len();
    let rows = rows_of("rms_norm input", x.len(), cols)?;
    expect_len("rms_norm output", y.len(), x.len())?;
    expect_len("rms_norm rstd", rstd.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("rms_norm_forward_f32", "rms_norm_forward_bf16");
    let f = ctx.function(&RMS_NORM, name)?;
    let cols_arg = as_int("cols", cols)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(weight.slice()).arg(y.slice_mut()).arg(rstd.slice_mut()).arg(&cols_arg).arg(&eps);
    // SAFETY: x and y hold rows x cols values, rstd holds rows; one block per row.
    ctx.check_launch(unsafe { launch.launch(block_per_row(rows, cols)?) }, name)
}

/// As [`rms_norm_forward`] on an f32 `x`, writing `y` (f32) and its copy `y_t` in `T` in one pass.
pub fn rms_norm_forward_pair<T: GpuElement>(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    weight: &GpuBuffer<f32>,
    eps: f32,
    y: &mut GpuBuffer<f32>,
    y_t: &mut GpuBuffer<T>,
    rstd: &mut GpuBuffer<f32>,
) -> Result<()> {
    let cols = weight.len();
    let rows = rows_of("rms_norm input", x.len(), cols)?;
    expect_len("rms_norm output", y.len(), x.len())?;
    expect_len("rms_norm output copy", y_t.len(), x.len())?;
    expect_len("rms_norm rstd", rstd.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("rms_norm_forward_pair_f32", "rms_norm_forward_pair_bf16");
    let f = ctx.function(&RMS_NORM, name)?;
    let cols_arg = as_int("cols", cols)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(x.slice())
        .arg(weight.slice())
        .arg(y.slice_mut())
        .arg(y_t.slice_mut())
        .arg(rstd.slice_mut())
        .arg(&cols_arg)
        .arg(&eps);
    // SAFETY: x, y and y_t hold rows x cols values, rstd holds rows; one block per row.
    ctx.check_launch(unsafe { launch.launch(block_per_row(rows, cols)?) }, name)
}

/// Writes `dx`, the gradient of the input given `dy`, and each row's 1/rms into `rstd`
/// (for [`rms_norm_backward_weight`]).
pub fn rms_norm_backward(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    weight: &GpuBuffer<f32>,
    eps: f32,
    dy: &GpuBuffer<f32>,
    dx: &mut GpuBuffer<f32>,
    rstd: &mut GpuBuffer<f32>,
) -> Result<()> {
    backward(ctx, "rms_norm_backward_f32", x, weight, eps, dy, dx, rstd)
}

/// As [`rms_norm_backward`], but adds the input gradient to `dx` (a residual path's gradient
/// already there) instead of overwriting it.
pub fn rms_norm_backward_add(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    weight: &GpuBuffer<f32>,
    eps: f32,
    dy: &GpuBuffer<f32>,
    dx: &mut GpuBuffer<f32>,
    rstd: &mut GpuBuffer<f32>,
) -> Result<()> {
    backward(ctx, "rms_norm_backward_add_f32", x, weight, eps, dy, dx, rstd)
}

/// Checks the sizes and launches backward kernel `name` (written or accumulated).
#[allow(clippy::too_many_arguments)]
fn backward(
    ctx: &GpuContext,
    name: &'static str,
    x: &GpuBuffer<f32>,
    weight: &GpuBuffer<f32>,
    eps: f32,
    dy: &GpuBuffer<f32>,
    dx: &mut GpuBuffer<f32>,
    rstd: &mut GpuBuffer<f32>,
) -> Result<()> {
    let cols = weight.len();
    let rows = rows_of("rms_norm input", x.len(), cols)?;
    expect_len("rms_norm dy", dy.len(), x.len())?;
    expect_len("rms_norm dx", dx.len(), x.len())?;
    expect_len("rms_norm rstd", rstd.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let f = ctx.function(&RMS_NORM, name)?;
    let cols_arg = as_int("cols", cols)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(x.slice())
        .arg(weight.slice())
        .arg(dy.slice())
        .arg(dx.slice_mut())
        .arg(rstd.slice_mut())
        .arg(&cols_arg)
        .arg(&eps);
    // SAFETY: x, dy and dx hold rows x cols values, rstd holds rows; one block per row.
    ctx.check_launch(unsafe { launch.launch(block_per_row(rows, cols)?) }, name)
}

/// Writes `dweight[i] = sum over rows of dy * x * rstd` (the norms are frozen in LoRA training;
/// this is for full fine-tuning). `rstd` comes from [`rms_norm_backward`] or the forward.
pub fn rms_norm_backward_weight(
    ctx: &GpuContext,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    rstd: &GpuBuffer<f32>,
    dweight: &mut GpuBuffer<f32>,
) -> Result<()> {
    let cols = dweight.len();
    let rows = rows_of("rms_norm input", x.len(), cols)?;
    expect_len("rms_norm dy", dy.len(), x.len())?;
    expect_len("rms_norm rstd", rstd.len(), rows)?;
    if cols == 0 {
        return Ok(());
    }
    let name = "rms_norm_backward_weight_f32";
    let f = ctx.function(&RMS_NORM, name)?;
    let (rows_arg, cols_arg) = (as_int("rows", rows)?, as_int("cols", cols)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(dy.slice()).arg(rstd.slice()).arg(dweight.slice_mut()).arg(&rows_arg).arg(&cols_arg);
    // SAFETY: the shapes were checked above; one thread per column.
    ctx.check_launch(unsafe { launch.launch(elementwise(cols)) }, name)
}
