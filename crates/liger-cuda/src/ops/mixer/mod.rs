//! The Liger mixers on the GPU: gated linear attention in every gate variant
//! (`kernels/gla_scan.cu`, `gla_scan.rs`), forward over whole sequences (training, prefill),
//! single decoding steps, and backward. Gated slot attention runs its two slot memories on the
//! same scans (`gsa.rs`, `kernels/gsa.cu`).
//! CPU twins: `liger_core::liger::{chunk_forward, recurrent_step, chunk_backward}`.
//!
//! The raw projections go in; feature maps and gates are applied inside (per `cfg.kind`). The
//! recurrence runs as a scan: one CTA per (sequence, key-value head, 32 state columns) keeps its
//! fp32 slice of the state in registers from the first token to the last, reading tokens in
//! tiles through shared memory. The query heads of a GQA group share the CTA and its state.
//! When sequences and heads are too few to fill the GPU, each sequence is also cut into time
//! segments scanned in parallel and joined by a carry of their states (`segments.rs`);
//! `gla_scan.rs` holds the scan kernel's launches.
//! `TimeSegments::Chunked` runs bf16 inputs with head sizes 64 and 128 in chunked form on
//! tensor cores instead (`gla_chunk.rs`), from the same feature maps to the same outputs.
//!
//! The backward needs three more scans (from a zero initial state):
//! - `dqf_t = do_t S_t^T`: forward in time, state transposed (decay along its columns);
//! - the state gradient `dS_t = a_{t+1} dS_{t+1} + sum_h qf_{h,t}^T do_{h,t}`, backward in time,
//!   read out as `dv_t = kf_t dS_t` (rows = key dims) and as `dkf_t = v_t dS_t^T` (transposed);
//! - then the log-gate gradient `dg_t = sum_{s>=t} (qf_s . dqf_s - kf_s . dkf_s)` per key dim
//!   (in pieces of 64 tokens, parallel over time) and the feature-map backward of q and k.
//!
//! The f32 intermediates (feature maps, backward scan outputs) live in the context's scratch
//! memory, kept between calls, so a repeated call allocates nothing. A decoding step applies the
//! feature maps inside the scan CTA and uses no scratch at all (it can be graph-captured).

mod gla_chunk;
mod gla_scan;
mod gsa;
mod segments;

pub use gla_chunk::mixer_uses_chunked;
pub use segments::TimeSegments;

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::GLA_SCAN;
use crate::launch::{elementwise, expect_len, warp_per_row, BLOCK};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use gla_scan::{int, launch_scans, padded_rows, ptr, ptr_mut, Scan, ScanJob, ScanOperands};
use liger_core::liger::{HeadShape, LigerAttentionConfig, MixerConfig, MixerKind};
use liger_core::{Error, Result};
use segments::SegmentRegions;

/// Largest head size the kernels take (a warp holds a row in 4 values per lane).
pub const MAX_HEAD_DIM: usize = 128;
/// Tokens per piece of the log-gate gradient's reverse cumulative sum (kernel GATE_PIECE).
const GATE_PIECE: usize = 64;

/// Batch of sequences, each `tokens` long, heads per `shape` (one state per KV head under GQA).
#[derive(Clone, Copy, Debug)]
pub struct MixerDims {
    pub batch: usize,
    pub tokens: usize,
    pub shape: HeadShape,
}

impl MixerDims {
    /// Values of q (and o, d_o): `[B, T, hq, d]`.
    fn q_len(&self) -> usize {
        self.batch * self.tokens * self.shape.hq * self.shape.d
    }
    /// Values of k and v: `[B, T, hkv, d]`.
    fn kv_len(&self) -> usize {
        self.batch * self.tokens * self.shape.hkv * self.shape.d
    }
}

