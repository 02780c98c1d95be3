//! The fused glue of a decoding step (`kernels/decode.cu`): each writes its result straight in
//! the storage type `T` the next product reads, so a step needs no separate casts (the norms and
//! SwiGLU use the shared `rms_norm_forward_pair` and `swiglu_forward_to`); and the surprise
//! cache's bookkeeping while decoding. CPU twins: RoPE and the window cache of
//! `liger_core::liger::swa`, the Liger mix `alpha * GRM + beta * SWA` of `liger::liger_attention`, the
//! surprise cache's `SurpriseMemory`, and the products.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::DECODE;
use crate::launch::{as_int, elementwise, expect_len, rows_of, warp_per_row};
use cudarc::driver::PushKernelArg;
use liger_core::liger::{HeadShape, Window};
use liger_core::{Error, Result};

/// Where a decoding step's RoPE and cache write go: `batch` sequences, one token each, sequence
/// b at position `positions[b]`, written to entry `window.slot(positions[b])` of cache rows of
/// `window.capacity() + slots` entries (`slots`: the surprise cache's, after the window; 0
/// without one).
pub struct DecodeRope<'a> {
    pub inv_freq: &'a GpuBuffer<f32>,
    pub positions: &'a GpuBuffer<u32>,
    pub batch: usize,
    pub shape: HeadShape,
    pub window: Window,
    pub slots: usize,
}

