//! Causal softmax attention with an optional sliding window, and its decoding cache
//! (`kernels/attention.cu`). CPU twins: `liger_core::liger::swa::{swa_forward, swa_backward,
//! causal_attention_forward, causal_attention_backward, SwaCache}`.
//!
//! Queries and keys arrive already roped. Scale 1/sqrt(d), grouped-query heads. Query i sees
//! keys `i + 1 - window.keys ..= i` (clipped at 0) and the first `window.sinks` keys, or every
//! key up to i without a window.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::{GpuContext, MAX_SHARED_BYTES};
use crate::kernels::ATTENTION;
use crate::launch::{as_int, elementwise, expect_len};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use liger_core::liger::{HeadShape, Window};
use liger_core::{Error, Result};

/// Largest head size the kernels take (each of a warp's 32 lanes holds up to 8 values).
pub const MAX_HEAD_DIM: usize = 256;

/// Sizes of one attention call: `batch` sequences of `tokens` tokens each.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub batch: usize,
    pub tokens: usize,
    pub shape: HeadShape,
}

/// The kernels' view of the sizes (`AttnDims` in attention.cu); `window` is clipped to `tokens`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KernelDims {
    batch: i32,
    tokens: i32,
    hq: i32,
    hkv: i32,
    d: i32,
    window: i32,
    sinks: i32,
}

// SAFETY: a plain C struct of ints, laid out as the kernels' `AttnDims`.
unsafe impl DeviceRepr for KernelDims {}

fn check_shape(shape: HeadShape) -> Result<()> {
    if shape.hkv == 0 || shape.hq == 0 || !shape.hq.is_multiple_of(shape.hkv) {
        return Err(Error::invalid_argument(format!(
            "{} query heads are not a positive multiple of {} key-value heads",
            shape.hq, shape.hkv
        )));
    }
    if shape.d == 0 || !shape.d.is_multiple_of(32) || shape.d > MAX_HEAD_DIM {
        return Err(Error::invalid_argument(format!(
            "the GPU attention kernels take a head size that is a multiple of 32 up to {MAX_HEAD_DIM}, got {}",
            shape.d
        )));
    }
    Ok(())
}

impl AttentionDims {
    /// Checks the sizes and the window, and converts them for the kernels.
    fn kernel_dims(&self, window: Option<Window>) -> Result<KernelDims> {
        check_shape(self.shape)?;
        let (window, sinks) = match window {
            Some(Window { keys: 0, .. }) => return Err(Error::invalid_argument(
                "window_keys must be at least 1 (a query always sees its own key); use None for full causal attention",
            )),
            Some(w) => (w.keys.min(self.tokens), w.sinks.min(self.tokens)),
            None => (self.tokens, 0),
        };
        let HeadShape { hq, hkv, d } = self.shape;
        as_int("batch x tokens x query heads x head size", self.batch * self.tokens * hq * d)?;
        Ok(KernelDims {
            batch: as_int("batch", self.batch)?,
            tokens: as_int("tokens", self.tokens)?,
            hq: as_int("query heads", hq)?,
            hkv: as_int("key-value heads", hkv)?,
            d: as_int("head size", d)?,
            window: as_int("window", window.max(1))?,
            sinks: as_int("sinks", sinks)?,
        })
    }

    fn q_len(&self) -> usize {
        self.batch * self.tokens * self.shape.hq * self.shape.d
    }
    fn kv_len(&self) -> usize {
        self.batch * self.tokens * self.shape.hkv * self.shape.d
    }
    fn lse_len(&self) -> usize {
        self.batch * self.shape.hq * self.tokens
    }
}

/// Queries per block of the tensor-core kernels.
const MMA_ROWS: usize = 64;

/// The tensor-core forward for this element type and head size, if there is one (bf16, d = 64 or 128).
fn tensor_core_forward<T: GpuElement>(d: usize) -> Option<&'static str> {
    match (T::KERNEL_SUFFIX, d) {
        ("bf16", 64) => Some("attention_forward_mma_d64"),
        ("bf16", 128) => Some("attention_forward_mma_d128"),
        _ => None,
    }
}

/// The tensor-core surprise kernels (forward, dQ, dK/dV) for this element type and head size, if
/// there are (the same cases as [`tensor_core_forward`]).
fn tensor_core_surprise<T: GpuElement>(d: usize) -> Option<[&'static str; 3]> {
    tensor_core_forward::<T>(d)?;
    Some(if d == 64 {
        ["surprise_attention_mma_d64", "surprise_dq_mma_d64", "surprise_dkv_mma_d64"]
    } else {
        ["surprise_attention_mma_d128", "surprise_dq_mma_d128", "surprise_dkv_mma_d128"]
    })
}