/// f32 values per sequence of the state (`hkv * per-head state`), as the CPU MixerState holds it.
pub fn mixer_state_len(cfg: &MixerConfig, shape: HeadShape) -> usize {
    let per_head = match cfg.kind {
        MixerKind::Gsa => 2 * shape.d * cfg.gsa_slots,
        _ => shape.d * shape.d,
    };
    shape.hkv * per_head
}

/// The kernels' code for a mixer kind (`KIND_*` in the kernel file); a mixer without GPU
/// kernels is a typed error that says to use the CPU engine.
fn kind_code(kind: MixerKind) -> Result<i32> {
    match kind {
        MixerKind::Gla => Ok(0),
        MixerKind::Hgrn2 => Ok(1),
        MixerKind::Retention => Ok(2),
        MixerKind::Mamba2 => Ok(3),
        MixerKind::Rwkv6 => Ok(4),
        MixerKind::Linear => Ok(5),
        // Not a code of the gated kernels: gsa runs on its own (gsa.rs).
        MixerKind::Gsa => Ok(6),
        MixerKind::Gdn => Err(Error::invalid_argument(
            "GPU kernels for the gdn mixer are not built yet: use the CPU engine for this model",
        )),
    }
}

/// Refuses, before any work, a mixer that has no GPU kernels.
pub fn check_gpu_mixer(cfg: &MixerConfig) -> Result<()> {
    kind_code(cfg.kind).map(|_| ())
}

/// Refuses, before any work, Liger attention settings the GPU cannot run: a mixer without
/// kernels, or a repeat tolerance out of range.
pub fn check_gpu_attention(cfg: &LigerAttentionConfig) -> Result<()> {
    check_gpu_mixer(&cfg.mixer)?;
    liger_core::liger::surprise::check_repeat_tolerance(cfg.surprise_repeat_tolerance)
}

/// Checks the settings and head size; returns the kind code and the gate scale.
fn check_config(cfg: &MixerConfig, shape: HeadShape) -> Result<(i32, f32)> {
    cfg.validate(shape.d)?;
    let code = kind_code(cfg.kind)?;
    HeadShape::new(shape.hq, shape.hkv, shape.d)?;
    if shape.d > MAX_HEAD_DIM {
        return Err(Error::invalid_argument(format!(
            "the GPU mixer kernels take head sizes up to {MAX_HEAD_DIM}, got {}: use the CPU backend for this model",
            shape.d
        )));
    }
    let scale = if cfg.kind == MixerKind::Gla { 1.0 / cfg.gate_normalizer } else { 1.0 };
    Ok((code, scale))
}

/// Offsets of f32 regions in the context's scratch memory (`GpuContext::with_scratch`), each
/// region 256-byte aligned so that the kernels' 16-byte copies stay aligned.
#[derive(Default)]
struct ScratchPlan {
    floats: usize,
}

impl ScratchPlan {
    /// Reserves `len` floats; returns their offset.
    fn take(&mut self, len: usize) -> usize {
        let at = self.floats;
        self.floats += len.next_multiple_of(64);
        at
    }
}

/// Address of the f32 region at `offset` of the scratch memory at `base`.
fn region(base: u64, offset: usize) -> u64 {
    base + 4 * offset as u64
}

/// Feature maps of a batch in f32: device addresses of qf, kf, the decay and vf.
struct Features {
    qf: u64,
    kf: u64,
    decay: u64,
    vf: u64,
}

/// Where the feature maps go in the scratch memory.
struct FeatureRegions {
    qf: usize,
    kf: usize,
    decay: usize,
    vf: usize,
}

impl FeatureRegions {
    fn plan(plan: &mut ScratchPlan, dims: MixerDims) -> Self {
        FeatureRegions {
            qf: plan.take(dims.q_len()),
            kf: plan.take(dims.kv_len()),
            decay: plan.take(dims.kv_len()),
            vf: plan.take(dims.kv_len()),
        }
    }
}

