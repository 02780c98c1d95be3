//! Scans cut over time, so that few sequences and heads still fill the GPU.
//!
//! A scan over whole sequences has one CTA per (column block, kv head, sequence): 48 CTAs for 8
//! sequences of a 3-kv-head model with d = 64, on a GPU that holds hundreds. So each sequence
//! is cut into P segments, grid.z = (sequence, segment), and the scan runs in three passes:
//! 1. the state pass: each segment scans from a zero state without reading out, writing its
//!    final ("local") state and the product of the decays it applied;
//! 2. the carry (`mixer_segment_carry`): per state value, a walk over the P segments in scan
//!    order, `start(next) = decay product (.) start(this) + local(this)`, leaving each
//!    segment's true initial state (and the final state after the last);
//! 3. the full pass: each segment scans again from its true initial state, reading out.
//!
//! Pass 3 is the sequential scan's work split P ways; pass 1 is cheaper (no read-out), pass 2
//! is small. The forward's and each backward scan's recurrences are all linear, so the same
//! passes serve every scan; reverse scans carry from the last segment to the first. The
//! results equal the sequential scan's up to float rounding.
//!
//! How many segments: a model of the run time, in waves of resident CTAs (occupancy x SMs),
//! picks the count (and for the backward whether its three scans run side by side). Measured
//! on an H100 against fixed counts 1..16, its choice was within 9% of the best at every shape
//! timed (B=8 with 3 or 8 kv heads, d=64, T=1024; the 8-kv-head d=128 anchor stays at one
//! segment, where any cut was slower).

use super::gla_scan::{launch_scans, scan_function, scan_threads, Scan, ScanJob, SCAN_COLS};
use super::{int, threads, MixerDims, ScratchPlan};
use crate::context::GpuContext;
use crate::error::driver_error;
use crate::kernels::GLA_SCAN;
use cudarc::driver::PushKernelArg;
use liger_core::{Error, Result};

/// How a mixer's scans split each sequence over time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeSegments {
    /// The chunked form (`gla_chunk.rs`) where it applies and was measured faster (bf16, head
    /// size 64, not rwkv6: `mixer_uses_chunked`); elsewhere the scan with as many segments as
    /// fill the GPU best (one when the grid already fills it).
    #[default]
    Auto,
    /// This many segments of equal length (the last may be shorter; at most one per token).
    /// `Fixed(1)` is the sequential scan.
    Fixed(usize),
    /// As `Auto`, with bf16 chunk products accepted for f32 inputs too (the mixer of a bf16
    /// model, which runs on f32 activations).
    AutoBf16Products,
    /// The scan with the automatic plan of segments, even where `Auto` would pick the chunked form.
    Scan,
    /// The chunked form on tensor cores (`gla_chunk.rs`) where it applies (head size 64 or 128,
    /// not rwkv6), even where `Auto` would pick the scan; elsewhere the scan as under `Scan`.
    Chunked,
}

/// Fewest tokens per segment of the automatic plan: shorter ones cost more in the extra
/// passes than they gain.
const MIN_SEGMENT: usize = 64;
/// Most segments per sequence of the automatic plan.
const MAX_SEGMENTS: usize = 64;
/// Run time of a segmented scan relative to the sequential scan's work split P ways: the
/// state pass (a scan without read-out) and the carry.
const SEGMENT_OVERHEAD: f64 = 1.5;

/// Segments of every sequence: `count` of `len` tokens (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentPlan {
    pub count: usize,
    pub len: usize,
}

impl SegmentPlan {
    /// About `want` segments, their length a multiple of `multiple`; never an empty one.
    fn split(tokens: usize, want: usize, multiple: usize) -> Self {
        let len = tokens.div_ceil(want.max(1)).next_multiple_of(multiple.max(1)).max(1);
        SegmentPlan { count: tokens.div_ceil(len).max(1), len }
    }
}

/// How a group of scans runs: in one launch side by side, or one launch each, and over which segments.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    pub side_by_side: bool,
    pub plan: SegmentPlan,
}

/// Relative run time of `launches` launches of `ctas` CTAs, each sequence cut into `count`
/// segments, on a GPU holding `slots` CTAs at once.
fn cost(launches: usize, ctas: usize, count: usize, slots: usize) -> f64 {
    let waves = (ctas * count).div_ceil(slots.max(1));
    let overhead = if count > 1 { SEGMENT_OVERHEAD } else { 1.0 };
    launches as f64 * waves as f64 / count as f64 * overhead
}

