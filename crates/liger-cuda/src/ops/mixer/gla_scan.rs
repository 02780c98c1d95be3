//! The scan kernel's launches (`gated_scan` in `kernels/gla_scan.cu`): its uses, parameters,
//! shared-memory tiles and grid. One CTA per (column block, kv head, sequence x time segment).

use super::MixerDims;
use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::GLA_SCAN;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use liger_core::{Error, Result};

/// Warps of a scan CTA (kernel macro SCAN_WARPS): one per 16 of its (padded) state rows.
fn scan_warps(rows: usize) -> usize {
    rows / 16
}
/// State columns per scan CTA (one per lane).
pub(super) const SCAN_COLS: usize = 32;
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
pub(super) const MAX_TILE: usize = 16;

/// State rows of a scan CTA, padded: the kernel variant for head sizes up to 64 or up to 128.
pub(super) fn padded_rows(d: usize) -> usize {
    if d <= 64 {
        64
    } else {
        128
    }
}

/// The uses of the scan kernel (see the module notes); `Step` is a decoding step that applies
/// the feature maps itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scan {
    Forward,
    Step,
    ColsForward,
    RowsReverse,
    ColsReverse,
}

impl Scan {
    /// The kernel entry point of this scan alone.
    pub(super) fn entry(self, bf16_out: bool, rows: usize) -> &'static str {
        match (self, bf16_out, rows) {
            (Scan::Forward, false, 64) => "mixer_scan_forward_f32_d64",
            (Scan::Forward, false, _) => "mixer_scan_forward_f32_d128",
            (Scan::Forward, true, 64) => "mixer_scan_forward_bf16_d64",
            (Scan::Forward, true, _) => "mixer_scan_forward_bf16_d128",
            (Scan::Step, false, 64) => "mixer_step_f32_d64",
            (Scan::Step, false, _) => "mixer_step_f32_d128",
            (Scan::Step, true, 64) => "mixer_step_bf16_d64",
            (Scan::Step, true, _) => "mixer_step_bf16_d128",
            (Scan::ColsForward, _, 64) => "mixer_scan_cols_forward_d64",
            (Scan::ColsForward, _, _) => "mixer_scan_cols_forward_d128",
            (Scan::RowsReverse, _, 64) => "mixer_scan_rows_reverse_d64",
            (Scan::RowsReverse, _, _) => "mixer_scan_rows_reverse_d128",
            (Scan::ColsReverse, _, 64) => "mixer_scan_cols_reverse_d64",
            (Scan::ColsReverse, _, _) => "mixer_scan_cols_reverse_d128",
        }
    }
    pub(super) fn decays_columns(self) -> bool {
        matches!(self, Scan::ColsForward | Scan::ColsReverse)
    }
}