/// Writes the feature maps into their scratch regions (every value).
#[allow(clippy::too_many_arguments)]
fn features<T: GpuElement>(
    ctx: &GpuContext,
    dims: MixerDims,
    kind: i32,
    scale: f32,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    base: u64,
    at: &FeatureRegions,
) -> Result<Features> {
    let f = Features {
        qf: region(base, at.qf),
        kf: region(base, at.kf),
        decay: region(base, at.decay),
        vf: region(base, at.vf),
    };
    let q_rows = (dims.q_len() / dims.shape.d) as i64;
    let kv_rows = (dims.kv_len() / dims.shape.d) as i64;
    let name = if T::KERNEL_SUFFIX == "bf16" { "mixer_features_bf16" } else { "mixer_features_f32" };
    let func = ctx.function(&GLA_SCAN, name)?;
    let d = int("d", dims.shape.d)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(q.slice()).arg(k.slice()).arg(v.slice());
    launch.arg(&f.qf).arg(&f.kf).arg(&f.decay).arg(&f.vf);
    launch.arg(&q_rows).arg(&kv_rows).arg(&d).arg(&kind).arg(&scale);
    // SAFETY: q and qf hold q_rows rows of d, the others kv_rows rows; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row((q_rows + kv_rows) as usize)) }, name)?;
    Ok(f)
}

fn check_inputs<T: GpuElement>(dims: MixerDims, q: &GpuBuffer<T>, k: &GpuBuffer<T>, v: &GpuBuffer<T>) -> Result<()> {
    expect_len("q", q.len(), dims.q_len())?;
    expect_len("k", k.len(), dims.kv_len())?;
    expect_len("v", v.len(), dims.kv_len())
}

/// q `[B, T, hq, d]`, k and v `[B, T, hkv, d]`: the RAW projections (feature maps and gate are
/// applied inside, per `cfg.kind`, fused). Writes o `[B, T, hq, d]`. `initial`/`final_state`:
/// `[B, hkv, state_len]` fp32 (the CPU `MixerState` layout per sequence), zeros when None.
#[allow(clippy::too_many_arguments)]
pub fn mixer_chunk_forward<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &mut GpuBuffer<T>,
    initial: Option<&GpuBuffer<f32>>,
    final_state: Option<&mut GpuBuffer<f32>>,
) -> Result<()> {
    mixer_chunk_forward_in_segments(ctx, cfg, dims, q, k, v, o, initial, final_state, TimeSegments::Auto)
}

/// [`mixer_chunk_forward`] with the sequences cut into `segments` over time (see
/// [`TimeSegments`]); every choice gives the same results up to float rounding.
#[allow(clippy::too_many_arguments)]
pub fn mixer_chunk_forward_in_segments<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &mut GpuBuffer<T>,
    initial: Option<&GpuBuffer<f32>>,
    final_state: Option<&mut GpuBuffer<f32>>,
    segments: TimeSegments,
) -> Result<()> {
    let (kind, scale) = check_config(cfg, dims.shape)?;
    check_inputs(dims, q, k, v)?;
    expect_len("o", o.len(), dims.q_len())?;
    let state_len = dims.batch * mixer_state_len(cfg, dims.shape);
    if let Some(s) = initial {
        expect_len("initial state", s.len(), state_len)?;
    }
    if let Some(s) = final_state.as_deref() {
        expect_len("final state", s.len(), state_len)?;
    }
    if dims.batch == 0 {
        return Ok(());
    }
    if cfg.kind == MixerKind::Gsa {
        return gsa::forward(ctx, cfg, dims, [q, k, v], o, initial, final_state, segments);
    }
    if dims.tokens > 0 && mixer_uses_chunked::<T>(cfg.kind, dims.shape.d, segments) {
        let (initial, final_state) = (initial.map_or(0, |s| ptr(ctx, s)), final_state.map_or(0, |s| ptr_mut(ctx, s)));
        return gla_chunk::forward(ctx, dims, kind, scale, q, k, v, o, initial, final_state);
    }
    let (bf16, group) = (T::KERNEL_SUFFIX == "bf16", dims.shape.group());
    let schedule = forward_schedule(ctx, dims, bf16, segments)?;
    let mut plan = ScratchPlan::default();
    let regions = FeatureRegions::plan(&mut plan, dims);
    let segment_regions = SegmentRegions::plan(&mut plan, dims, &schedule, 1);
    let out = ptr_mut(ctx, o);
    let initial = initial.map_or(0, |s| ptr(ctx, s));
    let final_state = final_state.map_or(0, |s| ptr_mut(ctx, s));
    ctx.with_scratch(plan.floats, |base| {
        let f = features(ctx, dims, kind, scale, q, k, v, base, &regions)?;
        let ops = ScanOperands {
            x: f.kf,
            y: f.vf,
            w: f.qf,
            decay: f.decay,
            out,
            initial,
            final_state,
            kind,
            gate_scale: scale,
        };
        let job = ScanJob::new(ctx, Scan::Forward, bf16, dims, ops, 1, group)?;
        segments::run(ctx, dims, &[job], job.entry(), &schedule, &segment_regions, base)
    })
}

