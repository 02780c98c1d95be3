//! Feature maps and the gate of the Liger GLA mixer (`kernels/liger_feature.cu`): softmax over
//! the head dim for queries and keys, `logsigmoid(k) / gate_normalizer` for the gate, and their
//! backward. CPU twin: the GLA case of `liger_core::liger` (feature maps of the mixers).

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::LIGER_FEATURE;
use crate::launch::{as_int, expect_len, rows_of, warp_per_row};
use cudarc::driver::PushKernelArg;
use liger_core::{Error, Result};

/// `y = softmax(x)` over each row of `d` values (one token's head).
pub fn softmax_rows(ctx: &GpuContext, x: &GpuBuffer<f32>, y: &mut GpuBuffer<f32>, d: usize) -> Result<()> {
    let rows = rows_of("softmax input", x.len(), d)?;
    expect_len("softmax output", y.len(), x.len())?;
    if rows == 0 {
        return Ok(());
    }
    let name = "softmax_rows_f32";
    let f = ctx.function(&LIGER_FEATURE, name)?;
    let (rows_arg, d_arg) = (as_int("rows", rows)?, as_int("d", d)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(&rows_arg).arg(&d_arg);
    // SAFETY: x and y hold rows x d values; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row(rows)) }, name)
}

/// Writes `dx = y * (dy - sum(y * dy))` per row, the softmax's backward given its output `y`.
pub fn softmax_rows_backward(
    ctx: &GpuContext,
    y: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    dx: &mut GpuBuffer<f32>,
    d: usize,
) -> Result<()> {
    let rows = rows_of("softmax output", y.len(), d)?;
    expect_len("softmax dy", dy.len(), y.len())?;
    expect_len("softmax dx", dx.len(), y.len())?;
    if rows == 0 {
        return Ok(());
    }
    let name = "softmax_rows_backward_f32";
    let f = ctx.function(&LIGER_FEATURE, name)?;
    let (rows_arg, d_arg) = (as_int("rows", rows)?, as_int("d", d)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(y.slice()).arg(dy.slice()).arg(dx.slice_mut()).arg(&rows_arg).arg(&d_arg);
    // SAFETY: as above.
    ctx.check_launch(unsafe { launch.launch(warp_per_row(rows)) }, name)
}

fn check_normalizer(gate_normalizer: f32) -> Result<()> {
    if !(gate_normalizer.is_finite() && gate_normalizer > 0.0) {
        return Err(Error::invalid_argument(format!(
            "the gate normalizer must be a positive number, got {gate_normalizer}"
        )));
    }
    Ok(())
}

/// GLA key features `kf = softmax(k)` and log-gates `g = logsigmoid(k) / gate_normalizer`, per row of `d`.
pub fn gla_key_features(
    ctx: &GpuContext,
    k: &GpuBuffer<f32>,
    kf: &mut GpuBuffer<f32>,
    g: &mut GpuBuffer<f32>,
    d: usize,
    gate_normalizer: f32,
) -> Result<()> {
    check_normalizer(gate_normalizer)?;
    let rows = rows_of("key input", k.len(), d)?;
    expect_len("key features", kf.len(), k.len())?;
    expect_len("log-gates", g.len(), k.len())?;
    if rows == 0 {
        return Ok(());
    }
    let name = "gla_key_features_f32";
    let f = ctx.function(&LIGER_FEATURE, name)?;
    let (rows_arg, d_arg) = (as_int("rows", rows)?, as_int("d", d)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(k.slice()).arg(kf.slice_mut()).arg(g.slice_mut()).arg(&rows_arg).arg(&d_arg).arg(&gate_normalizer);
    // SAFETY: k, kf and g hold rows x d values; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row(rows)) }, name)
}

/// Writes `dk` given the gradients `dkf` of the key features and `dg` of the log-gates;
/// `kf` is the forward's output.
#[allow(clippy::too_many_arguments)]
pub fn gla_key_features_backward(
    ctx: &GpuContext,
    k: &GpuBuffer<f32>,
    kf: &GpuBuffer<f32>,
    dkf: &GpuBuffer<f32>,
    dg: &GpuBuffer<f32>,
    dk: &mut GpuBuffer<f32>,
    d: usize,
    gate_normalizer: f32,
) -> Result<()> {
    check_normalizer(gate_normalizer)?;
    let rows = rows_of("key input", k.len(), d)?;
    for (what, len) in [("key features", kf.len()), ("dkf", dkf.len()), ("dg", dg.len()), ("dk", dk.len())] {
        expect_len(what, len, k.len())?;
    }
    if rows == 0 {
        return Ok(());
    }
    let name = "gla_key_features_backward_f32";
    let f = ctx.function(&LIGER_FEATURE, name)?;
    let (rows_arg, d_arg) = (as_int("rows", rows)?, as_int("d", d)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(k.slice())
        .arg(kf.slice())
        .arg(dkf.slice())
        .arg(dg.slice())
        .arg(dk.slice_mut())
        .arg(&rows_arg)
        .arg(&d_arg)
        .arg(&gate_normalizer);
    // SAFETY: as above.
    ctx.check_launch(unsafe { launch.launch(warp_per_row(rows)) }, name)
}
