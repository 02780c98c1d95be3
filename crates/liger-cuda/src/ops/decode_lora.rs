//! LoRA adapters in a decoding step, in f32 (`kernels/decode.cu`), in two launches at most for
//! q, k and v together instead of two small GEMMs each: [`decode_lora_down`] computes
//! `u_i = scale_i · x A_iᵀ` of up to three adapters of the same input (their A matrices read
//! once), and the up projection `u_i B_iᵀ` is added inside the frozen weights' product
//! ([`super::decode::decode_gemv_lora`]), or, for a batch too large for it, by
//! [`decode_lora_up`]. CPU twin: `liger_core::train::lora` (`y += scale · (x Aᵀ) Bᵀ`).

use super::decode::{gemv_fits, warps_for};
use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::DECODE;
use crate::launch::{as_int, expect_len, rows_of};
use cudarc::driver::PushKernelArg;
use liger_core::{Error, Result};

/// Most sequences [`decode_lora_down`] takes (larger batches use GEMMs).
pub const LORA_DOWN_MAX_BATCH: usize = 16;

/// The down projection of one adapter: `u [batch, rank] = scale · x Aᵀ`, A `[rank, k]`.
pub struct LoraDown<'a> {
    pub a: &'a GpuBuffer<f32>,
    pub scale: f32,
    /// At least `batch * rank` values; the first `batch * rank` are written.
    pub u: &'a mut GpuBuffer<f32>,
}

/// The up projection of one adapter: `y [batch, n] += u Bᵀ`, B `[n, rank]`, u `[batch, rank]`
/// (the first `batch * rank` values of the buffer).
pub struct LoraUp<'a> {
    pub b: &'a GpuBuffer<f32>,
    pub u: &'a GpuBuffer<f32>,
    pub rank: usize,
}

impl LoraUp<'_> {
    /// Checks the sizes against `batch` sequences and `n` output rows; returns the rank.
    pub(super) fn check(&self, batch: usize, n: usize) -> Result<usize> {
        if self.rank == 0 {
            return Err(Error::invalid_argument("an adapter needs a rank of at least 1"));
        }
        expect_len("adapter B", self.b.len(), n * self.rank)?;
        if self.u.len() < batch * self.rank {
            return Err(Error::shape(format!("the adapter's down projection holds {} values, fewer than {batch} sequences x rank {}", self.u.len(), self.rank)));
        }
        Ok(self.rank)
    }
}

/// `u_i = scale_i · x A_iᵀ` for one to three adapters of the input x `[batch, k]` (batch at
/// most [`LORA_DOWN_MAX_BATCH`], k a multiple of 4), in one launch.
pub fn decode_lora_down(ctx: &GpuContext, x: &GpuBuffer<f32>, batch: usize, k: usize, adapters: &mut [LoraDown]) -> Result<()> {
    if batch == 0 || batch > LORA_DOWN_MAX_BATCH {
        return Err(Error::invalid_argument(format!("the decoding adapters take 1 to {LORA_DOWN_MAX_BATCH} sequences, got {batch}; use gemm")));
    }
    if !gemv_fits::<f32>(k) {
        return Err(Error::invalid_argument(format!("the decoding adapters take rows of a multiple of 4 values, got {k}")));
    }
    if adapters.is_empty() || adapters.len() > 3 {
        return Err(Error::invalid_argument(format!("one down projection takes 1 to 3 adapters, got {}", adapters.len())));
    }
    expect_len("adapter input", x.len(), batch * k)?;
    let mut ranks = [0i32; 3];
    for (i, a) in adapters.iter().enumerate() {
        let rank = rows_of("adapter A", a.a.len(), k)?;
        if rank == 0 {
            return Err(Error::invalid_argument("an adapter needs a rank of at least 1"));
        }
        if a.u.len() < batch * rank {
            return Err(Error::shape(format!("the down projection's output holds {} values, fewer than {batch} sequences x rank {rank}", a.u.len())));
        }
        ranks[i] = as_int("adapter rank", rank)?;
    }
    let name = match batch {
        1 => "decode_lora_down_b1",
        2..=4 => "decode_lora_down_b4",
        _ => "decode_lora_down_b16",
    };
    let f = ctx.function(&DECODE, name)?;
    let (null, zero, batch_arg, k_arg) = (0u64, 0.0f32, batch as i32, as_int("k", k)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice()).arg(&batch_arg).arg(&k_arg);
    let given = adapters.len();
    for (a, rank) in adapters.iter_mut().zip(&ranks) {
        launch.arg(a.a.slice()).arg(&a.scale).arg(a.u.slice_mut()).arg(rank);
    }
    for rank in &ranks[given..] {
        launch.arg(&null).arg(&zero).arg(&null).arg(rank);
    }
    let total: usize = ranks.iter().map(|&r| r as usize).sum();
    // SAFETY: sizes checked above; a warp per row of the A matrices together, past the last returns.
    ctx.check_launch(unsafe { launch.launch(warps_for(total)?) }, name)
}

/// `y_i [batch, n_i] += u_i B_iᵀ` for one to three adapters, any batch, in one launch.
pub fn decode_lora_up(ctx: &GpuContext, batch: usize, outputs: &mut [(LoraUp, &mut GpuBuffer<f32>)]) -> Result<()> {
    if outputs.is_empty() || outputs.len() > 3 {
        return Err(Error::invalid_argument(format!("one up projection takes 1 to 3 adapters, got {}", outputs.len())));
    }
    if batch == 0 {
        return Ok(());
    }
    let (mut rows, mut ranks) = ([0i32; 3], [0i32; 3]);
    for (i, (up, y)) in outputs.iter().enumerate() {
        let n = rows_of("adapter output", y.len(), batch)?;
        ranks[i] = as_int("adapter rank", up.check(batch, n)?)?;
        rows[i] = as_int("adapter output rows", n)?;
    }
    let name = "decode_lora_up_f32";
    let f = ctx.function(&DECODE, name)?;
    let (null, batch_arg) = (0u64, as_int("batch", batch)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(&batch_arg);
    let given = outputs.len();
    for (((up, y), rank), n) in outputs.iter_mut().zip(&ranks).zip(&rows) {
        launch.arg(up.b.slice()).arg(up.u.slice()).arg(rank).arg(y.slice_mut()).arg(n);
    }
    for (rank, n) in ranks[given..].iter().zip(&rows[given..]) {
        launch.arg(&null).arg(&null).arg(rank).arg(&null).arg(n);
    }
    let total: usize = rows.iter().map(|&r| r as usize).sum();
    // SAFETY: sizes checked above; a warp per output row of the three together, past the last returns.
    ctx.check_launch(unsafe { launch.launch(warps_for(total)?) }, name)
}