/// One decoding step for B sequences: q_t `[B, hq, d]`, k_t/v_t `[B, hkv, d]`, state `[B, hkv, state_len]` advanced in place.
#[allow(clippy::too_many_arguments)]
pub fn mixer_recurrent_step<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    batch: usize,
    shape: HeadShape,
    state: &mut GpuBuffer<f32>,
    q_t: &GpuBuffer<T>,
    k_t: &GpuBuffer<T>,
    v_t: &GpuBuffer<T>,
    o_t: &mut GpuBuffer<T>,
) -> Result<()> {
    let dims = MixerDims { batch, tokens: 1, shape };
    let (kind, scale) = check_config(cfg, shape)?;
    check_inputs(dims, q_t, k_t, v_t)?;
    expect_len("o_t", o_t.len(), dims.q_len())?;
    expect_len("state", state.len(), batch * mixer_state_len(cfg, shape))?;
    if batch == 0 {
        return Ok(());
    }
    if cfg.kind == MixerKind::Gsa {
        return gsa::step(ctx, cfg, batch, shape, state, [q_t, k_t, v_t], o_t);
    }
    step_scan(ctx, (kind, scale), dims, state, [q_t, k_t, v_t], o_t, true)
}

/// A decoding step's read-out with each key as the query of its own key-value head:
/// `out = phi(k_t) S_t` `[B, hkv, d]`, where `S_t` is `state` advanced by k_t, v_t `[B, hkv, d]`
/// (the surprise score's read-out: every query head of a group would read the same). `state`
/// itself advances only with `advance`.
#[allow(clippy::too_many_arguments)]
pub fn mixer_step_keys_as_queries<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    batch: usize,
    shape: HeadShape,
    state: &mut GpuBuffer<f32>,
    k_t: &GpuBuffer<T>,
    v_t: &GpuBuffer<T>,
    out: &mut GpuBuffer<T>,
    advance: bool,
) -> Result<()> {
    if cfg.kind == MixerKind::Gsa {
        return Err(Error::invalid_argument(
            "gsa has no read-out with the keys as queries: its slot memory cannot score a surprise cache",
        ));
    }
    let config = check_config(cfg, shape)?;
    // One query per key-value head: the same state, read out by the key.
    let own_heads = HeadShape { hq: shape.hkv, ..shape };
    let dims = MixerDims { batch, tokens: 1, shape: own_heads };
    check_inputs(dims, k_t, k_t, v_t)?;
    expect_len("key read-out", out.len(), dims.q_len())?;
    expect_len("state", state.len(), batch * mixer_state_len(cfg, shape))?;
    if batch == 0 {
        return Ok(());
    }
    step_scan(ctx, config, dims, state, [k_t, k_t, v_t], out, advance)
}

