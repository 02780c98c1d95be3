//! The gated recurrent mixers on the GPU (`kernels/mixer_gated.cu`): every Liger mixer but GSA,
//! forward over whole sequences (training, prefill), single decoding steps, and backward.
//! CPU twins: `liger_core::liger::{chunk_forward, recurrent_step, chunk_backward}`.
//!
//! The raw projections go in; feature maps and gates are applied inside (per `cfg.kind`). The
//! recurrence runs as a scan: one CTA per (sequence, key-value head, 32 state columns) keeps its
//! fp32 slice of the state in registers from the first token to the last, reading tokens in
//! tiles through shared memory. The query heads of a GQA group share the CTA and its state.
//!
//! The backward needs three more scans (from a zero initial state):
//! - `dqf_t = do_t S_t^T`: forward in time, state transposed (decay along its columns);
//! - the state gradient `dS_t = a_{t+1} dS_{t+1} + sum_h qf_{h,t}^T do_{h,t}`, backward in time,
//!   read out as `dv_t = kf_t dS_t` (rows = key dims) and as `dkf_t = v_t dS_t^T` (transposed);
//! - then the log-gate gradient `dg_t = sum_{s>=t} (qf_s . dqf_s - kf_s . dkf_s)` per key dim
//!   and the feature-map backward of q and k.

use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::error::driver_error;
use crate::kernels::MIXER_GATED;
use crate::launch::{elementwise, expect_len, warp_per_row, BLOCK};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use liger_core::liger::{HeadShape, MixerConfig, MixerKind};
use liger_core::{Error, Result};

/// Largest head size the kernels take (a warp holds a row in 4 values per lane).
pub const MAX_HEAD_DIM: usize = 128;
/// Warps of a scan CTA (kernel constant SCAN_WARPS); each holds a band of the state rows.
const SCAN_WARPS: usize = 4;
/// State columns per scan CTA (one per lane).
const SCAN_COLS: usize = 32;
/// Shared memory a scan CTA may use: 96 KB on compute capability 8.0 and newer (two CTAs fit
/// an SM), else the 48 KB every GPU gives without opting in.
fn scan_shared_bytes(compute_capability: (i32, i32)) -> usize {
    if compute_capability.0 >= 8 {
        96 * 1024
    } else {
        48 * 1024
    }
}
/// Most tokens per shared-memory tile of a scan.
const MAX_TILE: usize = 16;

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

/// The kernels' code for a mixer kind (`KIND_*` in the kernel file).
fn kind_code(kind: MixerKind) -> Result<i32> {
    Ok(match kind {
        MixerKind::Gla => 0,
        MixerKind::Hgrn2 => 1,
        MixerKind::Retention => 2,
        MixerKind::Mamba2 => 3,
        MixerKind::Rwkv6 => 4,
        MixerKind::Linear => 5,
        MixerKind::Gsa => {
            return Err(Error::invalid_argument(
                "the gsa mixer has no GPU kernels yet: run it on the CPU backend, or pick another mixer (gla is the default)",
            ))
        }
    })
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

/// State rows of a scan CTA, padded: the kernel variant for head sizes up to 64 or up to 128.
fn padded_rows(d: usize) -> usize {
    if d <= 64 {
        64
    } else {
        128
    }
}

/// The four uses of the scan kernel (see the module notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    Forward,
    ColsForward,
    RowsReverse,
    ColsReverse,
}

impl Scan {
    fn entry(self, bf16_out: bool, rows: usize) -> &'static str {
        match (self, bf16_out, rows) {
            (Scan::Forward, false, 64) => "mixer_scan_forward_f32_d64",
            (Scan::Forward, false, _) => "mixer_scan_forward_f32_d128",
            (Scan::Forward, true, 64) => "mixer_scan_forward_bf16_d64",
            (Scan::Forward, true, _) => "mixer_scan_forward_bf16_d128",
            (Scan::ColsForward, _, 64) => "mixer_scan_cols_forward_d64",
            (Scan::ColsForward, _, _) => "mixer_scan_cols_forward_d128",
            (Scan::RowsReverse, _, 64) => "mixer_scan_rows_reverse_d64",
            (Scan::RowsReverse, _, _) => "mixer_scan_rows_reverse_d128",
            (Scan::ColsReverse, _, 64) => "mixer_scan_cols_reverse_d64",
            (Scan::ColsReverse, _, _) => "mixer_scan_cols_reverse_d128",
        }
    }
    fn decays_columns(self) -> bool {
        matches!(self, Scan::ColsForward | Scan::ColsReverse)
    }
}

