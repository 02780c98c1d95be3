//! The chunked form of the mixer's recurrence on tensor cores (`kernels/gla_chunk.cu`): a
//! drop-in for the scans with bf16 inputs and head sizes 64 or 128 (`TimeSegments::Chunked`).
//! It reads the same f32 feature maps and writes the same outputs (o; dqf, dkf, dvf). The
//! forward runs in three steps over chunks of 64 tokens:
//! each chunk's end state from zero (in parallel), the carry across chunks
//! (`mixer_segment_carry`, the chunks being segments of 64 tokens), then each chunk's output
//! from its start state plus the chunk's own part (in parallel). The matrix products run in
//! bf16 with fp32 accumulation, every decay factor applied in f32 first. The backward
//! recomputes the chunks' start states the same way, carries the state gradient's chunk
//! states from the last chunk back, then computes dqf per query head and dkf, dvf per kv head
//! in parallel over chunks; the gate gradient and feature-map backward that follow are the
//! scan path's. The scan (`gla_scan.rs`)
//! stays for f32 inputs, other head sizes, and when asked for (`TimeSegments::Fixed`).

use super::gla_scan::{int, ptr_mut};
use super::{features, region, threads, FeatureRegions, Features, MixerDims, ScratchPlan, TimeSegments};
use crate::buffer::{GpuBuffer, GpuElement};
use crate::context::GpuContext;
use crate::kernels::{GLA_CHUNK, GLA_SCAN};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use liger_core::liger::MixerKind;
use liger_core::{Error, Result};

/// Tokens per chunk (kernel CHUNK).
pub const CHUNK: usize = 64;
/// Rows of the forward kernel's staging tiles (kernel STAGE_ROWS).
const STAGE_ROWS: usize = 9 * 16;

/// Whether a mixer call of `kind` with elements `T`, head size `d` and `segments` runs in
/// chunked form. The form applies at head sizes 64 and 128 to every kind but rwkv6; its chunk
/// products are bf16 (fp32 accumulation). It runs where asked (`Chunked`), and where measured
/// faster at a precision the caller accepts: `Auto` with bf16 inputs, `AutoBf16Products` with
/// any inputs (a bf16 model's f32 activations), both at head size 64 only.
///
/// On an H100 (bench_mixer --chunked, fwd / bwd ms, chunked vs segmented scan) the chunked
/// form is faster at the training shapes with d = 64 (B8 T1024 9/3: 0.152 / 0.704 vs 0.222 /
/// 0.880; 32/8: 0.529 / 1.893 vs 0.808 / 2.307) and slower at d = 128 (B8 T2048 32/8: 3.31 /
/// 10.4 vs 2.68 / 7.05: its output kernel's shared memory leaves one CTA per SM). rwkv6 keeps
/// the scan: its decays, exp(-exp(k)), are strong enough that the bf16 chunk products'
/// rounding, magnified by its gate derivative, put dk past the bf16 bound (measured 2.4e-2,
/// and worse under strong decays).
pub fn mixer_uses_chunked<T: GpuElement>(kind: MixerKind, d: usize, segments: TimeSegments) -> bool {
    let applies = matches!(d, 64 | 128) && !matches!(kind, MixerKind::Rwkv6 | MixerKind::Gsa);
    applies
        && match segments {
            TimeSegments::Chunked => true,
            TimeSegments::Auto => T::KERNEL_SUFFIX == "bf16" && d == 64,
            TimeSegments::AutoBf16Products => d == 64,
            TimeSegments::Scan | TimeSegments::Fixed(_) => false,
        }
}

/// The kernels' `ChunkParams`: device pointers (0 for none) and sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ChunkParams {
    qf: u64,
    kf: u64,
    decay: u64,
    vf: u64,
    d_o: u64,
    states: u64,
    rstates: u64,
    products: u64,
    o: u64,
    dqf: u64,
    dkf: u64,
    dvf: u64,
    batch: i32,
    tokens: i32,
    hkv: i32,
    group: i32,
    chunks: i32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for ChunkParams {}

/// Chunks per sequence.
fn chunks(dims: MixerDims) -> usize {
    dims.tokens.div_ceil(CHUNK)
}

/// Shared memory bytes of the state kernel (kernel `chunk_states`): G in f32, three bf16 tiles.
fn states_shared(d: usize) -> usize {
    CHUNK * d * 4 + 3 * d * (CHUNK + 8) * 2
}

/// Shared memory bytes of the output kernel (kernel `chunk_output`): G in f32, four bf16
/// tiles of the chunk, the staging tiles (or S_0) and the scores.
fn output_shared(d: usize) -> usize {
    let (ld, lc) = (d + 8, CHUNK + 8);
    CHUNK * d * 4 + (4 * CHUNK + d.max(STAGE_ROWS)) * ld * 2 + CHUNK * lc * 2
}