/// One step of the gated scan (sizes checked by the caller): reads `state`, writes the read-out
/// of `q` after the step to `o`, and the advanced state back in place with `advance`. The
/// feature maps are applied inside the scan CTA: nothing is allocated, so the step can be
/// captured in a CUDA graph. In place, each thread reads its state values first and writes the
/// same ones last.
fn step_scan<T: GpuElement>(
    ctx: &GpuContext,
    (kind, scale): (i32, f32),
    dims: MixerDims,
    state: &mut GpuBuffer<f32>,
    [q, k, v]: [&GpuBuffer<T>; 3],
    o: &mut GpuBuffer<T>,
    advance: bool,
) -> Result<()> {
    let s = ptr_mut(ctx, state);
    let ops = ScanOperands {
        x: ptr(ctx, k),
        y: ptr(ctx, v),
        w: ptr(ctx, q),
        decay: 0,
        out: ptr_mut(ctx, o),
        initial: s,
        final_state: if advance { s } else { 0 },
        kind,
        gate_scale: scale,
    };
    let job = ScanJob::new(ctx, Scan::Step, T::KERNEL_SUFFIX == "bf16", dims, ops, 1, dims.shape.group())?;
    launch_scans(ctx, job.entry(), dims, &[job])
}

/// Gradients of sum(d_o * o) w.r.t. the raw q, k, v (gate and feature-map paths included), zero initial state.
#[allow(clippy::too_many_arguments)]
pub fn mixer_chunk_backward<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    d_o: &GpuBuffer<T>,
    dq: &mut GpuBuffer<T>,
    dk: &mut GpuBuffer<T>,
    dv: &mut GpuBuffer<T>,
) -> Result<()> {
    mixer_chunk_backward_in_segments(ctx, cfg, dims, q, k, v, d_o, dq, dk, dv, TimeSegments::Auto)
}

/// The forward scan's plan. Plans depend on the shapes alone: they are made with null
/// operands, before the scratch memory is sized.
fn forward_schedule(
    ctx: &GpuContext,
    dims: MixerDims,
    bf16: bool,
    segments: TimeSegments,
) -> Result<segments::Schedule> {
    let probe = ScanJob::new(ctx, Scan::Forward, bf16, dims, ScanOperands::default(), 1, dims.shape.group())?;
    segments::schedule(ctx, dims, &[probe], None, segments)
}

/// The kernel that runs the backward's three scans side by side.
fn backward_side_by_side(dims: MixerDims) -> &'static str {
    if padded_rows(dims.shape.d) == 64 {
        "mixer_scan_backward_d64"
    } else {
        "mixer_scan_backward_d128"
    }
}

fn backward_schedule(
    ctx: &GpuContext,
    dims: MixerDims,
    kind: i32,
    scale: f32,
    segments: TimeSegments,
) -> Result<segments::Schedule> {
    let probes = backward_jobs(ctx, dims, &Features { qf: 0, kf: 0, decay: 0, vf: 0 }, 0, [0; 3], kind, scale)?;
    segments::schedule(ctx, dims, &probes, Some(backward_side_by_side(dims)), segments)
}

/// How the automatic plan runs a batch's scans (for benchmarks and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlanSummary {
    /// Time segments per sequence of the forward scan.
    pub forward_segments: usize,
    /// Time segments per sequence of the backward's scans.
    pub backward_segments: usize,
    /// Whether the backward's three scans run side by side in one launch.
    pub backward_side_by_side: bool,
}

/// The plan [`TimeSegments::Auto`] makes for `dims` with elements `T`.
pub fn mixer_segment_plan<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
) -> Result<SegmentPlanSummary> {
    let (kind, scale) = check_config(cfg, dims.shape)?;
    let forward = forward_schedule(ctx, dims, T::KERNEL_SUFFIX == "bf16", TimeSegments::Auto)?;
    let backward = backward_schedule(ctx, dims, kind, scale, TimeSegments::Auto)?;
    Ok(SegmentPlanSummary {
        forward_segments: forward.plan.count,
        backward_segments: backward.plan.count,
        backward_side_by_side: backward.side_by_side,
    })
}

