//! Gated slot attention (gsa) on the GPU. CPU twin: `liger_core::liger::gsa` (its notes give
//! the math). Both slot memories follow the gated recurrence, so they run on the gated scans,
//! with the M-wide slot tensors stored D wide (padded: write 0, decay 1, so the padding stays
//! zero; `kernels/gsa.cu`):
//!
//! - key pass, `s_t = K_t qs_t` with `K_t = diag(a_t) K_{t-1} + w_t^T k_t` read out along its
//!   columns: the transposed scan (`ColsForward`: rows = key dims, columns = slots);
//! - slot softmax `p = softmax_M(s)`;
//! - value pass, `o_t = p_t V_t`: the plain forward scan with x = w, y = v, read out by p.
//!
//! The backward recomputes s and p, runs the value pass's three backward scans (gradients of
//! p, v and w), the slot softmax backward, then the key pass's three: `dqs = ds K` (a forward
//! scan read out by ds), and from the state gradient `dK_t = a_{t+1} dK_{t+1} + ds^T qs`
//! both `dk = w dK` (`RowsReverse`) and `dw = dK k^T` (`ColsReverse`). The two log-decay
//! gradients use the gated kernels' identity, `(p . dp - w . dw_values)` and
//! `(s . ds - w . dw_keys)` summed backward in time; a last pass adds the gate path to dk.
//! Costs: the padded slot dims cost D / M times the work of M slots (none at M = D).

use super::gla_scan::{int, ptr, ptr_mut, Scan, ScanJob, ScanOperands};
use super::segments::{self, SegmentRegions, TimeSegments};
use super::{
    backward_jobs, backward_side_by_side, gate_gradient, region, threads, to_f32, Features, MixerDims, ScratchPlan,
    GATE_PIECE,
};
use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::GSA;
use crate::launch::warp_per_row;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use liger_core::liger::{HeadShape, MixerConfig};
use liger_core::{Error, Result};

/// Threads of a decoding-step CTA.
const STEP_THREADS: u32 = 512;
/// Shared memory a decoding-step CTA may use without opting in.
const STEP_SHARED_BYTES: usize = 48 * 1024;

/// Device addresses of the scans' f32 inputs: scaled queries, keys, values, slot writes and decays.
struct Inputs {
    qs: u64,
    k: u64,
    v: u64,
    write: u64,
    decay: u64,
}

/// Scratch offsets of [`Inputs`].
struct InputRegions([usize; 5]);

impl InputRegions {
    fn plan(plan: &mut ScratchPlan, dims: MixerDims) -> Self {
        InputRegions([
            plan.take(dims.q_len()),
            plan.take(dims.kv_len()),
            plan.take(dims.kv_len()),
            plan.take(dims.kv_len()),
            plan.take(dims.kv_len()),
        ])
    }
}

/// The kernel of element type `T`: `f32_name` or `bf16_name`.
fn entry<T: GpuElement>(f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    if T::KERNEL_SUFFIX == "bf16" {
        bf16_name
    } else {
        f32_name
    }
}

/// The slot read-out's scale (1, or 1/sqrt(D): `GsaScale`) and 1/n (the gate normaliser).
fn scales(cfg: &MixerConfig, d: usize) -> (f32, f32) {
    (cfg.gsa_scale.factor(d), 1.0 / cfg.gate_normalizer)
}

/// Writes the f32 inputs of both passes into scratch.
fn inputs<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    [q, k, v]: [&GpuBuffer<T>; 3],
    base: u64,
    at: &InputRegions,
) -> Result<Inputs> {
    let [qs, kf, vf, write, decay] = at.0.map(|offset| region(base, offset));
    let d = dims.shape.d;
    let (q_rows, kv_rows) = ((dims.q_len() / d) as i64, (dims.kv_len() / d) as i64);
    let (scale, inv_normalizer) = scales(cfg, d);
    let (d_arg, slots) = (int("d", d)?, int("gsa_slots", cfg.gsa_slots)?);
    let name = entry::<T>("gsa_inputs_f32", "gsa_inputs_bf16");
    let func = ctx.function(&GSA, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&qs).arg(&kf).arg(&vf).arg(&write).arg(&decay);
    launch.arg(&q_rows).arg(&kv_rows).arg(&d_arg).arg(&slots).arg(&scale).arg(&inv_normalizer);
    // SAFETY: q-shaped regions hold q_rows rows of d, the others kv_rows; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row((q_rows + kv_rows) as usize)) }, name)?;
    Ok(Inputs { qs, k: kf, v: vf, write, decay })
}