/// Shared memory bytes of the dqf kernel (kernel `chunk_dq`): G, the chunk's do and v, the
/// decayed keys, S_0, B in bf16 and its diagonal blocks in f32.
fn dq_shared(d: usize) -> usize {
    let (ld, lc) = (d + 8, CHUNK + 8);
    CHUNK * d * 4 + (2 * CHUNK + 6 * 16 + d) * ld * 2 + CHUNK * lc * 2 + CHUNK * 16 * 4
}

/// Shared memory bytes of the dkf/dvf kernel (kernel `chunk_dkv`): G, six tiles of the chunk,
/// H, the decayed queries, A^T and B^T in bf16 and B^T's diagonal blocks in f32.
fn dkv_shared(d: usize) -> usize {
    let (ld, lc) = (d + 8, CHUNK + 8);
    CHUNK * d * 4 + (6 * CHUNK + d + 6 * 16) * ld * 2 + 2 * CHUNK * lc * 2 + CHUNK * 16 * 4
}

/// Kernel `name` of GLA_CHUNK, allowed `shared` bytes of dynamic shared memory.
fn function(ctx: &GpuContext, name: &'static str, shared: usize) -> Result<cudarc::driver::CudaFunction> {
    ctx.function_with_shared(&GLA_CHUNK, name, shared)
}