/// The backward's three scans: dqf forward in time, dvf and dkf backward (see the module notes).
/// `feat` holds the feature maps, `d_o` the output gradient in f32, `outs` dqf, dvf and dkf.
fn backward_jobs(
    ctx: &GpuContext,
    dims: MixerDims,
    feat: &Features,
    d_o: u64,
    outs: [u64; 3],
    kind: i32,
    scale: f32,
) -> Result<[ScanJob; 3]> {
    let group = dims.shape.group();
    let job = |scan, x, y, w, out, x_n, w_n| {
        let ops = ScanOperands { x, y, w, decay: feat.decay, out, initial: 0, final_state: 0, kind, gate_scale: scale };
        ScanJob::new(ctx, scan, false, dims, ops, x_n, w_n)
    };
    Ok([
        // dqf_t = do_t S_t^T: the state transposed (rows = value dims), read out by do.
        job(Scan::ColsForward, feat.vf, feat.kf, d_o, outs[0], 1, group)?,
        // dv_t = kf_t dS_t, dS built backward from qf^T do.
        job(Scan::RowsReverse, feat.qf, d_o, feat.kf, outs[1], group, 1)?,
        // dkf_t = v_t dS_t^T, the same state gradient transposed.
        job(Scan::ColsReverse, d_o, feat.qf, feat.vf, outs[2], group, 1)?,
    ])
}

