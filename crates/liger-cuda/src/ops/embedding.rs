//! Embedding lookup (`kernels/embedding.cu`); CPU twin: `liger_core::model::forward::embed`.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::EMBEDDING;
use crate::launch::{as_int, block_per_row, expect_len, rows_of};
use cudarc::driver::PushKernelArg;
use liger_core::{Error, Result};

/// `out[t] = table[ids[t]]` as f32; `table` is `vocab x hidden` (f32 or bf16), `out` is `ids.len() x hidden`.
pub fn embedding_gather<T: GpuElement>(
    ctx: &GpuContext,
    table: &GpuBuffer<T>,
    hidden: usize,
    ids: &[u32],
    out: &mut GpuBuffer<f32>,
) -> Result<()> {
    let vocab = rows_of("embedding table", table.len(), hidden)?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::invalid_argument(format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    expect_len("embedding output", out.len(), ids.len() * hidden)?;
    if ids.is_empty() {
        return Ok(());
    }
    let ids_gpu = GpuBuffer::from_host(ctx, ids)?;
    let name = super::variant::<T>("embedding_gather_f32", "embedding_gather_bf16");
    let f = ctx.function(&EMBEDDING, name)?;
    let hidden_arg = as_int("hidden", hidden)?;
    let cfg = block_per_row(ids.len(), hidden)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(table.slice()).arg(ids_gpu.slice()).arg(out.slice_mut()).arg(&hidden_arg);
    // SAFETY: every id is below vocab and out holds ids.len() rows of hidden, as the kernel reads and writes.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}