/// The launch of a tensor-core kernel: a block of 4 warps per 64 tokens, per head, per sequence.
fn tile_grid(dims: AttentionDims, heads: usize, kernel: &str) -> Result<LaunchConfig> {
    if heads > 65535 || dims.batch > 65535 {
        return Err(Error::invalid_argument(format!(
            "{kernel}: {heads} heads x {} sequences are more than one launch takes (65535 each)",
            dims.batch
        )));
    }
    Ok(LaunchConfig {
        grid_dim: (dims.tokens.div_ceil(MMA_ROWS) as u32, heads as u32, dims.batch as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One warp per row: `BLOCK / 32` rows per block.
fn warp_rows(rows: usize) -> LaunchConfig {
    crate::launch::warp_per_row(rows)
}

/// Causal softmax attention, scale 1/sqrt(d), GQA. q `[B,T,hq,d]`, k/v `[B,T,hkv,d]`, o `[B,T,hq,d]`.
/// `window`: Some(w) = query i sees keys i-w.keys+1..=i (the sliding window) and the first
/// w.sinks keys, None = full causal.
/// `lse` `[B, hq, T]` fp32: the log-sum-exp per query, kept for the backward.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: GpuElement>(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Option<Window>,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &mut GpuBuffer<T>,
    lse: &mut GpuBuffer<f32>,
) -> Result<()> {
    let p = dims.kernel_dims(window)?;
    check_forward_sizes(dims, [q, o], [k, v], lse)?;
    if dims.q_len() == 0 {
        return Ok(());
    }
    if let Some(name) = tensor_core_forward::<T>(dims.shape.d) {
        // bf16 with a head size of 64 or 128: tiles of 64 queries per block on tensor cores.
        let cfg = tile_grid(dims, dims.shape.hq, name)?;
        let f = ctx.function(&ATTENTION, name)?;
        let mut launch = ctx.stream().launch_builder(&f);
        launch.arg(&p).arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(o.slice_mut()).arg(lse.slice_mut());
        // SAFETY: sizes checked above; the kernel guards rows and keys past `tokens`.
        return ctx.check_launch(unsafe { launch.launch(cfg) }, name);
    }
    let name = super::variant::<T>("attention_forward_f32", "attention_forward_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(&p).arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(o.slice_mut()).arg(lse.slice_mut());
    // SAFETY: sizes checked above; one warp per (sequence, query, head) row.
    ctx.check_launch(unsafe { launch.launch(warp_rows(dims.batch * dims.tokens * dims.shape.hq)) }, name)
}

/// Checks the sizes of a forward call: q, o `[B,T,hq,d]`; k, v `[B,T,hkv,d]`; lse `[B,hq,T]`.
fn check_forward_sizes<T: GpuElement>(
    dims: AttentionDims,
    [q, o]: [&GpuBuffer<T>; 2],
    [k, v]: [&GpuBuffer<T>; 2],
    lse: &GpuBuffer<f32>,
) -> Result<()> {
    expect_len("attention q", q.len(), dims.q_len())?;
    expect_len("attention k", k.len(), dims.kv_len())?;
    expect_len("attention v", v.len(), dims.kv_len())?;
    expect_len("attention output", o.len(), dims.q_len())?;
    expect_len("attention lse", lse.len(), dims.lse_len())
}

/// Checks the sizes of a backward call: q, o, d_o, dq `[B,T,hq,d]`; k, v, dk, dv `[B,T,hkv,d]`;
/// lse `[B,hq,T]`.
fn check_backward_sizes<T: GpuElement>(
    dims: AttentionDims,
    q_like: [&GpuBuffer<T>; 4],
    kv_like: [&GpuBuffer<T>; 4],
    lse: &GpuBuffer<f32>,
) -> Result<()> {
    for (what, x) in ["attention q", "attention o", "attention d_o", "attention dq"].into_iter().zip(q_like) {
        expect_len(what, x.len(), dims.q_len())?;
    }
    for (what, x) in ["attention k", "attention v", "attention dk", "attention dv"].into_iter().zip(kv_like) {
        expect_len(what, x.len(), dims.kv_len())?;
    }
    expect_len("attention lse", lse.len(), dims.lse_len())
}

/// The softmax backward's row term `delta[b, h, i] = sum over d of d_o * o`, `[B, hq, T]`
/// (sizes checked by the caller).
fn attention_delta<T: GpuElement>(
    ctx: &GpuContext,
    p: KernelDims,
    dims: AttentionDims,
    o: &GpuBuffer<T>,
    d_o: &GpuBuffer<T>,
) -> Result<GpuBuffer<f32>> {
    let mut delta = GpuBuffer::<f32>::zeros(ctx, dims.lse_len())?;
    let name = super::variant::<T>("attention_delta_f32", "attention_delta_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(&p).arg(o.slice()).arg(d_o.slice()).arg(delta.slice_mut());
    // SAFETY: sizes checked by the caller; one warp per query row.
    ctx.check_launch(unsafe { launch.launch(warp_rows(dims.batch * dims.tokens * dims.shape.hq)) }, name)?;
    Ok(delta)
}

/// Gradients of `sum(d_o * o)` w.r.t. q, k and v, given the forward's `o` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: GpuElement>(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Option<Window>,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &GpuBuffer<T>,
    lse: &GpuBuffer<f32>,
    d_o: &GpuBuffer<T>,
    dq: &mut GpuBuffer<T>,
    dk: &mut GpuBuffer<T>,
    dv: &mut GpuBuffer<T>,
) -> Result<()> {
    let p = dims.kernel_dims(window)?;
    check_backward_sizes(dims, [q, o, d_o, dq], [k, v, dk, dv], lse)?;
    if dims.q_len() == 0 {
        return Ok(());
    }
    let q_rows = dims.batch * dims.tokens * dims.shape.hq;
    let delta = attention_delta(ctx, p, dims, o, d_o)?;

    if tensor_core_forward::<T>(dims.shape.d).is_some() {
        // bf16 with a head size of 64 or 128: dQ per 64 queries, dK and dV per 64 keys.
        let d = dims.shape.d;
        let (dq_name, dkv_name) = if d == 64 {
            ("attention_dq_mma_d64", "attention_dkv_mma_d64")
        } else {
            ("attention_dq_mma_d128", "attention_dkv_mma_d128")
        };
        let f = ctx.function(&ATTENTION, dq_name)?;
        let mut launch = ctx.stream().launch_builder(&f);
        launch
            .arg(&p)
            .arg(q.slice())
            .arg(k.slice())
            .arg(v.slice())
            .arg(lse.slice())
            .arg(delta.slice())
            .arg(d_o.slice())
            .arg(dq.slice_mut());
        // SAFETY: sizes checked above; the kernel guards rows and keys past `tokens`.
        ctx.check_launch(unsafe { launch.launch(tile_grid(dims, dims.shape.hq, dq_name)?) }, dq_name)?;
        let f = ctx.function(&ATTENTION, dkv_name)?;
        let mut launch = ctx.stream().launch_builder(&f);
        launch
            .arg(&p)
            .arg(q.slice())
            .arg(k.slice())
            .arg(v.slice())
            .arg(lse.slice())
            .arg(delta.slice())
            .arg(d_o.slice())
            .arg(dk.slice_mut())
            .arg(dv.slice_mut());
        // SAFETY: as above.
        return ctx.check_launch(unsafe { launch.launch(tile_grid(dims, dims.shape.hkv, dkv_name)?) }, dkv_name);
    }
    let name = super::variant::<T>("attention_dq_f32", "attention_dq_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(&p)
        .arg(q.slice())
        .arg(k.slice())
        .arg(v.slice())
        .arg(lse.slice())
        .arg(delta.slice())
        .arg(d_o.slice())
        .arg(dq.slice_mut());
    // SAFETY: as above.
    ctx.check_launch(unsafe { launch.launch(warp_rows(q_rows)) }, name)?;

    let name = super::variant::<T>("attention_dkv_f32", "attention_dkv_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(&p)
        .arg(q.slice())
        .arg(k.slice())
        .arg(v.slice())
        .arg(lse.slice())
        .arg(delta.slice())
        .arg(d_o.slice())
        .arg(dk.slice_mut())
        .arg(dv.slice_mut());
    // SAFETY: as above; one warp per (sequence, key, kv head) row.
    ctx.check_launch(unsafe { launch.launch(warp_rows(dims.batch * dims.tokens * dims.shape.hkv)) }, name)
}

/// Decoding: one query per sequence against a cache. q_t `[B,hq,d]`; k_cache/v_cache `[B, hkv, capacity, d]`
/// (already roped keys); `lengths[b]` valid entries of sequence b (for a ring buffer of the window, the
/// slots in use: order does not matter to softmax once keys are roped), or `lengths` `[B, hkv]`
/// those of each (sequence, key-value head) row. Writes o_t `[B,hq,d]`.
/// A length above `capacity` counts as `capacity`; a sequence with length 0 gets zeros.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode<T: GpuElement>(
    ctx: &GpuContext,
    batch: usize,
    shape: HeadShape,
    capacity: usize,
    q_t: &GpuBuffer<T>,
    k_cache: &GpuBuffer<T>,
    v_cache: &GpuBuffer<T>,
    lengths: &GpuBuffer<u32>,
    o_t: &mut GpuBuffer<T>,
) -> Result<()> {
    check_shape(shape)?;
    check_capacity(capacity)?;
    let cache_len = batch * shape.hkv * capacity * shape.d;
    expect_len("decode q_t", q_t.len(), batch * shape.hq * shape.d)?;
    expect_len("decode o_t", o_t.len(), batch * shape.hq * shape.d)?;
    expect_len("key cache", k_cache.len(), cache_len)?;
    expect_len("value cache", v_cache.len(), cache_len)?;
    // One length per sequence, or per (sequence, key-value head) where the heads of a surprise
    // cache hold different counts.
    let per_head = i32::from(lengths.len() == batch * shape.hkv && shape.hkv > 1);
    if per_head == 0 {
        expect_len("decode lengths", lengths.len(), batch)?;
    }
    if batch == 0 {
        return Ok(());
    }
    let args = [
        as_int("batch", batch)?,
        as_int("query heads", shape.hq)?,
        as_int("key-value heads", shape.hkv)?,
        as_int("head size", shape.d)?,
        as_int("capacity", capacity)?,
    ];
    as_int("cache size", cache_len)?;
    let name = super::variant::<T>("attention_decode_f32", "attention_decode_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    for a in &args {
        launch.arg(a);
    }
    launch.arg(q_t.slice()).arg(k_cache.slice()).arg(v_cache.slice()).arg(lengths.slice()).arg(&per_head);
    launch.arg(o_t.slice_mut());
    // SAFETY: sizes checked above; lengths are clipped to capacity in the kernel; a block per (sequence, head).
    let blocks = as_int("sequences x query heads", batch * shape.hq)? as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (DECODE_THREADS, 1, 1), shared_mem_bytes: 0 };
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// Threads per (sequence, head) of the decoding kernel: DECODE_WARPS warps in attention.cu.
const DECODE_THREADS: u32 = 128;

fn check_capacity(capacity: usize) -> Result<()> {
    if capacity == 0 {
        return Err(Error::invalid_argument("a key-value cache needs a capacity of at least 1 token"));
    }
    Ok(())
}

/// Writes k_t/v_t `[B,hkv,d]` into slot `window.slot(positions[b])` of each sequence's cache of
/// `window.capacity()` slots.
#[allow(clippy::too_many_arguments)]
pub fn cache_append<T: GpuElement>(
    ctx: &GpuContext,
    batch: usize,
    shape: HeadShape,
    window: Window,
    k_t: &GpuBuffer<T>,
    v_t: &GpuBuffer<T>,
    positions: &GpuBuffer<u32>,
    k_cache: &mut GpuBuffer<T>,
    v_cache: &mut GpuBuffer<T>,
) -> Result<()> {
    cache_prefill(ctx, batch, 1, shape, window, k_t, v_t, positions, k_cache, v_cache)
}

/// After a prefill of `tokens` tokens per sequence: writes token t of k_new/v_new
/// `[B, tokens, hkv, d]` (at position `positions[b] + t`) into slot `window.slot(positions[b] + t)`
/// of caches of `window.capacity()` slots: the sinks for good, the last `window.keys` tokens in a
/// ring (a softmax layer's cache is a window of its capacity without sinks).
#[allow(clippy::too_many_arguments)]
pub fn cache_prefill<T: GpuElement>(
    ctx: &GpuContext,
    batch: usize,
    tokens: usize,
    shape: HeadShape,
    window: Window,
    k_new: &GpuBuffer<T>,
    v_new: &GpuBuffer<T>,
    positions: &GpuBuffer<u32>,
    k_cache: &mut GpuBuffer<T>,
    v_cache: &mut GpuBuffer<T>,
) -> Result<()> {
    check_shape(shape)?;
    let capacity = window.capacity();
    check_capacity(window.keys)?;
    let cache_len = batch * shape.hkv * capacity * shape.d;
    expect_len("new keys", k_new.len(), batch * tokens * shape.hkv * shape.d)?;
    expect_len("new values", v_new.len(), batch * tokens * shape.hkv * shape.d)?;
    expect_len("key cache", k_cache.len(), cache_len)?;
    expect_len("value cache", v_cache.len(), cache_len)?;
    expect_len("cache positions", positions.len(), batch)?;
    if batch == 0 || tokens == 0 {
        return Ok(());
    }
    as_int("cache size", cache_len)?;
    let args = [
        as_int("batch", batch)?,
        as_int("tokens", tokens)?,
        as_int("key-value heads", shape.hkv)?,
        as_int("head size", shape.d)?,
        as_int("capacity", capacity)?,
        as_int("sinks", window.sinks)?,
    ];
    let name = super::variant::<T>("cache_write_f32", "cache_write_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    for a in &args {
        launch.arg(a);
    }
    launch
        .arg(k_new.slice())
        .arg(v_new.slice())
        .arg(positions.slice())
        .arg(k_cache.slice_mut())
        .arg(v_cache.slice_mut());
    // SAFETY: sizes checked above; slots are the sinks' or taken modulo the ring's size.
    ctx.check_launch(unsafe { launch.launch(elementwise(batch * tokens * shape.hkv * shape.d)) }, name)
}

/// Keys `[rows, hkv, d]` repeated over each key-value head's query heads: `[rows, hq, d]`.
pub fn keys_as_queries(ctx: &GpuContext, shape: HeadShape, k: &GpuBuffer<f32>) -> Result<GpuBuffer<f32>> {
    check_shape(shape)?;
    let rows = k.len() / (shape.hkv * shape.d);
    expect_len("keys", k.len(), rows * shape.hkv * shape.d)?;
    let mut kq = GpuBuffer::<f32>::zeros(ctx, rows * shape.hq * shape.d)?;
    if rows == 0 {
        return Ok(kq);
    }
    let name = "keys_as_queries_f32";
    let f = ctx.function(&ATTENTION, name)?;
    let (rows_arg, hq, hkv, d) = (
        rows as i64,
        as_int("query heads", shape.hq)?,
        as_int("key-value heads", shape.hkv)?,
        as_int("head size", shape.d)?,
    );
    let cfg = elementwise(kq.len());
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(k.slice()).arg(kq.slice_mut()).arg(&rows_arg).arg(&hq).arg(&hkv).arg(&d);
    // SAFETY: sizes checked above; a grid-stride loop over kq.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)?;
    Ok(kq)
}

/// The surprise of each token, `[B*T, hkv]`, from the recurrent branch read out with the keys as
/// queries over the values (`n`) and over values of one (`den`), both `[B*T, hq, d]`, and the
/// values `v` `[B*T, hkv, d]` (CPU twin: `liger_core::liger::surprise::surprise_scores`).
pub fn surprise_scores(
    ctx: &GpuContext,
    shape: HeadShape,
    n: &GpuBuffer<f32>,
    den: &GpuBuffer<f32>,
    v: &GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    check_shape(shape)?;
    let rows = v.len() / (shape.hkv * shape.d);
    expect_len("surprise values", v.len(), rows * shape.hkv * shape.d)?;
    expect_len("surprise read-out", n.len(), rows * shape.hq * shape.d)?;
    expect_len("surprise normaliser", den.len(), n.len())?;
    let mut scores = GpuBuffer::<f32>::zeros(ctx, rows * shape.hkv)?;
    if rows == 0 {
        return Ok(scores);
    }
    let name = "surprise_scores_f32";
    let f = ctx.function(&ATTENTION, name)?;
    let (rows_arg, hq, hkv, d, eps) = (
        rows as i64,
        as_int("query heads", shape.hq)?,
        as_int("key-value heads", shape.hkv)?,
        as_int("head size", shape.d)?,
        liger_core::liger::surprise::SCORE_EPS,
    );
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(n.slice())
        .arg(den.slice())
        .arg(v.slice())
        .arg(scores.slice_mut())
        .arg(&rows_arg)
        .arg(&hq)
        .arg(&hkv)
        .arg(&d)
        .arg(&eps);
    // SAFETY: sizes checked above; a grid-stride loop over rows x hkv.
    ctx.check_launch(unsafe { launch.launch(elementwise(rows * shape.hkv)) }, name)?;
    Ok(scores)
}

/// Queries of a token's run per warp of the surprise dK/dV kernel (RUN_CHUNK in attention.cu).
const RUN_CHUNK: usize = 64;

/// The surprise cache's choice over whole sequences (from [`surprise_select`]): what attention
/// sees beyond the window, held fixed by the backward.
pub struct SurpriseCache {
    pub slots: usize,
    /// `[B, T, hkv, slots]`: the token in each slot while query t attends (-1: empty).
    pub kept: GpuBuffer<i32>,
    /// `[B, T, hkv]`: the first query that no longer sees the token; the queries that see it
    /// are the run from the token to there (its window, then its time in the cache).
    pub until: GpuBuffer<i32>,
    /// `[B, hkv, ceil(T / 64)]`: the largest `until` of each tile of 64 tokens, so that the
    /// tensor-core kernels skip the tiles no query of a block still sees.
    pub tile_until: GpuBuffer<i32>,
}

/// The surprise cache's contents before each query, from the scores `[B*T, hkv]` and, for the
/// repeat rule at `repeat_tolerance` (0: off), the values `[B*T, hkv, d]` (CPU twin:
/// `liger_core::liger::surprise::surprise_kept_with_repeats`).
#[allow(clippy::too_many_arguments)]
pub fn surprise_select(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Window,
    slots: usize,
    repeat_tolerance: f64,
    scores: &GpuBuffer<f32>,
    values: &GpuBuffer<f32>,
) -> Result<SurpriseCache> {
    let p = dims.kernel_dims(Some(window))?;
    expect_len("surprise scores", scores.len(), dims.batch * dims.tokens * dims.shape.hkv)?;
    expect_len("surprise values", values.len(), dims.batch * dims.tokens * dims.shape.hkv * dims.shape.d)?;
    if slots == 0 {
        return Err(Error::invalid_argument("a surprise cache needs at least one slot"));
    }
    liger_core::liger::surprise::check_repeat_tolerance(repeat_tolerance)?;
    let slots_arg = as_int("surprise slots", slots)?;
    as_int("tokens x key-value heads x surprise slots", dims.batch * dims.tokens * dims.shape.hkv * slots)?;
    let mut kept = GpuBuffer::<i32>::zeros(ctx, dims.batch * dims.tokens * dims.shape.hkv * slots)?;
    let mut until = GpuBuffer::<i32>::zeros(ctx, dims.batch * dims.tokens * dims.shape.hkv)?;
    let mut tile_until = GpuBuffer::<i32>::zeros(ctx, dims.batch * dims.shape.hkv * dims.tokens.div_ceil(MMA_ROWS))?;
    if kept.is_empty() {
        return Ok(SurpriseCache { slots, kept, until, tile_until });
    }
    let shared = repeat_rule_shared_bytes(slots, dims.shape.d, repeat_tolerance)?;
    let scratch = dims.batch * dims.shape.hkv * slots;
    let (mut slot_token, mut slot_score) =
        (GpuBuffer::<i32>::zeros(ctx, scratch)?, GpuBuffer::<f32>::zeros(ctx, scratch)?);
    let name = "surprise_select";
    let f = ctx.function_with_shared(&ATTENTION, name, shared)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(scores.slice())
        .arg(values.slice())
        .arg(&p.batch)
        .arg(&p.tokens)
        .arg(&p.hkv)
        .arg(&p.d)
        .arg(&p.window)
        .arg(&p.sinks)
        .arg(&slots_arg)
        .arg(&repeat_tolerance)
        .arg(slot_token.slice_mut())
        .arg(slot_score.slice_mut())
        .arg(kept.slice_mut())
        .arg(until.slice_mut())
        .arg(tile_until.slice_mut());
    // SAFETY: sizes checked above; a block per (sequence, key-value head), with the shared
    // memory the repeat rule's held values take and threads to compare them.
    let blocks = as_int("sequences x key-value heads", dims.batch * dims.shape.hkv)? as u32;
    let threads = if repeat_tolerance > 0.0 { SELECT_THREADS } else { 32 };
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: shared as u32 };
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)?;
    Ok(SurpriseCache { slots, kept, until, tile_until })
}

/// Threads of a `surprise_select` block with the repeat rule: each compares the offered value
/// with its share of the held ones (one slot each at 256 slots).
const SELECT_THREADS: u32 = 256;

/// Shared memory `surprise_select` takes for the repeat rule (0 without it): the held values
/// of `slots` slots and the token being offered, `d + 1` floats each. More than a block can
/// have is an error that says what fits.
pub fn repeat_rule_shared_bytes(slots: usize, d: usize, repeat_tolerance: f64) -> Result<usize> {
    if repeat_tolerance <= 0.0 {
        return Ok(0);
    }
    let bytes = slots.saturating_add(1).saturating_mul(d + 1).saturating_mul(4);
    if bytes > MAX_SHARED_BYTES {
        let most = MAX_SHARED_BYTES / (4 * (d + 1)) - 1;
        return Err(Error::invalid_argument(format!(
            "the surprise cache's repeat rule on the GPU holds the cached values in shared memory: at most {most} \
             surprise keys at head size {d}, got {slots}; use fewer keys, the CPU engine, or turn the rule off \
             (surpriseRepeatTolerance 0, on the command line --surprise-repeats 0)"
        )));
    }
    Ok(bytes)
}

/// Checks a surprise cache against the sizes of one attention call.
fn check_cache(dims: AttentionDims, cache: &SurpriseCache) -> Result<i32> {
    expect_len("surprise cache", cache.kept.len(), dims.batch * dims.tokens * dims.shape.hkv * cache.slots)?;
    expect_len("surprise cache runs", cache.until.len(), dims.batch * dims.tokens * dims.shape.hkv)?;
    expect_len(
        "surprise cache tiles",
        cache.tile_until.len(),
        dims.batch * dims.shape.hkv * dims.tokens.div_ceil(MMA_ROWS),
    )?;
    as_int("surprise slots", cache.slots)
}

/// Attention of each query over the sinks, its surprise cache and its window, in that order.
/// q `[B,T,hq,d]` and k/v `[B,T,hkv,d]` roped as for [`attention_forward`]; `lse` as there.
#[allow(clippy::too_many_arguments)]
pub fn surprise_attention_forward<T: GpuElement>(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Window,
    cache: &SurpriseCache,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &mut GpuBuffer<T>,
    lse: &mut GpuBuffer<f32>,
) -> Result<()> {
    let p = dims.kernel_dims(Some(window))?;
    check_forward_sizes(dims, [q, o], [k, v], lse)?;
    let slots = check_cache(dims, cache)?;
    if dims.q_len() == 0 {
        return Ok(());
    }
    if let Some([name, _, _]) = tensor_core_surprise::<T>(dims.shape.d) {
        // bf16 with a head size of 64 or 128: the tensor-core forward, each key masked by its run.
        let f = ctx.function(&ATTENTION, name)?;
        let mut launch = ctx.stream().launch_builder(&f);
        launch
            .arg(&p)
            .arg(q.slice())
            .arg(k.slice())
            .arg(v.slice())
            .arg(cache.until.slice())
            .arg(cache.tile_until.slice())
            .arg(o.slice_mut())
            .arg(lse.slice_mut());
        // SAFETY: sizes checked above; the kernel guards rows and keys past `tokens`.
        return ctx.check_launch(unsafe { launch.launch(tile_grid(dims, dims.shape.hq, name)?) }, name);
    }
    let name = super::variant::<T>("surprise_attention_f32", "surprise_attention_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(&p)
        .arg(&slots)
        .arg(q.slice())
        .arg(k.slice())
        .arg(v.slice())
        .arg(cache.kept.slice())
        .arg(o.slice_mut())
        .arg(lse.slice_mut());
    // SAFETY: sizes checked above; one warp per (sequence, query, head) row.
    ctx.check_launch(unsafe { launch.launch(warp_rows(dims.batch * dims.tokens * dims.shape.hq)) }, name)
}

/// Gradients of `sum(d_o * o)` for [`surprise_attention_forward`] w.r.t. q, k and v, the cache's
/// choice held fixed (CPU twin: `liger_core::liger::surprise::surprise_attention_backward`).
#[allow(clippy::too_many_arguments)]
pub fn surprise_attention_backward<T: GpuElement>(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Window,
    cache: &SurpriseCache,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &GpuBuffer<T>,
    lse: &GpuBuffer<f32>,
    d_o: &GpuBuffer<T>,
    dq: &mut GpuBuffer<T>,
    dk: &mut GpuBuffer<T>,
    dv: &mut GpuBuffer<T>,
) -> Result<()> {
    let p = dims.kernel_dims(Some(window))?;
    check_backward_sizes(dims, [q, o, d_o, dq], [k, v, dk, dv], lse)?;
    let slots = check_cache(dims, cache)?;
    if dims.q_len() == 0 {
        return Ok(());
    }
    let delta = attention_delta(ctx, p, dims, o, d_o)?;
    if let Some([_, dq_name, dkv_name]) = tensor_core_surprise::<T>(dims.shape.d) {
        // bf16 with a head size of 64 or 128: dQ per 64 queries, dK and dV per 64 keys over
        // the query tiles of their runs, on tensor cores.
        for (name, heads) in [(dq_name, dims.shape.hq), (dkv_name, dims.shape.hkv)] {
            let f = ctx.function(&ATTENTION, name)?;
            let mut launch = ctx.stream().launch_builder(&f);
            launch
                .arg(&p)
                .arg(q.slice())
                .arg(k.slice())
                .arg(v.slice())
                .arg(cache.until.slice())
                .arg(cache.tile_until.slice())
                .arg(lse.slice())
                .arg(delta.slice())
                .arg(d_o.slice());
            if name == dq_name {
                launch.arg(dq.slice_mut());
            } else {
                launch.arg(dk.slice_mut()).arg(dv.slice_mut());
            }
            // SAFETY: sizes checked above; the kernels guard rows and keys past `tokens`.
            ctx.check_launch(unsafe { launch.launch(tile_grid(dims, heads, name)?) }, name)?;
        }
        return Ok(());
    }
    let name = super::variant::<T>("surprise_dq_f32", "surprise_dq_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(&p)
        .arg(&slots)
        .arg(q.slice())
        .arg(k.slice())
        .arg(v.slice())
        .arg(cache.kept.slice())
        .arg(lse.slice())
        .arg(delta.slice())
        .arg(d_o.slice())
        .arg(dq.slice_mut());
    // SAFETY: sizes checked above; one warp per query row.
    ctx.check_launch(unsafe { launch.launch(warp_rows(dims.batch * dims.tokens * dims.shape.hq)) }, name)?;
    // dK, dV: warps over chunks of each token's run of queries, summed in f32, then stored.
    let (mut dk_sum, mut dv_sum) =
        (GpuBuffer::<f32>::zeros(ctx, dims.kv_len())?, GpuBuffer::<f32>::zeros(ctx, dims.kv_len())?);
    let name = super::variant::<T>("surprise_dkv_f32", "surprise_dkv_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(&p)
        .arg(q.slice())
        .arg(k.slice())
        .arg(v.slice())
        .arg(cache.until.slice())
        .arg(lse.slice())
        .arg(delta.slice())
        .arg(d_o.slice())
        .arg(dk_sum.slice_mut())
        .arg(dv_sum.slice_mut());
    let chunks = dims.tokens.div_ceil(RUN_CHUNK);
    // SAFETY: as above; one warp per (sequence, key, kv head, chunk of its run).
    ctx.check_launch(unsafe { launch.launch(warp_rows(dims.batch * dims.tokens * dims.shape.hkv * chunks)) }, name)?;
    let name = super::variant::<T>("surprise_dkv_store_f32", "surprise_dkv_store_bf16");
    let f = ctx.function(&ATTENTION, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    let n = dims.kv_len() as i64;
    launch.arg(dk_sum.slice()).arg(dv_sum.slice()).arg(dk.slice_mut()).arg(dv.slice_mut()).arg(&n);
    // SAFETY: sizes checked above; grid-stride over the n values.
    ctx.check_launch(unsafe { launch.launch(elementwise(dims.kv_len())) }, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    fn dims(d: usize) -> AttentionDims {
        AttentionDims { batch: 2, tokens: 10, shape: HeadShape { hq: 4, hkv: 2, d } }
    }

    #[test]
    fn the_repeat_rule_takes_shared_memory_for_its_held_values_or_says_what_fits() {
        assert_eq!(repeat_rule_shared_bytes(256, 64, 0.0).unwrap(), 0);
        assert_eq!(repeat_rule_shared_bytes(256, 64, 0.05).unwrap(), 257 * 65 * 4);
        assert!(repeat_rule_shared_bytes(256, 128, 0.05).unwrap() <= MAX_SHARED_BYTES);
        let err = repeat_rule_shared_bytes(4096, 64, 0.05).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("at most 893 surprise keys at head size 64"), "{}", err.message);
        assert!(err.message.contains("--surprise-repeats 0"), "{}", err.message);
    }

    #[test]
    fn windows_are_clipped_and_checked() {
        assert_eq!(dims(64).kernel_dims(None).unwrap().window, 10);
        assert_eq!(dims(64).kernel_dims(Some(65.into())).unwrap().window, 10);
        assert_eq!(dims(64).kernel_dims(Some(3.into())).unwrap().window, 3);
        let sinks = dims(64).kernel_dims(Some(Window { keys: 3, sinks: 40 })).unwrap();
        assert_eq!((sinks.window, sinks.sinks), (3, 10));
        let err = dims(64).kernel_dims(Some(0.into())).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("window_keys"), "{}", err.message);
    }

    #[test]
    fn head_sizes_outside_the_kernels_are_rejected() {
        for d in [0, 48, 288] {
            let err = dims(d).kernel_dims(None).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains("head size"), "{}", err.message);
        }
        let bad_group = AttentionDims { batch: 1, tokens: 4, shape: HeadShape { hq: 3, hkv: 2, d: 64 } };
        assert_eq!(bad_group.kernel_dims(None).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_capacity(0).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn buffer_sizes_follow_the_layouts() {
        let d = dims(64);
        assert_eq!((d.q_len(), d.kv_len(), d.lse_len()), (2 * 10 * 4 * 64, 2 * 10 * 2 * 64, 2 * 4 * 10));
    }
}