/// Launches `name` with one CTA of `threads` per (chunk, `heads`, sequence).
fn launch(
    ctx: &GpuContext,
    name: &'static str,
    dims: MixerDims,
    heads: usize,
    threads: u32,
    shared: usize,
    p: &ChunkParams,
) -> Result<()> {
    if dims.batch > 65535 || heads > 65535 {
        return Err(Error::invalid_argument(format!(
            "batch {} x {heads} heads is more than one GPU launch takes (65535 each): split the batch",
            dims.batch
        )));
    }
    let f = function(ctx, name, shared)?;
    let cfg = LaunchConfig {
        grid_dim: (chunks(dims) as u32, heads as u32, dims.batch as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    let mut launch = ctx.stream().launch_builder(&f);
    launch.arg(p);
    // SAFETY: the pointers hold the tensors of `dims` (checked by the callers; the state
    // regions were reserved for `chunks(dims)` chunks); the grid covers (chunk, head, sequence).
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

/// Turns the chunks' local states at `states` into their start states, walking the chunks
/// forward (or from the last, `reverse`); see `mixer_segment_carry`.
fn carry(
    ctx: &GpuContext,
    dims: MixerDims,
    states: u64,
    products: u64,
    initial: u64,
    final_state: u64,
    reverse: bool,
) -> Result<()> {
    let (d, hkv) = (dims.shape.d, dims.shape.hkv);
    let name = "mixer_segment_carry";
    let func = ctx.function(&GLA_SCAN, name)?;
    let (batch, segments, hkv_arg, d_arg) =
        (int("batch", dims.batch)?, int("chunks", chunks(dims))?, int("hkv", hkv)?, int("d", d)?);
    let (decay_cols, reverse) = (0i32, i32::from(reverse));
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(&states).arg(&products).arg(&initial).arg(&final_state);
    launch.arg(&batch).arg(&segments).arg(&hkv_arg).arg(&d_arg).arg(&decay_cols).arg(&reverse);
    // SAFETY: states [B, chunks, hkv, d, d] and products [B, chunks, hkv, d] were reserved for
    // this call; the initial and final states (if any) hold [B, hkv, d, d]; one thread per value.
    ctx.check_launch(unsafe { launch.launch(threads(dims.batch * hkv * d * d)) }, name)
}

/// Scratch regions of the chunk states: per chunk, the state (and the state gradient's, for
/// the backward) and the decay product.
pub(super) struct StateRegions {
    states: usize,
    rstates: Option<usize>,
    products: usize,
}

impl StateRegions {
    pub(super) fn plan(plan: &mut ScratchPlan, dims: MixerDims, backward: bool) -> Self {
        let per_chunk = dims.batch * chunks(dims) * dims.shape.hkv * dims.shape.d;
        StateRegions {
            states: plan.take(per_chunk * dims.shape.d),
            rstates: backward.then(|| plan.take(per_chunk * dims.shape.d)),
            products: plan.take(per_chunk),
        }
    }
}

/// The sizes of `dims` in the kernels' parameters (no pointers yet).
fn sizes(dims: MixerDims) -> Result<ChunkParams> {
    Ok(ChunkParams {
        batch: int("batch", dims.batch)?,
        tokens: int("tokens", dims.tokens)?,
        hkv: int("hkv", dims.shape.hkv)?,
        group: int("group", dims.shape.group())?,
        chunks: int("chunks", chunks(dims))?,
        ..Default::default()
    })
}

/// The forward in chunked form (see the module notes); the caller has checked every length and
/// that [`mixer_uses_chunked`] holds. `initial`/`final_state`: device addresses, 0 for none.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: GpuElement>(
    ctx: &GpuContext,
    dims: MixerDims,
    kind: i32,
    scale: f32,
    q: &GpuBuffer<T>,
    k: &GpuBuffer<T>,
    v: &GpuBuffer<T>,
    o: &mut GpuBuffer<T>,
    initial: u64,
    final_state: u64,
) -> Result<()> {
    let d = dims.shape.d;
    let mut plan = ScratchPlan::default();
    let regions = FeatureRegions::plan(&mut plan, dims);
    let state_regions = StateRegions::plan(&mut plan, dims, false);
    let out = ptr_mut(ctx, o);
    let bf16 = T::KERNEL_SUFFIX == "bf16";
    let states_name = if d == 64 { "mixer_chunk_states_d64" } else { "mixer_chunk_states_d128" };
    let output_name = match (d, bf16) {
        (64, true) => "mixer_chunk_output_d64",
        (64, false) => "mixer_chunk_output_f32_d64",
        (_, true) => "mixer_chunk_output_d128",
        (_, false) => "mixer_chunk_output_f32_d128",
    };
    ctx.with_scratch(plan.floats, |base| {
        let f = features(ctx, dims, kind, scale, q, k, v, base, &regions)?;
        let (states, products) = (region(base, state_regions.states), region(base, state_regions.products));
        let p = ChunkParams { qf: f.qf, kf: f.kf, decay: f.decay, vf: f.vf, states, products, o: out, ..sizes(dims)? };
        launch(ctx, states_name, dims, dims.shape.hkv, 256, states_shared(d), &p)?;
        carry(ctx, dims, states, products, initial, final_state, false)?;
        launch(ctx, output_name, dims, dims.shape.hq, 256, output_shared(d), &p)
    })
}

/// The backward's dqf, dkf and dvf (f32, at `outs`) in chunked form from the feature maps `f`
/// and the output gradient `d_o` (f32), zero initial state; `at` was planned for the backward.
pub(super) fn backward(
    ctx: &GpuContext,
    dims: MixerDims,
    f: &Features,
    d_o: u64,
    outs: [u64; 3],
    base: u64,
    at: &StateRegions,
) -> Result<()> {
    let d = dims.shape.d;
    let rstates =
        at.rstates.ok_or_else(|| Error::internal("the chunked backward needs the state gradient's scratch region"))?;
    let (states, rstates, products) = (region(base, at.states), region(base, rstates), region(base, at.products));
    let [dqf, dkf, dvf] = outs;
    let p = ChunkParams {
        qf: f.qf,
        kf: f.kf,
        decay: f.decay,
        vf: f.vf,
        d_o,
        states,
        rstates,
        products,
        dqf,
        dkf,
        dvf,
        ..sizes(dims)?
    };
    let names: [&'static str; 4] = if d == 64 {
        ["mixer_chunk_states_d64", "mixer_chunk_states_reverse_d64", "mixer_chunk_dq_d64", "mixer_chunk_dkv_d64"]
    } else {
        ["mixer_chunk_states_d128", "mixer_chunk_states_reverse_d128", "mixer_chunk_dq_d128", "mixer_chunk_dkv_d128"]
    };
    let hkv = dims.shape.hkv;
    launch(ctx, names[0], dims, hkv, 256, states_shared(d), &p)?;
    launch(ctx, names[1], dims, hkv, 256, states_shared(d), &p)?;
    carry(ctx, dims, states, products, 0, 0, false)?;
    carry(ctx, dims, rstates, products, 0, 0, true)?;
    launch(ctx, names[2], dims, dims.shape.hq, 256, dq_shared(d), &p)?;
    launch(ctx, names[3], dims, hkv, 256, dkv_shared(d), &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_params_have_the_kernel_layout() {
        // Twelve 8-byte pointers, then five ints, padded to 8 bytes.
        assert_eq!(std::mem::size_of::<ChunkParams>(), 12 * 8 + 6 * 4);
    }

    #[test]
    fn shared_memory_fits_an_sm() {
        for d in [64, 128] {
            for bytes in [states_shared(d), output_shared(d), dq_shared(d), dkv_shared(d)] {
                assert!(bytes <= crate::context::MAX_SHARED_BYTES, "d = {d}: {bytes} bytes");
            }
        }
    }
}