/// [`mixer_chunk_backward`] with the sequences cut into `segments` over time (see
/// [`TimeSegments`]); every choice gives the same results up to float rounding.
#[allow(clippy::too_many_arguments)]
pub fn mixer_chunk_backward_in_segments<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    d_o: &GpuBuffer<T>,
    dq: &mut GpuBuffer<T>,
    dk: &mut GpuBuffer<T>,
    dv: &mut GpuBuffer<T>,
    segments: TimeSegments,
) -> Result<()> {
    let (kind, scale) = check_config(cfg, dims.shape)?;
    check_inputs(dims, q, k, v)?;
    expect_len("d_o", d_o.len(), dims.q_len())?;
    expect_len("dq", dq.len(), dims.q_len())?;
    expect_len("dk", dk.len(), dims.kv_len())?;
    expect_len("dv", dv.len(), dims.kv_len())?;
    if dims.batch == 0 || dims.tokens == 0 {
        return Ok(());
    }
    if cfg.kind == MixerKind::Gsa {
        return gsa::backward(ctx, cfg, dims, [q, k, v, d_o], [dq, dk, dv], segments);
    }
    let bf16 = T::KERNEL_SUFFIX == "bf16";
    let pieces = dims.tokens.div_ceil(GATE_PIECE);
    let side_by_side = backward_side_by_side(dims);
    // Plans depend on the shapes alone, so the scan's is made before the scratch is sized.
    let schedule = if mixer_uses_chunked::<T>(cfg.kind, dims.shape.d, segments) {
        None
    } else {
        Some(backward_schedule(ctx, dims, kind, scale, segments)?)
    };
    let mut plan = ScratchPlan::default();
    let regions = FeatureRegions::plan(&mut plan, dims);
    let dof_at = bf16.then(|| plan.take(dims.q_len()));
    let (dqf_at, dkf_at, dvf_at, dg_at) =
        (plan.take(dims.q_len()), plan.take(dims.kv_len()), plan.take(dims.kv_len()), plan.take(dims.kv_len()));
    let carry_at = plan.take(dims.batch * pieces * dims.shape.hkv * dims.shape.d);
    let path = match schedule {
        Some(schedule) => {
            let regions = SegmentRegions::plan(&mut plan, dims, &schedule, 3);
            BackwardPath::Scans(schedule, regions)
        }
        None => BackwardPath::Chunked(gla_chunk::StateRegions::plan(&mut plan, dims, true)),
    };
    let (dq, dk, dv) = (ptr_mut(ctx, dq), ptr_mut(ctx, dk), ptr_mut(ctx, dv));
    ctx.with_scratch(plan.floats, |base| {
        let f = features(ctx, dims, kind, scale, q, k, v, base, &regions)?;
        let do_ptr = match dof_at {
            Some(at) => to_f32(ctx, d_o, region(base, at))?,
            None => ptr(ctx, d_o),
        };
        let (dqf, dkf, dvf, dg, carry) = (
            region(base, dqf_at),
            region(base, dkf_at),
            region(base, dvf_at),
            region(base, dg_at),
            region(base, carry_at),
        );
        match &path {
            BackwardPath::Scans(schedule, regions) => {
                let jobs = backward_jobs(ctx, dims, &f, do_ptr, [dqf, dvf, dkf], kind, scale)?;
                segments::run(ctx, dims, &jobs, side_by_side, schedule, regions, base)?;
            }
            BackwardPath::Chunked(regions) => {
                gla_chunk::backward(ctx, dims, &f, do_ptr, [dqf, dkf, dvf], base, regions)?
            }
        }

        gate_gradient(ctx, dims, [f.qf, dqf, f.kf, dkf], dg, carry)?;
        let (tokens, hkv, d) = (int("tokens", dims.tokens)?, int("hkv", dims.shape.hkv)?, int("d", dims.shape.d)?);

        let q_rows = (dims.q_len() / dims.shape.d) as i64;
        let kv_rows = (dims.kv_len() / dims.shape.d) as i64;
        let name = if bf16 { "mixer_features_backward_bf16" } else { "mixer_features_backward_f32" };
        let func = ctx.function(&GLA_SCAN, name)?;
        let mut launch = ctx.stream().launch_builder(&func);
        launch.arg(k.slice()).arg(&f.qf).arg(&dqf).arg(&f.kf).arg(&dkf).arg(&dg).arg(&carry).arg(&dvf);
        launch.arg(&dq).arg(&dk).arg(&dv);
        launch.arg(&q_rows).arg(&kv_rows).arg(&tokens).arg(&hkv).arg(&d).arg(&kind).arg(&scale);
        // SAFETY: q-shaped buffers hold q_rows rows of d, the others kv_rows; one warp per row.
        ctx.check_launch(unsafe { launch.launch(warp_per_row((q_rows + kv_rows) as usize)) }, name)
    })
}

/// How the backward computes dqf, dkf and dvf: the three scans under a segment plan (with
/// their scratch regions), or the chunked kernels (with theirs).
enum BackwardPath {
    Scans(segments::Schedule, SegmentRegions),
    Chunked(gla_chunk::StateRegions),
}