/// Floats of shared memory per token of a scan tile (kernel: `tile_buffer_floats` and the
/// layout in `gated_scan`): two buffers of x, y, w and decays, and the warps' partial read-outs.
fn scan_floats_per_token(x_n: usize, w_n: usize, rows: usize, decay_cols: bool) -> usize {
    let buffer = x_n * rows + x_n * SCAN_COLS + w_n * rows + if decay_cols { SCAN_COLS } else { rows };
    2 * buffer + SCAN_WARPS * w_n * SCAN_COLS
}

/// Tokens per tile that fit `shared_bytes`, or an error when not even one does.
fn scan_tile(x_n: usize, w_n: usize, rows: usize, decay_cols: bool, shared_bytes: usize) -> Result<usize> {
    let per_token = scan_floats_per_token(x_n, w_n, rows, decay_cols) * 4;
    let tile = (shared_bytes / per_token).min(MAX_TILE);
    if tile == 0 {
        return Err(Error::invalid_argument(format!(
            "{} query heads per key-value head are more than the GPU mixer kernels take: use the CPU backend",
            x_n.max(w_n)
        )));
    }
    Ok(tile)
}

/// The kernel's `ScanParams`: device pointers (0 for none) and sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ScanParams {
    x: u64,
    y: u64,
    w: u64,
    decay: u64,
    out: u64,
    initial: u64,
    final_state: u64,
    batch: i32,
    tokens: i32,
    hkv: i32,
    d: i32,
    x_n: i32,
    w_n: i32,
    tile: i32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for ScanParams {}

fn ptr<T: DeviceRepr>(ctx: &GpuContext, buf: &GpuBuffer<T>) -> u64 {
    buf.slice().device_ptr(ctx.stream()).0
}

fn ptr_mut<T: DeviceRepr>(ctx: &GpuContext, buf: &mut GpuBuffer<T>) -> u64 {
    buf.slice_mut().device_ptr_mut(ctx.stream()).0
}

fn int(name: &str, value: usize) -> Result<i32> {
    crate::launch::as_int(name, value)
}

/// Device pointers of one scan's operands.
struct ScanOperands {
    x: u64,
    y: u64,
    w: u64,
    decay: u64,
    out: u64,
    initial: u64,
    final_state: u64,
}

