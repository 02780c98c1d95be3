//! The Liger layer's attention output in a decoding step (`kernels/decode.cu`): softmax
//! attention of each query head over the window's keys (a ring buffer of a few dozen), mixed
//! with the mixer's output, `o = alpha · mixer + beta · attention`, in one launch. A block per
//! (sequence, key-value head) whose warps take the group's query heads, so the window is read
//! once per group. CPU twins: `liger_core::liger::swa` (window attention) and
//! `liger::combine` (the mix). Also [`decode_round_bf16`], what a bf16 state would hold.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::DECODE;
use crate::launch::{as_int, elementwise, expect_len};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use liger_core::liger::HeadShape;
use liger_core::{Error, Result};

/// Largest head size the kernel takes (32 lanes x MAX_DIM_PER_LANE in decode.cu).
const MAX_HEAD_DIM: usize = 256;
/// Warps per block (WINDOW_MAX_WARPS in decode.cu): larger groups loop.
const MAX_WARPS: usize = 8;

/// Where the window attention of a step reads: `batch` sequences, `capacity` slots of the
/// caches `[B, hkv, capacity, d]` (as `T`), `min(lengths[b], capacity)` of them valid.
pub struct WindowCaches<'a, T> {
    pub batch: usize,
    pub shape: HeadShape,
    pub capacity: usize,
    pub keys: &'a GpuBuffer<T>,
    pub values: &'a GpuBuffer<T>,
    pub lengths: &'a GpuBuffer<u32>,
}

/// Whether [`decode_window_attention`] takes heads of this shape.
pub fn window_attention_fits(shape: HeadShape) -> bool {
    shape.hkv > 0 && shape.hq.is_multiple_of(shape.hkv) && shape.hq >= shape.hkv && shape.d > 0 && shape.d.is_multiple_of(32) && shape.d <= MAX_HEAD_DIM
}

/// `o = alpha · mixer_o + beta · softmax(q Kᵀ / √d) V` over each sequence's window, per query
/// head (q `[B, hq, d]` roped, as `T`), written as f32 (`o_f`) and as `T` (`o_t`).
#[allow(clippy::too_many_arguments)]
pub fn decode_window_attention<T: GpuElement>(
    ctx: &GpuContext,
    at: &WindowCaches<T>,
    q_t: &GpuBuffer<T>,
    mixer_o: &GpuBuffer<f32>,
    alpha: f32,
    beta: f32,
    o_f: &mut GpuBuffer<f32>,
    o_t: &mut GpuBuffer<T>,
) -> Result<()> {
    let HeadShape { hq, hkv, d } = at.shape;
    if !window_attention_fits(at.shape) {
        return Err(Error::invalid_argument(format!(
            "the window attention takes query heads a multiple of the key-value heads and a head size a multiple of 32 up to {MAX_HEAD_DIM}; got {hq}, {hkv}, {d}"
        )));
    }
    if at.capacity == 0 {
        return Err(Error::invalid_argument("a window needs a capacity of at least 1 key"));
    }
    let b = at.batch;
    let cache_len = b * hkv * at.capacity * d;
    expect_len("window keys", at.keys.len(), cache_len)?;
    expect_len("window values", at.values.len(), cache_len)?;
    expect_len("window lengths", at.lengths.len(), b)?;
    for (what, len) in [("window q", q_t.len()), ("mixer output", mixer_o.len()), ("mixed f32 output", o_f.len()), ("mixed output", o_t.len())] {
        expect_len(what, len, b * hq * d)?;
    }
    if b == 0 {
        return Ok(());
    }
    as_int("cache size", cache_len)?;
    let args = [as_int("batch", b)?, as_int("query heads", hq)?, as_int("key-value heads", hkv)?, as_int("head size", d)?, as_int("capacity", at.capacity)?];
    let name = super::variant::<T>("decode_window_attention_f32", "decode_window_attention_bf16");
    let f = ctx.function(&DECODE, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    for a in &args {
        launch.arg(a);
    }
    launch.arg(q_t.slice()).arg(at.keys.slice()).arg(at.values.slice()).arg(at.lengths.slice());
    launch.arg(mixer_o.slice()).arg(&alpha).arg(&beta).arg(o_f.slice_mut()).arg(o_t.slice_mut());
    let warps = (hq / hkv).min(MAX_WARPS) as u32;
    let cfg = LaunchConfig { grid_dim: (as_int("sequences x key-value heads", b * hkv)? as u32, 1, 1), block_dim: (32 * warps, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: sizes checked above; lengths are clipped to the capacity in the kernel; a block
    // per (sequence, key-value head), each of its warps a query head of the group at a time.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// `x = f32(bf16(x))` in place (round to nearest even): the values a state kept in bf16 would
/// hold, to measure how far such a state drifts from the f32 one.
pub fn decode_round_bf16(ctx: &GpuContext, x: &mut GpuBuffer<f32>) -> Result<()> {
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let name = "decode_round_bf16";
    let f = ctx.function(&DECODE, name)?;
    let n_arg = n as u64;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice_mut()).arg(&n_arg);
    // SAFETY: x holds n values.
    ctx.check_launch(unsafe { launch.launch(elementwise(n)) }, name)
}