/// The log-gate gradient `dg_t = sum_{s >= t} (sum_h qf_s . dqf_s - kf_s . dkf_s)` per key dim,
/// `operands` = [qf, dqf, kf, dkf]: within each piece of GATE_PIECE tokens into `dg`, and the
/// sum over the later pieces into `carry` (`[B, pieces, hkv, d]`), to be added by the caller.
fn gate_gradient(ctx: &GpuContext, dims: MixerDims, operands: [u64; 4], dg: u64, carry: u64) -> Result<()> {
    let pieces = dims.tokens.div_ceil(GATE_PIECE);
    let (batch, tokens, hkv, group, d) = (
        int("batch", dims.batch)?,
        int("tokens", dims.tokens)?,
        int("hkv", dims.shape.hkv)?,
        int("group", dims.shape.group())?,
        int("d", dims.shape.d)?,
    );
    let [qf, dqf, kf, dkf] = operands;
    let name = "mixer_gate_grad_pieces_f32";
    let func = ctx.function(&GLA_SCAN, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(&qf).arg(&dqf).arg(&kf).arg(&dkf).arg(&dg).arg(&carry);
    launch.arg(&batch).arg(&tokens).arg(&hkv).arg(&group).arg(&d);
    // SAFETY: one thread per (sequence, piece, kv head, key dim); the regions hold the batch's tensors.
    ctx.check_launch(unsafe { launch.launch(threads(dims.batch * pieces * dims.shape.hkv * dims.shape.d)) }, name)?;
    let name = "mixer_gate_grad_carry_f32";
    let func = ctx.function(&GLA_SCAN, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(&carry).arg(&batch).arg(&tokens).arg(&hkv).arg(&d);
    // SAFETY: one thread per (sequence, kv head, key dim), walking the pieces.
    ctx.check_launch(unsafe { launch.launch(threads(dims.batch * dims.shape.hkv * dims.shape.d)) }, name)
}

/// One thread per item, in blocks of BLOCK.
fn threads(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Writes `x` (bf16) as f32 to `out`; returns `out`.
fn to_f32<T: GpuElement>(ctx: &GpuContext, x: &GpuBuffer<T>, out: u64) -> Result<u64> {
    let n = x.len() as i64;
    let name = "mixer_to_f32_bf16";
    let func = ctx.function(&GLA_SCAN, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(x.slice()).arg(&out).arg(&n);
    // SAFETY: x and out hold n values; grid-stride loop.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len())) }, name)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    fn shape(hq: usize, hkv: usize, d: usize) -> HeadShape {
        HeadShape::new(hq, hkv, d).unwrap()
    }

    #[test]
    fn state_len_matches_the_cpu_state() {
        for kind in MixerKind::ALL {
            let cfg = MixerConfig::new(kind);
            let s = shape(4, 2, 64);
            let cpu = liger_core::liger::MixerState::zeros(&cfg, s);
            assert_eq!(mixer_state_len(&cfg, s), cpu.data.len(), "{kind:?}");
        }
    }

    #[test]
    fn unsupported_settings_are_typed_errors() {
        let err = check_config(&MixerConfig::new(MixerKind::Gdn), shape(4, 2, 64)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("gdn") && err.message.contains("CPU engine"), "{}", err.message);
        assert!(check_gpu_mixer(&MixerConfig::new(MixerKind::Gsa)).is_ok());
        assert!(check_config(&MixerConfig::new(MixerKind::Gsa), shape(4, 2, 64)).is_ok());
        let err = check_config(&MixerConfig::default(), shape(2, 1, 256)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("up to 128"), "{}", err.message);
        let bad = MixerConfig { gate_normalizer: 0.0, ..Default::default() };
        assert_eq!(check_config(&bad, shape(2, 1, 64)).unwrap_err().code, ErrorCode::InvalidArgument);
        // A head shape built by hand that skips HeadShape::new's checks.
        let odd = HeadShape { hq: 3, hkv: 2, d: 64 };
        assert_eq!(check_config(&MixerConfig::default(), odd).unwrap_err().code, ErrorCode::InvalidArgument);
        let (_, scale) = check_config(&MixerConfig::default(), shape(4, 2, 64)).unwrap();
        assert_eq!(scale, 1.0 / liger_core::liger::DEFAULT_GATE_NORMALIZER);
        let cached = LigerAttentionConfig { surprise_keys: 8, ..Default::default() };
        assert!(check_gpu_attention(&cached).is_ok());
        let repeats = LigerAttentionConfig { surprise_repeat_tolerance: 0.05, ..cached };
        assert!(check_gpu_attention(&repeats).is_ok());
        let too_loose = LigerAttentionConfig { surprise_repeat_tolerance: 2.0, ..cached };
        let err = check_gpu_attention(&too_loose).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("surprise_repeat_tolerance"), "{}", err.message);
    }
}