/// A warp-per-row kernel over the `rows` rows of d values of q-shaped tensors.
fn slot_rows(
    ctx: &GpuContext,
    name: &'static str,
    dims: MixerDims,
    pointers: &[u64],
    slots: Option<usize>,
) -> Result<()> {
    let d = dims.shape.d;
    let rows = (dims.q_len() / d) as i64;
    let d_arg = int("d", d)?;
    let slots = slots.map(|m| int("gsa_slots", m)).transpose()?;
    let func = ctx.function(&GSA, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    for p in pointers {
        launch.arg(p);
    }
    launch.arg(&rows).arg(&d_arg);
    if let Some(m) = &slots {
        launch.arg(m);
    }
    // SAFETY: every pointer holds `rows` rows of d f32 values; one warp per row.
    ctx.check_launch(unsafe { launch.launch(warp_per_row(rows as usize)) }, name)
}

/// The scan-state layouts of the key and value passes from (or into) the CPU state layout.
fn convert_state(
    ctx: &GpuContext,
    name: &'static str,
    dims: MixerDims,
    slots: usize,
    pointers: [u64; 3],
) -> Result<()> {
    let d = dims.shape.d;
    let heads = (dims.batch * dims.shape.hkv) as i64;
    let (d_arg, slots_arg) = (int("d", d)?, int("gsa_slots", slots)?);
    let func = ctx.function(&GSA, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    for p in &pointers {
        launch.arg(p);
    }
    launch.arg(&heads).arg(&d_arg).arg(&slots_arg);
    // SAFETY: the scan states hold heads x d x d values and the CPU state heads x 2 x slots x d;
    // enough threads for either, each kernel checks its own range.
    let values = heads as usize * (d * d).max(2 * slots * d);
    ctx.check_launch(unsafe { launch.launch(threads(values)) }, name)
}

/// The key pass's scan: s `[B, T, hq, d]` (f32, padded past the slots).
fn key_pass(ctx: &GpuContext, dims: MixerDims, x: &Inputs, out: u64, states: (u64, u64)) -> Result<ScanJob> {
    let ops = ScanOperands {
        x: x.k,
        y: x.write,
        w: x.qs,
        decay: x.decay,
        out,
        initial: states.0,
        final_state: states.1,
        ..Default::default()
    };
    ScanJob::new(ctx, Scan::ColsForward, false, dims, ops, 1, dims.shape.group())
}

/// The value pass's scan: o `[B, T, hq, d]` in the output type.
fn value_pass(
    ctx: &GpuContext,
    dims: MixerDims,
    bf16: bool,
    x: &Inputs,
    p: u64,
    out: u64,
    states: (u64, u64),
) -> Result<ScanJob> {
    let ops = ScanOperands {
        x: x.write,
        y: x.v,
        w: p,
        decay: x.decay,
        out,
        initial: states.0,
        final_state: states.1,
        ..Default::default()
    };
    ScanJob::new(ctx, Scan::Forward, bf16, dims, ops, 1, dims.shape.group())
}

const NONE: Inputs = Inputs { qs: 0, k: 0, v: 0, write: 0, decay: 0 };

/// Forward over whole sequences (lengths checked by the caller); see the module notes.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    qkv: [&GpuBuffer<T>; 3],
    o: &mut GpuBuffer<T>,
    initial: Option<&GpuBuffer<f32>>,
    final_state: Option<&mut GpuBuffer<f32>>,
    segments: TimeSegments,
) -> Result<()> {
    let (bf16, slots) = (T::KERNEL_SUFFIX == "bf16", cfg.gsa_slots);
    let key_schedule = segments::schedule(ctx, dims, &[key_pass(ctx, dims, &NONE, 0, (0, 0))?], None, segments)?;
    let value_schedule =
        segments::schedule(ctx, dims, &[value_pass(ctx, dims, bf16, &NONE, 0, 0, (0, 0))?], None, segments)?;
    let mut plan = ScratchPlan::default();
    let input_regions = InputRegions::plan(&mut plan, dims);
    let (s_at, p_at) = (plan.take(dims.q_len()), plan.take(dims.q_len()));
    // Both passes' states in the scans' layout, read as the initial and written as the final state.
    let state_len = dims.batch * dims.shape.hkv * dims.shape.d * dims.shape.d;
    let (key_state_at, value_state_at) = (plan.take(state_len), plan.take(state_len));
    let key_regions = SegmentRegions::plan(&mut plan, dims, &key_schedule, 1);
    let value_regions = SegmentRegions::plan(&mut plan, dims, &value_schedule, 1);
    let out = ptr_mut(ctx, o);
    let initial = initial.map(|s| ptr(ctx, s));
    let final_state = final_state.map(|s| ptr_mut(ctx, s));
    ctx.with_scratch(plan.floats, |base| {
        let x = inputs(ctx, cfg, dims, qkv, base, &input_regions)?;
        let (s, p) = (region(base, s_at), region(base, p_at));
        let (key_state, value_state) = (region(base, key_state_at), region(base, value_state_at));
        if let Some(state) = initial {
            convert_state(ctx, "gsa_state_split", dims, slots, [state, key_state, value_state])?;
        }
        let states = |scan_state: u64| {
            (if initial.is_some() { scan_state } else { 0 }, if final_state.is_some() { scan_state } else { 0 })
        };
        let job = key_pass(ctx, dims, &x, s, states(key_state))?;
        segments::run(ctx, dims, &[job], job.entry(), &key_schedule, &key_regions, base)?;
        slot_rows(ctx, "gsa_slot_softmax", dims, &[s, p], Some(slots))?;
        let job = value_pass(ctx, dims, bf16, &x, p, out, states(value_state))?;
        segments::run(ctx, dims, &[job], job.entry(), &value_schedule, &value_regions, base)?;
        if let Some(state) = final_state {
            convert_state(ctx, "gsa_state_join", dims, slots, [key_state, value_state, state])?;
        }
        Ok(())
    })
}

/// The key pass's backward scans: dqs (forward in time, read out by ds), dk and dw (the state
/// gradient, backward in time, read out by w and by k); `outs` = [dqs, dk, dw].
fn key_backward_jobs(ctx: &GpuContext, dims: MixerDims, x: &Inputs, ds: u64, outs: [u64; 3]) -> Result<[ScanJob; 3]> {
    let group = dims.shape.group();
    let job = |scan, xx, y, w, out, x_n, w_n| {
        ScanJob::new(
            ctx,
            scan,
            false,
            dims,
            ScanOperands { x: xx, y, w, decay: x.decay, out, ..Default::default() },
            x_n,
            w_n,
        )
    };
    Ok([
        job(Scan::Forward, x.write, x.k, ds, outs[0], 1, group)?,
        job(Scan::RowsReverse, ds, x.qs, x.write, outs[1], group, 1)?,
        job(Scan::ColsReverse, x.qs, ds, x.k, outs[2], group, 1)?,
    ])
}

/// The value pass's backward scans (the gated mixer's, with p, w, the decays and v as its
/// features); `outs` = [dp, dv, dw].
fn value_backward_jobs(
    ctx: &GpuContext,
    dims: MixerDims,
    x: &Inputs,
    p: u64,
    d_o: u64,
    outs: [u64; 3],
) -> Result<[ScanJob; 3]> {
    let features = Features { qf: p, kf: x.write, decay: x.decay, vf: x.v };
    backward_jobs(ctx, dims, &features, d_o, outs, 0, 1.0)
}

/// The kernel's `GsaGrads`: the backward's f32 intermediates and sizes.
#[repr(C)]
#[derive(Clone, Copy)]
struct GsaGrads {
    dqs: u64,
    dk_keys: u64,
    dvf: u64,
    dw_keys: u64,
    dw_values: u64,
    dg_keys: u64,
    carry_keys: u64,
    dg_values: u64,
    carry_values: u64,
    decay: u64,
    q_rows: i64,
    kv_rows: i64,
    tokens: i32,
    hkv: i32,
    d: i32,
    slots: i32,
    piece: i32,
    scale: f32,
    inv_normalizer: f32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for GsaGrads {}

/// Gradients w.r.t. the raw q, k, v from a zero initial state (lengths checked by the caller).
pub(super) fn backward<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    dims: MixerDims,
    [q, k, v, d_o]: [&GpuBuffer<T>; 4],
    [dq, dk, dv]: [&mut GpuBuffer<T>; 3],
    segments: TimeSegments,
) -> Result<()> {
    let (bf16, slots, d) = (T::KERNEL_SUFFIX == "bf16", cfg.gsa_slots, dims.shape.d);
    let key_schedule = segments::schedule(ctx, dims, &[key_pass(ctx, dims, &NONE, 0, (0, 0))?], None, segments)?;
    let value_probes = value_backward_jobs(ctx, dims, &NONE, 0, 0, [0; 3])?;
    let value_schedule = segments::schedule(ctx, dims, &value_probes, Some(backward_side_by_side(dims)), segments)?;
    let key_schedule_back =
        segments::schedule(ctx, dims, &key_backward_jobs(ctx, dims, &NONE, 0, [0; 3])?, None, segments)?;

    let mut plan = ScratchPlan::default();
    let input_regions = InputRegions::plan(&mut plan, dims);
    let q_shaped: [usize; 5] = std::array::from_fn(|_| plan.take(dims.q_len())); // s, p, dp, ds, dqs
    let kv_shaped: [usize; 6] = std::array::from_fn(|_| plan.take(dims.kv_len())); // dv, dw_values, dk_keys, dw_keys, dg_values, dg_keys
    let carry_len = dims.batch * dims.tokens.div_ceil(GATE_PIECE) * dims.shape.hkv * d;
    let carries = [plan.take(carry_len), plan.take(carry_len)];
    let dof_at = bf16.then(|| plan.take(dims.q_len()));
    let key_regions = SegmentRegions::plan(&mut plan, dims, &key_schedule, 1);
    let value_regions = SegmentRegions::plan(&mut plan, dims, &value_schedule, 3);
    let key_regions_back = SegmentRegions::plan(&mut plan, dims, &key_schedule_back, 3);
    let (dq, dk, dv) = (ptr_mut(ctx, dq), ptr_mut(ctx, dk), ptr_mut(ctx, dv));
    ctx.with_scratch(plan.floats, |base| {
        let x = inputs(ctx, cfg, dims, [q, k, v], base, &input_regions)?;
        let [s, p, dp, ds, dqs] = q_shaped.map(|at| region(base, at));
        let [dvf, dw_values, dk_keys, dw_keys, dg_values, dg_keys] = kv_shaped.map(|at| region(base, at));
        let [carry_values, carry_keys] = carries.map(|at| region(base, at));
        let d_o = match dof_at {
            Some(at) => to_f32(ctx, d_o, region(base, at))?,
            None => ptr(ctx, d_o),
        };
        // Forward again: the slot scores and their softmax.
        let job = key_pass(ctx, dims, &x, s, (0, 0))?;
        segments::run(ctx, dims, &[job], job.entry(), &key_schedule, &key_regions, base)?;
        slot_rows(ctx, "gsa_slot_softmax", dims, &[s, p], Some(slots))?;
        // The value pass, then back through the softmax, then the key pass.
        let jobs = value_backward_jobs(ctx, dims, &x, p, d_o, [dp, dvf, dw_values])?;
        segments::run(ctx, dims, &jobs, backward_side_by_side(dims), &value_schedule, &value_regions, base)?;
        gate_gradient(ctx, dims, [p, dp, x.write, dw_values], dg_values, carry_values)?;
        slot_rows(ctx, "gsa_slot_softmax_backward", dims, &[p, dp, ds], None)?;
        let jobs = key_backward_jobs(ctx, dims, &x, ds, [dqs, dk_keys, dw_keys])?;
        // No kernel runs these three side by side (their first is not the gated backward's), so
        // the schedule never asks for one; the name passed for it is unused.
        segments::run(ctx, dims, &jobs, jobs[0].entry(), &key_schedule_back, &key_regions_back, base)?;
        gate_gradient(ctx, dims, [s, ds, x.write, dw_keys], dg_keys, carry_keys)?;

        let (scale, inv_normalizer) = scales(cfg, d);
        let (q_rows, kv_rows) = ((dims.q_len() / d) as i64, (dims.kv_len() / d) as i64);
        let grads = GsaGrads {
            dqs,
            dk_keys,
            dvf,
            dw_keys,
            dw_values,
            dg_keys,
            carry_keys,
            dg_values,
            carry_values,
            decay: x.decay,
            q_rows,
            kv_rows,
            tokens: int("tokens", dims.tokens)?,
            hkv: int("hkv", dims.shape.hkv)?,
            d: int("d", d)?,
            slots: int("gsa_slots", slots)?,
            piece: GATE_PIECE as i32,
            scale,
            inv_normalizer,
        };
        let name = entry::<T>("gsa_backward_finish_f32", "gsa_backward_finish_bf16");
        let func = ctx.function(&GSA, name)?;
        let mut launch = ctx.stream().launch_builder(&func);
        launch.arg(&grads).arg(k.slice()).arg(&dq).arg(&dk).arg(&dv);
        // SAFETY: q-shaped buffers hold q_rows rows of d, the others kv_rows; the carries
        // [B, pieces, hkv, d]; one warp per row.
        ctx.check_launch(unsafe { launch.launch(warp_per_row((q_rows + kv_rows) as usize)) }, name)
    })
}

/// One decoding step for `batch` sequences (lengths checked by the caller): one CTA per (kv
/// head, sequence) advances both slot memories in place; nothing is allocated.
pub(super) fn step<T: GpuElement>(
    ctx: &GpuContext,
    cfg: &MixerConfig,
    batch: usize,
    shape: HeadShape,
    state: &mut GpuBuffer<f32>,
    [q_t, k_t, v_t]: [&GpuBuffer<T>; 3],
    o_t: &mut GpuBuffer<T>,
) -> Result<()> {
    let (d, group, slots) = (shape.d, shape.group(), cfg.gsa_slots);
    let shared = 4 * (2 * d + 2 * slots + group * d + STEP_THREADS as usize + group * slots);
    if shared > STEP_SHARED_BYTES {
        return Err(Error::invalid_argument(format!(
            "{group} query heads per key-value head with {slots} gsa slots are more than the GPU decoding step takes: use the CPU backend"
        )));
    }
    if batch > 65535 {
        return Err(Error::invalid_argument(format!(
            "a decoding step takes at most 65535 sequences at once on the GPU, got {batch}: split the batch"
        )));
    }
    let (scale, inv_normalizer) = scales(cfg, d);
    let (hkv, group_arg, d_arg, slots_arg) =
        (int("hkv", shape.hkv)?, int("group", group)?, int("d", d)?, int("gsa_slots", slots)?);
    let name = entry::<T>("gsa_step_f32", "gsa_step_bf16");
    let func = ctx.function(&GSA, name)?;
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(state.slice_mut()).arg(q_t.slice()).arg(k_t.slice()).arg(v_t.slice()).arg(o_t.slice_mut());
    launch.arg(&hkv).arg(&group_arg).arg(&d_arg).arg(&slots_arg).arg(&scale).arg(&inv_normalizer);
    let cfg = LaunchConfig {
        grid_dim: (shape.hkv as u32, batch as u32, 1),
        block_dim: (STEP_THREADS, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: state holds [B, hkv, 2 slots d], q_t and o_t [B, hq, d], k_t and v_t [B, hkv, d]
    // (checked by the caller); one CTA per (kv head, sequence), its shared memory sized above.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsa_grads_have_the_kernel_layout() {
        // Ten 8-byte pointers, two 8-byte counts, five ints and two floats (124 bytes), padded to 8.
        assert_eq!(std::mem::size_of::<GsaGrads>(), 128);
    }
}