/// Floats of shared memory per token of a scan tile (kernel: `tile_buffer_floats` and the
/// layout in `gated_scan`): two buffers of x, y, w and decays, and the warps' partial read-outs.
fn scan_floats_per_token(x_n: usize, w_n: usize, rows: usize, decay_cols: bool) -> usize {
    let buffer = x_n * rows + x_n * SCAN_COLS + w_n * rows + if decay_cols { SCAN_COLS } else { rows };
    2 * buffer + scan_warps(rows) * w_n * SCAN_COLS
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
pub(super) struct ScanParams {
    x: u64,
    y: u64,
    w: u64,
    decay: u64,
    out: u64,
    initial: u64,
    final_state: u64,
    decay_product: u64,
    batch: i32,
    tokens: i32,
    hkv: i32,
    d: i32,
    x_n: i32,
    w_n: i32,
    tile: i32,
    kind: i32,
    gate_scale: f32,
    segments: i32,
    segment_len: i32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for ScanParams {}

pub(super) fn ptr<T: DeviceRepr>(ctx: &GpuContext, buf: &GpuBuffer<T>) -> u64 {
    buf.slice().device_ptr(ctx.stream()).0
}

pub(super) fn ptr_mut<T: DeviceRepr>(ctx: &GpuContext, buf: &mut GpuBuffer<T>) -> u64 {
    buf.slice_mut().device_ptr_mut(ctx.stream()).0
}

pub(super) fn int(name: &str, value: usize) -> Result<i32> {
    crate::launch::as_int(name, value)
}

/// Device pointers of one scan's operands (a decoding step: raw k, v, q as x, y, w, and the
/// mixer kind and gate scale for their feature maps).
#[derive(Clone, Copy, Default)]
pub(super) struct ScanOperands {
    pub x: u64,
    pub y: u64,
    pub w: u64,
    pub decay: u64,
    pub out: u64,
    pub initial: u64,
    pub final_state: u64,
    pub kind: i32,
    pub gate_scale: f32,
}

/// One scan ready to launch: which scan, its parameters, the heads per kv head of x/y and of
/// w/out, and its shared memory bytes.
#[derive(Clone, Copy)]
pub(super) struct ScanJob {
    pub scan: Scan,
    pub bf16_out: bool,
    pub params: ScanParams,
    pub shared: usize,
}

impl ScanJob {
    /// A scan's kernel parameters over whole sequences (one segment). Every pointer must hold
    /// the `[B, T, heads, d]` tensor its role needs (`x_n` heads per kv head for x and y, `w_n`
    /// for w and out); the callers check the lengths.
    pub(super) fn new(
        ctx: &GpuContext,
        scan: Scan,
        bf16_out: bool,
        dims: MixerDims,
        ops: ScanOperands,
        x_n: usize,
        w_n: usize,
    ) -> Result<Self> {
        let d = dims.shape.d;
        let rows = padded_rows(d);
        // No longer than the sequence: a short one (a decoding step) then clears less shared memory.
        let tile = scan_tile(x_n, w_n, rows, scan.decays_columns(), scan_shared_bytes(ctx.info().compute_capability))?
            .min(dims.tokens.max(1));
        let params = ScanParams {
            x: ops.x,
            y: ops.y,
            w: ops.w,
            decay: ops.decay,
            out: ops.out,
            initial: ops.initial,
            final_state: ops.final_state,
            decay_product: 0,
            batch: int("batch", dims.batch)?,
            tokens: int("tokens", dims.tokens)?,
            hkv: int("hkv", dims.shape.hkv)?,
            d: int("d", d)?,
            x_n: int("group", x_n)?,
            w_n: int("group", w_n)?,
            tile: tile as i32,
            kind: ops.kind,
            gate_scale: ops.gate_scale,
            segments: 1,
            segment_len: int("tokens", dims.tokens.max(1))?,
        };
        Ok(ScanJob {
            scan,
            bf16_out,
            params,
            shared: tile * scan_floats_per_token(x_n, w_n, rows, scan.decays_columns()) * 4,
        })
    }

    /// Tokens per shared-memory tile.
    pub(super) fn tile(&self) -> usize {
        self.params.tile as usize
    }

    /// The kernel entry point of this scan alone.
    pub(super) fn entry(&self) -> &'static str {
        self.scan.entry(self.bf16_out, padded_rows(self.params.d as usize))
    }

    /// The same scan over segments of `len` tokens (`count` per sequence), each from its
    /// initial state at `initial` (`[B * count, hkv, d, d]`), writing its outputs.
    pub(super) fn full_pass(&self, count: usize, len: usize, initial: u64) -> Self {
        let mut job = *self;
        job.params.segments = count as i32;
        job.params.segment_len = len as i32;
        job.params.initial = initial;
        job.params.final_state = 0;
        job
    }

    /// The first pass over segments: each scans from a zero state without reading out (no w,
    /// no outputs), writing its final state to `states` and its decay product to `products`.
    pub(super) fn state_pass(
        &self,
        ctx: &GpuContext,
        count: usize,
        len: usize,
        states: u64,
        products: u64,
    ) -> Result<Self> {
        let p = &self.params;
        let rows = padded_rows(p.d as usize);
        let x_n = p.x_n as usize;
        let tile =
            scan_tile(x_n, 0, rows, self.scan.decays_columns(), scan_shared_bytes(ctx.info().compute_capability))?
                .min(len);
        let params = ScanParams {
            w: 0,
            out: 0,
            initial: 0,
            final_state: states,
            decay_product: products,
            w_n: 0,
            tile: tile as i32,
            segments: count as i32,
            segment_len: len as i32,
            ..*p
        };
        Ok(ScanJob {
            params,
            shared: tile * scan_floats_per_token(x_n, 0, rows, self.scan.decays_columns()) * 4,
            ..*self
        })
    }

    /// Device addresses of the initial and final states (0 for none).
    pub(super) fn states(&self) -> (u64, u64) {
        (self.params.initial, self.params.final_state)
    }

    /// Sequences x segments: the grid's z.
    pub(super) fn sequences(&self) -> usize {
        self.params.batch as usize * self.params.segments as usize
    }
}

/// Threads of a scan CTA for head size `d`.
pub(super) fn scan_threads(d: usize) -> usize {
    scan_warps(padded_rows(d)) * 32
}

/// Kernel `name`, allowed `shared` bytes of dynamic shared memory.
pub(super) fn scan_function(
    ctx: &GpuContext,
    name: &'static str,
    shared: usize,
) -> Result<cudarc::driver::CudaFunction> {
    ctx.function_with_shared(&GLA_SCAN, name, shared)
}

/// Queues one launch of scan kernel `name` with one CTA per (column block, kv head, sequence x
/// segment) for each of `jobs` (the backward's three scans may run side by side in one launch;
/// they then share one segment plan).
pub(super) fn launch_scans(ctx: &GpuContext, name: &'static str, dims: MixerDims, jobs: &[ScanJob]) -> Result<()> {
    let d = dims.shape.d;
    let sequences = jobs[0].sequences();
    // Offsets inside the kernel are 64-bit; the grid's y and z are at most 65535.
    if sequences > 65535 || dims.shape.hkv > 65535 {
        return Err(Error::invalid_argument(format!(
            "batch {} x {} key-value heads is more than one GPU launch takes (65535 each): split the batch",
            dims.batch, dims.shape.hkv
        )));
    }
    let shared = jobs.iter().map(|j| j.shared).max().unwrap_or(0);
    let cfg = LaunchConfig {
        grid_dim: ((jobs.len() * d.div_ceil(SCAN_COLS)) as u32, dims.shape.hkv as u32, sequences as u32),
        block_dim: (scan_threads(d) as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    let f = scan_function(ctx, name, shared)?;
    let mut launch = ctx.stream().launch_builder(&f);
    for job in jobs {
        launch.arg(&job.params);
    }
    // SAFETY: the pointers hold the tensors of `dims` (checked by the callers), the grid
    // covers (column block, kv head, sequence x segment) per scan and the shared memory fits every tile.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

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
        assert_eq!(
            scan_tile(1, 64, 128, false, scan_shared_bytes((9, 0))).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(padded_rows(64), 64);
        assert_eq!(padded_rows(80), 128);
        assert_eq!(padded_rows(128), 128);
    }

    #[test]
    fn scan_params_have_the_kernel_layout() {
        // Eight 8-byte pointers, then eight ints, a float and two ints, padded to 8 bytes.
        assert_eq!(std::mem::size_of::<ScanParams>(), 8 * 8 + 12 * 4);
    }
}