/// RoPE of q `[B, hq, d]` into `q_roped`, and of k `[B, hkv, d]` into the key cache, v unchanged
/// into the value cache (caches `[B, hkv, capacity + slots, d]`), all stored as `T`.
#[allow(clippy::too_many_arguments)]
pub fn decode_rope_append<T: GpuElement>(
    ctx: &GpuContext,
    at: &DecodeRope,
    q: &GpuBuffer<f32>,
    k: &GpuBuffer<f32>,
    v: &GpuBuffer<f32>,
    q_roped: &mut GpuBuffer<T>,
    k_cache: &mut GpuBuffer<T>,
    v_cache: &mut GpuBuffer<T>,
) -> Result<()> {
    let HeadShape { hq, hkv, d } = at.shape;
    if d == 0 || !d.is_multiple_of(2) || at.inv_freq.len() != d / 2 {
        return Err(Error::shape(format!(
            "RoPE needs an even head size and head_size/2 frequencies; got {d} and {}",
            at.inv_freq.len()
        )));
    }
    if at.window.keys == 0 {
        return Err(Error::invalid_argument("a key-value cache needs a capacity of at least 1 token"));
    }
    let capacity = at.window.capacity();
    let stride =
        capacity.checked_add(at.slots).ok_or_else(|| Error::invalid_argument("the cache rows are too long"))?;
    let b = at.batch;
    expect_len("decode q", q.len(), b * hq * d)?;
    expect_len("decode roped q", q_roped.len(), b * hq * d)?;
    expect_len("decode k", k.len(), b * hkv * d)?;
    expect_len("decode v", v.len(), b * hkv * d)?;
    expect_len("key cache", k_cache.len(), b * hkv * stride * d)?;
    expect_len("value cache", v_cache.len(), b * hkv * stride * d)?;
    expect_len("decode positions", at.positions.len(), b)?;
    if b == 0 {
        return Ok(());
    }
    as_int("cache size", k_cache.len())?;
    let args = [
        as_int("batch", b)?,
        as_int("query heads", hq)?,
        as_int("key-value heads", hkv)?,
        as_int("head size", d)?,
        as_int("capacity", capacity)?,
        as_int("sinks", at.window.sinks)?,
        as_int("cache row", stride)?,
    ];
    let name = super::variant::<T>("decode_rope_append_f32", "decode_rope_append_bf16");
    let f = ctx.function(&DECODE, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(at.inv_freq.slice()).arg(at.positions.slice());
    launch.arg(q_roped.slice_mut()).arg(k_cache.slice_mut()).arg(v_cache.slice_mut());
    for a in &args {
        launch.arg(a);
    }
    // SAFETY: sizes checked above; slots are the sinks' or taken modulo the ring's size; one thread per rotated pair.
    ctx.check_launch(unsafe { launch.launch(elementwise(b * (hq + hkv) * d / 2)) }, name)
}

/// `o = alpha * a + beta * b` (a term left out when it is None), written as f32 (`o_f`) and as `T` (`o_t`).
pub fn decode_mix<T: GpuElement>(
    ctx: &GpuContext,
    a: Option<(&GpuBuffer<f32>, f32)>,
    b: Option<(&GpuBuffer<T>, f32)>,
    o_f: &mut GpuBuffer<f32>,
    o_t: &mut GpuBuffer<T>,
) -> Result<()> {
    let n = o_t.len();
    expect_len("mix f32 output", o_f.len(), n)?;
    if let Some((a, _)) = a {
        expect_len("mix input a", a.len(), n)?;
    }
    if let Some((b, _)) = b {
        expect_len("mix input b", b.len(), n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("decode_mix_f32", "decode_mix_bf16");
    let f = ctx.function(&DECODE, name)?;
    let (alpha, use_a) = a.map_or((0.0f32, 0i32), |(_, s)| (s, 1));
    let (beta, use_b) = b.map_or((0.0f32, 0i32), |(_, s)| (s, 1));
    let (null, n_arg) = (0u64, n as u64);
    let mut launch = ctx.stream().launch_builder(&f);
    match a {
        Some((a, _)) => launch.arg(a.slice()),
        None => launch.arg(&null),
    };
    launch.arg(&alpha).arg(&use_a);
    match b {
        Some((b, _)) => launch.arg(b.slice()),
        None => launch.arg(&null),
    };
    launch.arg(&beta).arg(&use_b).arg(o_f.slice_mut()).arg(o_t.slice_mut()).arg(&n_arg);
    // SAFETY: every buffer given holds n values; a left-out input (null) is never read.
    ctx.check_launch(unsafe { launch.launch(elementwise(n)) }, name)
}

/// Most sequences the warp-per-row products ([`decode_gemv`]) take; a larger batch goes
/// through cuBLAS, which reads each weight once for all of them on tensor cores.
pub const GEMV_MAX_BATCH: usize = 4;

/// Whether [`decode_gemv`] takes rows of `k` values of `T` (whole 16-byte loads).
pub fn gemv_fits<T: GpuElement>(k: usize) -> bool {
    k > 0 && (k * std::mem::size_of::<T>()).is_multiple_of(16)
}

fn gemv_checks<T: GpuElement>(x: &GpuBuffer<T>, batch: usize, k: usize) -> Result<()> {
    if batch == 0 || batch > GEMV_MAX_BATCH {
        return Err(Error::invalid_argument(format!(
            "the decoding products take 1 to {GEMV_MAX_BATCH} sequences, got {batch}; use gemm"
        )));
    }
    if !gemv_fits::<T>(k) {
        return Err(Error::invalid_argument(format!(
            "the decoding products take rows of whole 16-byte pieces; {k} values of {} are not",
            T::KERNEL_SUFFIX
        )));
    }
    expect_len("decode product input", x.len(), batch * k)
}

/// The kernel variant for `T` and the batch: `<base>_<suffix>_b1` or `_b4`.
fn gemv_entry<T: GpuElement>(batch: usize, names: [&'static str; 4]) -> &'static str {
    let i = if T::KERNEL_SUFFIX == "bf16" { 2 } else { 0 };
    names[i + usize::from(batch > 1)]
}

/// The launch of one warp per weight row.
fn warps_for(rows: usize) -> Result<cudarc::driver::LaunchConfig> {
    let blocks = (as_int("weight rows", rows)? as usize * 32).div_ceil(crate::launch::BLOCK as usize);
    Ok(cudarc::driver::LaunchConfig {
        grid_dim: (as_int("blocks", blocks)? as u32, 1, 1),
        block_dim: (crate::launch::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `y_i = x W_iᵀ` (or `y_i +=` when `accumulate`) for one to three weights `[n_i, k]` of one
/// input x `[batch, k]` (batch at most [`GEMV_MAX_BATCH`]), each `y_i` `[batch, n_i]`, in one launch.
pub fn decode_gemv<T: GpuElement>(
    ctx: &GpuContext,
    x: &GpuBuffer<T>,
    batch: usize,
    k: usize,
    outputs: &mut [(&GpuBuffer<T>, &mut GpuBuffer<f32>)],
    accumulate: bool,
) -> Result<()> {
    gemv_checks(x, batch, k)?;
    if outputs.is_empty() || outputs.len() > 3 {
        return Err(Error::invalid_argument(format!(
            "one decoding product takes 1 to 3 weights, got {}",
            outputs.len()
        )));
    }
    let mut rows = [0i32; 3];
    for (i, (w, y)) in outputs.iter().enumerate() {
        let n = rows_of("decode product weight", w.len(), k)?;
        expect_len("decode product output", y.len(), batch * n)?;
        rows[i] = as_int("weight rows", n)?;
    }
    let name = gemv_entry::<T>(
        batch,
        ["decode_gemv_f32_b1", "decode_gemv_f32_b4", "decode_gemv_bf16_b1", "decode_gemv_bf16_b4"],
    );
    let f = ctx.function(&DECODE, name)?;
    let (null, batch_arg, k_arg, acc) = (0u64, batch as i32, as_int("k", k)?, i32::from(accumulate));
    let total: usize = rows.iter().map(|&n| n as usize).sum();
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(x.slice());
    let given = outputs.len();
    for ((w, y), n) in outputs.iter_mut().zip(&rows) {
        launch.arg(w.slice()).arg(y.slice_mut()).arg(n);
    }
    for n in &rows[given..] {
        launch.arg(&null).arg(&null).arg(n);
    }
    launch.arg(&batch_arg).arg(&k_arg).arg(&acc);
    // SAFETY: sizes checked above; a warp per row of the weights together, past the last returns.
    ctx.check_launch(unsafe { launch.launch(warps_for(total)?) }, name)
}

/// `act = silu(x W_gateᵀ) * (x W_upᵀ)`, stored as `T`; x `[batch, k]`, weights `[n, k]`, act `[batch, n]`.
pub fn decode_gemv_swiglu<T: GpuElement>(
    ctx: &GpuContext,
    x: &GpuBuffer<T>,
    batch: usize,
    k: usize,
    w_gate: &GpuBuffer<T>,
    w_up: &GpuBuffer<T>,
    act: &mut GpuBuffer<T>,
) -> Result<()> {
    gemv_checks(x, batch, k)?;
    let n = rows_of("gate weight", w_gate.len(), k)?;
    expect_len("up weight", w_up.len(), n * k)?;
    expect_len("swiglu output", act.len(), batch * n)?;
    let name = gemv_entry::<T>(
        batch,
        [
            "decode_gemv_swiglu_f32_b1",
            "decode_gemv_swiglu_f32_b4",
            "decode_gemv_swiglu_bf16_b1",
            "decode_gemv_swiglu_bf16_b4",
        ],
    );
    let f = ctx.function(&DECODE, name)?;
    let (n_arg, batch_arg, k_arg) = (as_int("rows", n)?, batch as i32, as_int("k", k)?);
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(x.slice())
        .arg(w_gate.slice())
        .arg(w_up.slice())
        .arg(act.slice_mut())
        .arg(&n_arg)
        .arg(&batch_arg)
        .arg(&k_arg);
    // SAFETY: sizes checked above; a warp per row, past the last returns.
    ctx.check_launch(unsafe { launch.launch(warps_for(n)?) }, name)
}

/// One adapter's up projection in [`decode_lora_up`]: `y += scale · u Bᵀ`, u `[batch, rank]`,
/// B `[out, rank]`, y `[batch, out]`.
pub struct LoraUp<'a> {
    pub u: &'a GpuBuffer<f32>,
    pub b: &'a GpuBuffer<f32>,
    pub rank: usize,
    pub scale: f32,
    pub y: &'a mut GpuBuffer<f32>,
}

/// The kernel's `DecodeLoraUp` (null pointers and `out = 0` for an unused slot).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LoraUpParams {
    u: u64,
    b: u64,
    y: u64,
    rank: i32,
    out: i32,
    scale: f32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for LoraUpParams {}

/// The up projections of up to three adapters of a decoding step in one launch (their down
/// projections are a [`decode_gemv`] of the f32 input with the A matrices).
pub fn decode_lora_up(ctx: &GpuContext, batch: usize, parts: &mut [LoraUp<'_>]) -> Result<()> {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    if parts.is_empty() || parts.len() > 3 {
        return Err(Error::invalid_argument(format!(
            "one decoding LoRA launch takes 1 to 3 adapters, got {}",
            parts.len()
        )));
    }
    let mut params = [LoraUpParams::default(); 3];
    let mut total = 0;
    for (p, part) in params.iter_mut().zip(parts.iter_mut()) {
        let out = rows_of("LoRA B", part.b.len(), part.rank)?;
        expect_len("LoRA down product", part.u.len(), batch * part.rank)?;
        expect_len("LoRA output", part.y.len(), batch * out)?;
        total += batch * out;
        *p = LoraUpParams {
            u: part.u.slice().device_ptr(ctx.stream()).0,
            b: part.b.slice().device_ptr(ctx.stream()).0,
            y: part.y.slice_mut().device_ptr_mut(ctx.stream()).0,
            rank: as_int("rank", part.rank)?,
            out: as_int("LoRA outputs", out)?,
            scale: part.scale,
        };
    }
    let name = "decode_lora_up";
    let f = ctx.function(&DECODE, name)?;
    let batch_arg = as_int("batch", batch)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(&params[0]).arg(&params[1]).arg(&params[2]).arg(&batch_arg);
    // SAFETY: every used slot's buffers hold the sizes checked above; unused slots have out = 0.
    ctx.check_launch(unsafe { launch.launch(elementwise(total)) }, name)
}

/// How a Liger layer's window caches keep the surprise cache while decoding: `batch` sequences,
/// each `[B, hkv]` row of the key and value caches holding the sinks, the ring of the last
/// `window.keys` tokens, then `slots` cached tokens (`[B, hkv, row_entries(), d]`, as `T`); and
/// the scores `[B, hkv, window.keys + slots]` (f32) of the ring's tokens, then of the cached
/// ones. The slots fill in order and a free one scores -inf; with the repeat rule
/// (`repeat_tolerance` > 0, see `liger_core::liger::surprise`) the heads of a sequence can hold
/// different counts, so each step writes the entries in use of every row.
#[derive(Clone, Copy, Debug)]
pub struct SurpriseLayout {
    pub batch: usize,
    pub shape: HeadShape,
    pub window: Window,
    pub slots: usize,
    pub repeat_tolerance: f64,
}

/// The kernels' int arguments of a [`SurpriseLayout`].
struct SurpriseArgs {
    batch: i32,
    hkv: i32,
    d: i32,
    keys: i32,
    sinks: i32,
    slots: i32,
}

impl SurpriseLayout {
    /// Entries of a cache row: the sinks, the window's ring, then the slots.
    pub fn row_entries(&self) -> usize {
        self.window.capacity().saturating_add(self.slots)
    }

    /// Values of the key (or the value) cache.
    pub fn cache_len(&self) -> usize {
        self.batch * self.shape.hkv * self.row_entries() * self.shape.d
    }

    /// Values of the scores.
    pub fn scores_len(&self) -> usize {
        self.batch * self.shape.hkv * (self.window.keys + self.slots)
    }

    /// Checks the settings and the caches' sizes; returns the kernels' arguments.
    fn check<T: GpuElement>(
        &self,
        k_cache: &GpuBuffer<T>,
        v_cache: &GpuBuffer<T>,
        scores: &GpuBuffer<f32>,
    ) -> Result<SurpriseArgs> {
        if self.window.keys == 0 || self.slots == 0 {
            return Err(Error::invalid_argument(format!(
                "a surprise cache needs a window of at least 1 key and at least 1 slot, got {} and {}",
                self.window.keys, self.slots
            )));
        }
        let args = SurpriseArgs {
            batch: as_int("batch", self.batch)?,
            hkv: as_int("key-value heads", self.shape.hkv)?,
            d: as_int("head size", self.shape.d)?,
            keys: as_int("window keys", self.window.keys)?,
            sinks: as_int("sinks", self.window.sinks)?,
            slots: as_int("surprise slots", self.slots)?,
        };
        liger_core::liger::surprise::check_repeat_tolerance(self.repeat_tolerance)?;
        as_int("cache row", self.row_entries())?;
        expect_len("key cache", k_cache.len(), self.cache_len())?;
        expect_len("value cache", v_cache.len(), self.cache_len())?;
        expect_len("surprise scores", scores.len(), self.scores_len())?;
        Ok(args)
    }
}

/// Entries of a cache row in use once `tokens` tokens are in: the sinks and the ring fill
/// first, and a slot fills only as a token leaves a full window.
pub fn window_entries_in_use(tokens: usize, window: Window, slots: usize) -> usize {
    tokens.min(window.capacity().saturating_add(slots))
}

/// The token in each of the first `window.capacity()` entries of a cache row (the sinks, then
/// the ring, as [`Window::slot`] places them) once `tokens` tokens are in; -1 for an entry not
/// written yet.
pub fn window_tokens(window: Window, tokens: usize) -> Result<Vec<i32>> {
    let mut entries = vec![-1i32; window.capacity()];
    let recent = tokens.saturating_sub(window.keys).max(window.sinks);
    for pos in (0..tokens.min(window.sinks)).chain(recent..tokens) {
        entries[window.slot(pos)] = as_int("token position", pos)?;
    }
    Ok(entries)
}

/// The surprise cache's part of a decoding step (CPU twin: `SurpriseMemory`), run before the new
/// token enters the window (its entry still holds the token leaving): the new token's surprise
/// from its values `v` and the read-outs with its key as the query over the values (`n`) and
/// over values of one (`den`), all `[B, hkv, d]`; the token leaving the window offered to the
/// cache. Writes `head_lengths` `[B, hkv]`: the entries of each row the attention then reads
/// (with the new token). The positions are read on the GPU, so a captured step replays it.
#[allow(clippy::too_many_arguments)]
pub fn surprise_decode_step<T: GpuElement>(
    ctx: &GpuContext,
    at: &SurpriseLayout,
    positions: &GpuBuffer<u32>,
    n: &GpuBuffer<f32>,
    den: &GpuBuffer<f32>,
    v: &GpuBuffer<f32>,
    k_cache: &mut GpuBuffer<T>,
    v_cache: &mut GpuBuffer<T>,
    scores: &mut GpuBuffer<f32>,
    head_lengths: &mut GpuBuffer<u32>,
) -> Result<()> {
    let args = at.check(k_cache, v_cache, scores)?;
    let rows = at.batch * at.shape.hkv;
    for (what, buf) in [("surprise read-out", n), ("surprise normaliser", den), ("surprise values", v)] {
        expect_len(what, buf.len(), rows * at.shape.d)?;
    }
    expect_len("decode positions", positions.len(), at.batch)?;
    expect_len("surprise cache lengths", head_lengths.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let name = super::variant::<T>("surprise_decode_step_f32", "surprise_decode_step_bf16");
    let f = ctx.function(&DECODE, name)?;
    let eps = liger_core::liger::surprise::SCORE_EPS;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(n.slice()).arg(den.slice()).arg(v.slice()).arg(positions.slice());
    launch.arg(&args.batch).arg(&args.hkv).arg(&args.d).arg(&args.keys).arg(&args.sinks).arg(&args.slots).arg(&eps);
    launch.arg(&at.repeat_tolerance);
    launch.arg(k_cache.slice_mut()).arg(v_cache.slice_mut()).arg(scores.slice_mut()).arg(head_lengths.slice_mut());
    // SAFETY: sizes checked above; entries are the ring's (modulo its size) or the slots'; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row(rows)) }, name)
}

/// After a prefill of `tokens` tokens per sequence from the first: fills the caches as the steps
/// would have left them, from the roped keys `k_new` and the values `v_new` `[B, tokens, hkv, d]`
/// (the window's tokens), the cache's contents after the last token (the last query's entries
/// of `kept` `[B, tokens, hkv, slots]`, from `surprise_select`), and the tokens' surprise
/// `token_scores` `[B * tokens, hkv]`; a free slot scores -inf.
#[allow(clippy::too_many_arguments)]
pub fn surprise_cache_fill<T: GpuElement>(
    ctx: &GpuContext,
    at: &SurpriseLayout,
    tokens: usize,
    k_new: &GpuBuffer<T>,
    v_new: &GpuBuffer<T>,
    token_scores: &GpuBuffer<f32>,
    kept: &GpuBuffer<i32>,
    k_cache: &mut GpuBuffer<T>,
    v_cache: &mut GpuBuffer<T>,
    scores: &mut GpuBuffer<f32>,
) -> Result<()> {
    let args = at.check(k_cache, v_cache, scores)?;
    let rows = at.batch * tokens * at.shape.hkv;
    expect_len("prefill keys", k_new.len(), rows * at.shape.d)?;
    expect_len("prefill values", v_new.len(), rows * at.shape.d)?;
    expect_len("prefill surprise", token_scores.len(), rows)?;
    expect_len("surprise cache choice", kept.len(), rows * at.slots)?;
    if rows == 0 {
        return Ok(());
    }
    let tokens_arg = as_int("tokens", tokens)?;
    as_int("prefill values", rows * at.shape.d)?;
    let entries = GpuBuffer::from_host(ctx, &window_tokens(at.window, tokens)?)?;
    let name = super::variant::<T>("surprise_cache_fill_f32", "surprise_cache_fill_bf16");
    let f = ctx.function(&DECODE, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(k_new.slice()).arg(v_new.slice()).arg(token_scores.slice()).arg(kept.slice()).arg(entries.slice());
    launch
        .arg(&args.batch)
        .arg(&tokens_arg)
        .arg(&args.hkv)
        .arg(&args.d)
        .arg(&args.keys)
        .arg(&args.sinks)
        .arg(&args.slots);
    launch.arg(k_cache.slice_mut()).arg(v_cache.slice_mut()).arg(scores.slice_mut());
    // SAFETY: sizes checked above; every token index read is below `tokens` (window_tokens, and
    // surprise_select's choice); a grid-stride loop over the caches.
    ctx.check_launch(unsafe { launch.launch(elementwise(at.cache_len())) }, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::liger::surprise::surprise_kept;

    /// The window's entries after a prefill hold what writing every token at its slot leaves.
    #[test]
    fn window_tokens_are_the_last_written_at_each_entry() {
        for (keys, sinks) in [(1, 0), (3, 0), (4, 2), (8, 1), (5, 7)] {
            let window = Window { keys, sinks };
            for tokens in 0..30 {
                let mut written = vec![-1i32; window.capacity()];
                for pos in 0..tokens {
                    written[window.slot(pos)] = pos as i32;
                }
                assert_eq!(
                    window_tokens(window, tokens).unwrap(),
                    written,
                    "keys {keys} sinks {sinks} tokens {tokens}"
                );
            }
        }
    }

    /// The entries a step attends are as many as the keys the CPU rule lets its query see: the
    /// sinks, the cached tokens and the window's recent part.
    #[test]
    fn entries_in_use_count_the_keys_the_cpu_rule_shows_each_query() {
        let (hkv, tokens) = (2, 40);
        // Scores that rise and fall, so that the cache both fills and evicts.
        let scores: Vec<f32> = (0..tokens * hkv).map(|i| ((i * 7919) % 23) as f32).collect();
        for (keys, sinks, slots) in [(8, 1, 4), (3, 0, 1), (5, 2, 9), (4, 6, 2)] {
            let window = Window { keys, sinks };
            let kept = surprise_kept(hkv, window, slots, &scores);
            for i in 0..tokens {
                for kvh in 0..hkv {
                    let cached = kept[(i * hkv + kvh) * slots..(i * hkv + kvh + 1) * slots].iter().filter(|&&j| j >= 0);
                    let recent = (i + 1).saturating_sub(window.first_recent(i).max(sinks));
                    let seen = (i + 1).min(sinks) + cached.count() + recent;
                    assert_eq!(window_entries_in_use(i + 1, window, slots), seen, "{window:?} slots {slots} query {i}");
                }
            }
        }
    }
}
