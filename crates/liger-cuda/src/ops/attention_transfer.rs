//! Attention transfer's loss on one layer (`kernels/attention_transfer.cu`); CPU twin:
//! `liger_core::nn::loss::attention_transfer_rows`.

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::ATTENTION_TRANSFER;
use crate::launch::{as_int, block_per_row, expect_len};
use cudarc::driver::PushKernelArg;
use liger_core::Result;

/// For each counted row (`labels[r] != IGNORE`, labels on the device), adds
/// `weight · mean_j (o - target)²` into `row_loss[r]`, and writes
/// `d_o = grad_scale · d(that)/d(o)` (zero on rows that do not count). `o`, `target`, `d_o`:
/// `rows x width`; `labels`, `row_loss`: `rows`.
#[allow(clippy::too_many_arguments)]
pub fn attention_transfer_rows(
    ctx: &GpuContext,
    o: &GpuBuffer<f32>,
    target: &GpuBuffer<f32>,
    labels: &GpuBuffer<u32>,
    width: usize,
    weight: f32,
    grad_scale: f32,
    d_o: &mut GpuBuffer<f32>,
    row_loss: &mut GpuBuffer<f32>,
) -> Result<()> {
    let rows = labels.len();
    for (what, len) in [("o", o.len()), ("target", target.len()), ("d_o", d_o.len())] {
        expect_len(what, len, rows * width)?;
    }
    expect_len("row_loss", row_loss.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let name = "attention_transfer_rows_f32";
    let f = ctx.function(&ATTENTION_TRANSFER, name)?;
    let width_arg = as_int("width", width)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(o.slice())
        .arg(target.slice())
        .arg(labels.slice())
        .arg(d_o.slice_mut())
        .arg(row_loss.slice_mut())
        .arg(&width_arg)
        .arg(&weight)
        .arg(&grad_scale);
    // SAFETY: o, target and d_o hold rows x width values, labels and row_loss rows (checked).
    ctx.check_launch(unsafe { launch.launch(block_per_row(rows, width)?) }, name)
}