/// Queues one scan. Every pointer must hold the `[B, T, heads, d]` tensor its role needs
/// (`x_n` heads per kv head for x and y, `w_n` for w and out); the callers check the lengths.
fn launch_scan(ctx: &GpuContext, scan: Scan, bf16_out: bool, dims: MixerDims, ops: ScanOperands, x_n: usize, w_n: usize) -> Result<()> {
    let d = dims.shape.d;
    let rows = padded_rows(d);
    let tile = scan_tile(x_n, w_n, rows, scan.decays_columns(), scan_shared_bytes(ctx.info().compute_capability))?;
    let params = ScanParams {
        x: ops.x,
        y: ops.y,
        w: ops.w,
        decay: ops.decay,
        out: ops.out,
        initial: ops.initial,
        final_state: ops.final_state,
        batch: int("batch", dims.batch)?,
        tokens: int("tokens", dims.tokens)?,
        hkv: int("hkv", dims.shape.hkv)?,
        d: int("d", d)?,
        x_n: int("group", x_n)?,
        w_n: int("group", w_n)?,
        tile: tile as i32,
    };
    // Offsets inside the kernel are 64-bit; the grid's y and z are at most 65535.
    if dims.batch > 65535 || dims.shape.hkv > 65535 {
        return Err(Error::invalid_argument(format!(
            "batch {} x {} key-value heads is more than one GPU launch takes (65535 each): split the batch",
            dims.batch, dims.shape.hkv
        )));
    }
    let shared = tile * scan_floats_per_token(x_n, w_n, rows, scan.decays_columns()) * 4;
    let cfg = LaunchConfig {
        grid_dim: (d.div_ceil(SCAN_COLS) as u32, dims.shape.hkv as u32, dims.batch as u32),
        block_dim: ((SCAN_WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    let name = scan.entry(bf16_out, rows);
    let f = ctx.function(&MIXER_GATED, name)?;
    if shared > 48 * 1024 {
        let attribute = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        f.set_attribute(attribute, shared as i32).map_err(|e| driver_error(e, &format!("allowing {name} {shared} bytes of shared memory")))?;
    }
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(&params);
    // SAFETY: the pointers hold the tensors of `dims` (checked by the callers), the grid
    // covers (column block, kv head, sequence) and the shared memory matches the tile.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// Feature maps of a batch: qf, kf, g, vf in f32 (fresh buffers).
struct Features {
    qf: GpuBuffer<f32>,
    kf: GpuBuffer<f32>,
    decay: GpuBuffer<f32>,
    vf: GpuBuffer<f32>,
}

#[allow(clippy::too_many_arguments)]
fn features<T: GpuElement>(ctx: &GpuContext, dims: MixerDims, kind: i32, scale: f32, q: &GpuBuffer<T>, k: &GpuBuffer<T>, v: &GpuBuffer<T>) -> Result<Features> {
    let mut f = Features {
        qf: GpuBuffer::zeros(ctx, dims.q_len())?,
        kf: GpuBuffer::zeros(ctx, dims.kv_len())?,
        decay: GpuBuffer::zeros(ctx, dims.kv_len())?,
        vf: GpuBuffer::zeros(ctx, dims.kv_len())?,
    };
    let q_rows = (dims.q_len() / dims.shape.d) as i64;
    let kv_rows = (dims.kv_len() / dims.shape.d) as i64;
    let name = if T::KERNEL_SUFFIX == "bf16" { "mixer_features_bf16" } else { "mixer_features_f32" };
    let func = ctx.function(&MIXER_GATED, name)?;
    let d = int("d", dims.shape.d)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(q.slice()).arg(k.slice()).arg(v.slice());
    launch.arg(f.qf.slice_mut()).arg(f.kf.slice_mut()).arg(f.decay.slice_mut()).arg(f.vf.slice_mut());
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
    let f = features(ctx, dims, kind, scale, q, k, v)?;
    let ops = ScanOperands {
        x: ptr(ctx, &f.kf),
        y: ptr(ctx, &f.vf),
        w: ptr(ctx, &f.qf),
        decay: ptr(ctx, &f.decay),
        out: ptr_mut(ctx, o),
        initial: initial.map_or(0, |s| ptr(ctx, s)),
        final_state: final_state.map_or(0, |s| ptr_mut(ctx, s)),
    };
    launch_scan(ctx, Scan::Forward, T::KERNEL_SUFFIX == "bf16", dims, ops, 1, dims.shape.group())
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
    let f = features(ctx, dims, kind, scale, q_t, k_t, v_t)?;
    // In place: each thread reads its state values first and writes the same ones last.
    let s = ptr_mut(ctx, state);
    let ops = ScanOperands {
        x: ptr(ctx, &f.kf),
        y: ptr(ctx, &f.vf),
        w: ptr(ctx, &f.qf),
        decay: ptr(ctx, &f.decay),
        out: ptr_mut(ctx, o_t),
        initial: s,
        final_state: s,
    };
    launch_scan(ctx, Scan::Forward, T::KERNEL_SUFFIX == "bf16", dims, ops, 1, shape.group())
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
    let (kind, scale) = check_config(cfg, dims.shape)?;
    check_inputs(dims, q, k, v)?;
    expect_len("d_o", d_o.len(), dims.q_len())?;
    expect_len("dq", dq.len(), dims.q_len())?;
    expect_len("dk", dk.len(), dims.kv_len())?;
    expect_len("dv", dv.len(), dims.kv_len())?;
    if dims.batch == 0 || dims.tokens == 0 {
        return Ok(());
    }
    let group = dims.shape.group();
    let f = features(ctx, dims, kind, scale, q, k, v)?;
    let dof = to_f32(ctx, d_o)?;
    let do_ptr = dof.as_ref().map_or_else(|| ptr(ctx, d_o), |b| ptr(ctx, b));
    let mut dqf = GpuBuffer::<f32>::zeros(ctx, dims.q_len())?;
    let mut dkf = GpuBuffer::<f32>::zeros(ctx, dims.kv_len())?;
    let mut dvf = GpuBuffer::<f32>::zeros(ctx, dims.kv_len())?;
    let (qf, kf, vf, decay) = (ptr(ctx, &f.qf), ptr(ctx, &f.kf), ptr(ctx, &f.vf), ptr(ctx, &f.decay));
    let scans = [
        // dqf_t = do_t S_t^T: the state transposed (rows = value dims), read out by do.
        (Scan::ColsForward, vf, kf, do_ptr, ptr_mut(ctx, &mut dqf), 1, group),
        // dv_t = kf_t dS_t, dS built backward from qf^T do.
        (Scan::RowsReverse, qf, do_ptr, kf, ptr_mut(ctx, &mut dvf), group, 1),
        // dkf_t = v_t dS_t^T, the same state gradient transposed.
        (Scan::ColsReverse, do_ptr, qf, vf, ptr_mut(ctx, &mut dkf), group, 1),
    ];
    for (scan, x, y, w, out, x_n, w_n) in scans {
        let ops = ScanOperands { x, y, w, decay, out, initial: 0, final_state: 0 };
        launch_scan(ctx, scan, false, dims, ops, x_n, w_n)?;
    }

    let mut dg = GpuBuffer::<f32>::zeros(ctx, dims.kv_len())?;
    let columns = dims.batch * dims.shape.hkv * dims.shape.d;
    let (batch, tokens, hkv, group_arg, d) =
        (int("batch", dims.batch)?, int("tokens", dims.tokens)?, int("hkv", dims.shape.hkv)?, int("group", group)?, int("d", dims.shape.d)?);
    let name = "mixer_gate_grad_f32";
    let func = ctx.function(&MIXER_GATED, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(f.qf.slice()).arg(dqf.slice()).arg(f.kf.slice()).arg(dkf.slice()).arg(dg.slice_mut());
    launch.arg(&batch).arg(&tokens).arg(&hkv).arg(&group_arg).arg(&d);
    let cfg_grid = LaunchConfig { grid_dim: (columns.div_ceil(BLOCK as usize) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: one thread per (sequence, kv head, key dim); the buffers hold the batch's tensors.
    ctx.check_launch(unsafe { launch.launch(cfg_grid) }, name)?;

    let q_rows = (dims.q_len() / dims.shape.d) as i64;
    let kv_rows = (dims.kv_len() / dims.shape.d) as i64;
    let name = if T::KERNEL_SUFFIX == "bf16" { "mixer_features_backward_bf16" } else { "mixer_features_backward_f32" };
    let func = ctx.function(&MIXER_GATED, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(k.slice()).arg(f.qf.slice()).arg(dqf.slice()).arg(f.kf.slice()).arg(dkf.slice()).arg(dg.slice()).arg(dvf.slice());
    launch.arg(dq.slice_mut()).arg(dk.slice_mut()).arg(dv.slice_mut());
    launch.arg(&q_rows).arg(&kv_rows).arg(&d).arg(&kind).arg(&scale);
    // SAFETY: q-shaped buffers hold q_rows rows of d, the others kv_rows; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row((q_rows + kv_rows) as usize)) }, name)
}

/// `x` as f32 in a new buffer, or None when it already is f32 (use it as it is).
fn to_f32<T: GpuElement>(ctx: &GpuContext, x: &GpuBuffer<T>) -> Result<Option<GpuBuffer<f32>>> {
    if T::KERNEL_SUFFIX == "f32" {
        return Ok(None);
    }
    let mut y = GpuBuffer::<f32>::zeros(ctx, x.len())?;
    let n = x.len() as i64;
    let name = "mixer_to_f32_bf16";
    let func = ctx.function(&MIXER_GATED, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(x.slice()).arg(y.slice_mut()).arg(&n);
    // SAFETY: x and y hold n values; grid-stride loop.
    ctx.check_launch(unsafe { launch.launch(elementwise(x.len())) }, name)?;
    Ok(Some(y))
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
        let err = check_config(&MixerConfig::new(MixerKind::Gsa), shape(4, 2, 64)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("CPU backend"), "{}", err.message);
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
    }

    #[test]
    fn scan_tiles_fit_shared_memory() {
        for (x_n, w_n) in [(1, 1), (1, 4), (4, 1), (1, 8), (8, 1), (1, 16)] {
            for rows in [64, 128] {
                for cols in [false, true] {
                    for cc in [(7, 5), (9, 0)] {
                        let bytes = scan_shared_bytes(cc);
                        let tile = scan_tile(x_n, w_n, rows, cols, bytes).unwrap();
                        assert!((1..=MAX_TILE).contains(&tile));
                        assert!(tile * scan_floats_per_token(x_n, w_n, rows, cols) * 4 <= bytes);
                    }
                }
            }
        }
        assert_eq!(scan_tile(1, 64, 128, false, scan_shared_bytes((9, 0))).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(padded_rows(64), 64);
        assert_eq!(padded_rows(80), 128);
        assert_eq!(padded_rows(128), 128);
    }

    #[test]
    fn scan_params_have_the_kernel_layout() {
        // Seven 8-byte pointers, then seven ints, padded to 8 bytes.
        assert_eq!(std::mem::size_of::<ScanParams>(), 7 * 8 + 8 * 4);
    }
}