/// The segment count in `counts` of least cost (the smallest among equals) and its cost.
fn best_count(launches: usize, ctas: usize, slots: usize, counts: std::ops::RangeInclusive<usize>) -> (usize, f64) {
    let mut best = (*counts.start(), f64::INFINITY);
    for count in counts {
        let c = cost(launches, ctas, count, slots);
        if c < best.1 {
            best = (count, c);
        }
    }
    best
}

/// Streaming multiprocessors of the context's GPU.
fn multiprocessors(ctx: &GpuContext) -> Result<usize> {
    use cudarc::driver::{result::device, sys::CUdevice_attribute};
    let reading = "reading the GPU's multiprocessor count";
    let dev = device::get(ctx.info().index as i32).map_err(|e| driver_error(e, reading))?;
    // SAFETY: `dev` came from cuDeviceGet.
    let count = unsafe { device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) }
        .map_err(|e| driver_error(e, reading))?;
    Ok(count.max(1) as usize)
}

/// CTAs of kernel `name` with `shared` bytes that the whole GPU holds at once.
fn resident_ctas(ctx: &GpuContext, name: &'static str, d: usize, shared: usize) -> Result<usize> {
    let f = scan_function(ctx, name, shared)?;
    let per_sm = f
        .occupancy_max_active_blocks_per_multiprocessor(scan_threads(d) as u32, shared, None)
        .map_err(|e| driver_error(e, &format!("occupancy of {name}")))?;
    Ok(multiprocessors(ctx)? * (per_sm.max(1) as usize))
}

/// Chooses how `jobs` (one scan, or the backward's three) run: `side_by_side`, the kernel that
/// runs them all in one launch, if any.
pub(super) fn schedule(
    ctx: &GpuContext,
    dims: MixerDims,
    jobs: &[ScanJob],
    side_by_side: Option<&'static str>,
    segments: TimeSegments,
) -> Result<Schedule> {
    let (tokens, d) = (dims.tokens, dims.shape.d);
    // grid.z (sequences x segments) is at most 65535.
    let most = (65535 / dims.batch.max(1)).max(1);
    let counts = match segments {
        TimeSegments::Auto | TimeSegments::AutoBf16Products | TimeSegments::Scan | TimeSegments::Chunked => {
            1..=(tokens / MIN_SEGMENT).clamp(1, MAX_SEGMENTS).min(most)
        }
        TimeSegments::Fixed(0) => {
            return Err(Error::invalid_argument(
                "a scan needs at least one time segment per sequence: use Fixed(1) or more, or Auto",
            ))
        }
        TimeSegments::Fixed(n) => {
            let n = n.min(tokens.max(1)).min(most);
            n..=n
        }
    };
    let ctas = d.div_ceil(SCAN_COLS) * dims.shape.hkv * dims.batch;
    let mut separate_slots = usize::MAX;
    for job in jobs {
        separate_slots = separate_slots.min(resident_ctas(ctx, job.entry(), d, job.shared)?);
    }
    let (mut count, best) = best_count(jobs.len(), ctas, separate_slots, counts.clone());
    let mut together = false;
    if let (Some(name), true) = (side_by_side, jobs.len() > 1) {
        let shared = jobs.iter().map(|j| j.shared).max().unwrap_or(0);
        let (c, t) = best_count(1, ctas * jobs.len(), resident_ctas(ctx, name, d, shared)?, counts);
        // Equal costs: one launch each (measured faster for grids that fill the GPU).
        if t < best {
            (count, together) = (c, true);
        }
    }
    // Automatic segments end on tile boundaries; fixed ones are as even as they can be.
    let multiple = match segments {
        TimeSegments::Auto | TimeSegments::AutoBf16Products | TimeSegments::Scan | TimeSegments::Chunked => {
            jobs.iter().map(ScanJob::tile).max().unwrap_or(1)
        }
        TimeSegments::Fixed(_) => 1,
    };
    Ok(Schedule { side_by_side: together, plan: SegmentPlan::split(tokens, count, multiple) })
}

/// Scratch regions of a segmented scan: per job, its segments' states and decay products.
pub(super) struct SegmentRegions {
    per_job: Vec<(usize, usize)>,
}

impl SegmentRegions {
    /// Reserves the regions of `jobs` scans under `schedule` (none for one segment).
    pub(super) fn plan(plan: &mut ScratchPlan, dims: MixerDims, schedule: &Schedule, jobs: usize) -> Self {
        let count = schedule.plan.count;
        if count == 1 {
            return SegmentRegions { per_job: Vec::new() };
        }
        let (sequences, hkv, d) = (dims.batch * count, dims.shape.hkv, dims.shape.d);
        let per_job = (0..jobs).map(|_| (plan.take(sequences * hkv * d * d), plan.take(sequences * hkv * d))).collect();
        SegmentRegions { per_job }
    }
}

/// Queues the scans of `jobs` (built over whole sequences, with their initial and final states)
/// as `schedule` says; `base` is the scratch memory's address.
pub(super) fn run(
    ctx: &GpuContext,
    dims: MixerDims,
    jobs: &[ScanJob],
    side_by_side: &'static str,
    schedule: &Schedule,
    regions: &SegmentRegions,
    base: u64,
) -> Result<()> {
    let launch = |jobs: &[ScanJob]| -> Result<()> {
        if schedule.side_by_side {
            launch_scans(ctx, side_by_side, dims, jobs)
        } else {
            jobs.iter().try_for_each(|job| launch_scans(ctx, job.entry(), dims, std::slice::from_ref(job)))
        }
    };
    let SegmentPlan { count, len } = schedule.plan;
    if count == 1 {
        return launch(jobs);
    }
    let at = |offset: usize| super::region(base, offset);
    let mut state_jobs = Vec::with_capacity(jobs.len());
    for (job, &(states, products)) in jobs.iter().zip(&regions.per_job) {
        state_jobs.push(job.state_pass(ctx, count, len, at(states), at(products))?);
    }
    launch(&state_jobs)?;
    for (job, &(states, products)) in jobs.iter().zip(&regions.per_job) {
        carry(ctx, dims, job, count, at(states), at(products))?;
    }
    let full: Vec<ScanJob> =
        jobs.iter().zip(&regions.per_job).map(|(job, &(states, _))| job.full_pass(count, len, at(states))).collect();
    launch(&full)
}

/// Turns the segments' local states at `states` into their initial states (and writes the
/// job's final state, if it has one); see `mixer_segment_carry`.
fn carry(ctx: &GpuContext, dims: MixerDims, job: &ScanJob, count: usize, states: u64, products: u64) -> Result<()> {
    let (d, hkv) = (dims.shape.d, dims.shape.hkv);
    let name = "mixer_segment_carry";
    let func = ctx.function(&GLA_SCAN, name)?;
    let (initial, final_state) = job.states();
    let (batch, segments, hkv_arg, d_arg) =
        (int("batch", dims.batch)?, int("segments", count)?, int("hkv", hkv)?, int("d", d)?);
    let decay_cols = i32::from(job.scan.decays_columns());
    let reverse = i32::from(matches!(job.scan, Scan::RowsReverse | Scan::ColsReverse));
    let mut launch = ctx.stream().launch_builder(&func);
    launch.arg(&states).arg(&products).arg(&initial).arg(&final_state);
    launch.arg(&batch).arg(&segments).arg(&hkv_arg).arg(&d_arg).arg(&decay_cols).arg(&reverse);
    // SAFETY: states [B, count, hkv, d, d] and products [B, count, hkv, d] were reserved for
    // this plan; the initial and final states (if any) hold [B, hkv, d, d]; one thread per value.
    ctx.check_launch(unsafe { launch.launch(threads(dims.batch * hkv * d * d)) }, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_every_token_once_and_none_is_empty() {
        for tokens in [1, 5, 63, 64, 100, 1000, 1024, 2048] {
            for want in [1, 2, 3, 7, 16, 64, 5000] {
                for multiple in [1, 12, 16] {
                    let p = SegmentPlan::split(tokens, want, multiple);
                    assert!(p.count >= 1 && p.count <= want.max(1), "{tokens} {want} {multiple}: {p:?}");
                    assert!(
                        (p.count - 1) * p.len < tokens && p.count * p.len >= tokens,
                        "{tokens} {want} {multiple}: {p:?}"
                    );
                    if p.count > 1 {
                        assert_eq!(p.len % multiple, 0);
                    }
                }
            }
        }
        assert_eq!(SegmentPlan::split(100, 7, 1), SegmentPlan { count: 7, len: 15 });
    }

    #[test]
    fn the_cost_model_fills_the_gpu_without_a_ragged_wave() {
        // 48 CTAs on 264 slots: 5 segments fill one wave; 6 would need a second.
        assert_eq!(best_count(1, 48, 264, 1..=6).0, 5);
        // A grid that fills the GPU stays whole.
        assert_eq!(best_count(1, 256, 264, 1..=16).0, 1);
        // Side by side beats one launch each for small grids at one segment.
        assert!(cost(1, 3 * 16, 1, 264) < cost(3, 16, 1, 264));
        assert_eq!(best_count(1, 48, 264, 1..=1).0, 1);
    }
}
