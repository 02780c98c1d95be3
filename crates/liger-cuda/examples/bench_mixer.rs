//! Times the GPU mixer kernels (forward, backward, decoding step) with CUDA events after
//! warm-up, median of several runs; prints one JSON line per measurement. Each shape is timed
//! four ways: one sequential scan per sequence ("segments":"1"), the scans cut into time
//! segments as the library plans them ("scan"), the chunked tensor-core form ("chunked"), and
//! the library's default choice ("auto"). With `--chunked`, only the anchor and the training shapes. With `--sweep`, the training
//! shapes are timed at fixed segment counts instead, to check the plan's choice.
//! Run on a machine with an NVIDIA GPU: `cargo run -p liger-cuda --release --example bench_mixer`.

use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use liger_core::liger::{HeadShape, MixerConfig, MixerKind};
use liger_core::Result;
use liger_cuda::ops::mixer::{
    mixer_chunk_backward_in_segments, mixer_chunk_forward_in_segments, mixer_recurrent_step, mixer_segment_plan,
    mixer_state_len, MixerDims, TimeSegments,
};
use liger_cuda::{GpuBuffer, GpuContext, GpuElement};

const WARMUP: usize = 3;
const RUNS: usize = 15;

/// Median milliseconds of `f` over RUNS runs, timed with CUDA events on the context's stream.
fn time_ms(ctx: &GpuContext, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let fail = |e: cudarc::driver::DriverError| liger_core::Error::internal(format!("CUDA event: {e:?}"));
    for _ in 0..WARMUP {
        f()?;
    }
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = ctx.stream().record_event(timing).map_err(fail)?;
        f()?;
        let end = ctx.stream().record_event(timing).map_err(fail)?;
        end.synchronize().map_err(fail)?;
        times.push(start.elapsed_ms(&end).map_err(fail)? as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[RUNS / 2])
}

/// Values in [-1, 1) from a simple generator (timings do not depend on the values).
fn values<T: GpuElement>(n: usize, seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            T::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

/// Keeps freed device memory in the driver's default pool instead of returning it at each
/// synchronisation, so that the operations' scratch buffers are not mapped afresh every call.
fn keep_pool_memory() -> Result<()> {
    use cudarc::driver::sys;
    let fail = |what: &str| liger_core::Error::internal(format!("{what} failed"));
    let (mut dev, mut pool) = (0, std::ptr::null_mut());
    let mut threshold = u64::MAX;
    // SAFETY: plain driver calls on device 0 with out-pointers to locals.
    unsafe {
        sys::cuDeviceGet(&mut dev, 0).result().map_err(|_| fail("cuDeviceGet"))?;
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev).result().map_err(|_| fail("cuDeviceGetDefaultMemPool"))?;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        sys::cuMemPoolSetAttribute(pool, attr, &mut threshold as *mut u64 as *mut std::ffi::c_void)
            .result()
            .map_err(|_| fail("cuMemPoolSetAttribute"))?;
    }
    Ok(())
}

/// The plans a shape is timed with: sequential and automatic.
const PLANS: &[(&str, TimeSegments)] = &[
    ("1", TimeSegments::Fixed(1)),
    ("scan", TimeSegments::Scan),
    ("chunked", TimeSegments::Chunked),
    ("auto", TimeSegments::Auto),
];
/// The plans of `--sweep`.
const SWEEP: &[(&str, TimeSegments)] = &[
    ("1", TimeSegments::Fixed(1)),
    ("2", TimeSegments::Fixed(2)),
    ("3", TimeSegments::Fixed(3)),
    ("4", TimeSegments::Fixed(4)),
    ("6", TimeSegments::Fixed(6)),
    ("8", TimeSegments::Fixed(8)),
    ("11", TimeSegments::Fixed(11)),
    ("16", TimeSegments::Fixed(16)),
    ("auto", TimeSegments::Auto),
];

#[allow(clippy::too_many_arguments)]
fn bench<T: GpuElement>(
    ctx: &GpuContext,
    plans: &[(&str, TimeSegments)],
    pool: &str,
    name: &str,
    kind: MixerKind,
    batch: usize,
    tokens: usize,
    hq: usize,
    hkv: usize,
    d: usize,
) -> Result<()> {
    let shape = HeadShape::new(hq, hkv, d)?;
    let cfg = MixerConfig::new(kind);
    let dims = MixerDims { batch, tokens, shape };
    let (nq, nkv) = (batch * tokens * hq * d, batch * tokens * hkv * d);
    let q = GpuBuffer::from_host(ctx, &values::<T>(nq, 1))?;
    let k = GpuBuffer::from_host(ctx, &values::<T>(nkv, 2))?;
    let v = GpuBuffer::from_host(ctx, &values::<T>(nkv, 3))?;
    let d_o = GpuBuffer::from_host(ctx, &values::<T>(nq, 4))?;
    let mut o = GpuBuffer::<T>::zeros(ctx, nq)?;
    let (mut dq, mut dk, mut dv) =
        (GpuBuffer::<T>::zeros(ctx, nq)?, GpuBuffer::<T>::zeros(ctx, nkv)?, GpuBuffer::<T>::zeros(ctx, nkv)?);
    let plan = mixer_segment_plan::<T>(ctx, &cfg, dims)?;
    println!(
        "{{\"bench\":\"mixer_plan\",\"shape\":\"{name}\",\"dtype\":\"{}\",\"forward_segments\":{},\"backward_segments\":{},\"backward_side_by_side\":{}}}",
        T::KERNEL_SUFFIX,
        plan.forward_segments,
        plan.backward_segments,
        plan.backward_side_by_side
    );
    let mut times = Vec::new();
    for &(label, segments) in plans {
        let fwd = time_ms(ctx, || {
            mixer_chunk_forward_in_segments(ctx, &cfg, dims, &q, &k, &v, &mut o, None, None, segments)
        })?;
        let bwd = time_ms(ctx, || {
            mixer_chunk_backward_in_segments(ctx, &cfg, dims, &q, &k, &v, &d_o, &mut dq, &mut dk, &mut dv, segments)
        })?;
        times.push((label, fwd, bwd));
    }
    let mut state = GpuBuffer::<f32>::zeros(ctx, batch * mixer_state_len(&cfg, shape))?;
    let (qt, kt, vt) = (
        GpuBuffer::from_host(ctx, &values::<T>(batch * hq * d, 5))?,
        GpuBuffer::from_host(ctx, &values::<T>(batch * hkv * d, 6))?,
        GpuBuffer::from_host(ctx, &values::<T>(batch * hkv * d, 7))?,
    );
    let mut ot = GpuBuffer::<T>::zeros(ctx, batch * hq * d)?;
    let step = time_ms(ctx, || mixer_recurrent_step(ctx, &cfg, batch, shape, &mut state, &qt, &kt, &vt, &mut ot))?;
    for (segments, fwd, bwd) in times {
        println!(
            "{{\"bench\":\"mixer\",\"pool\":\"{pool}\",\"shape\":\"{name}\",\"segments\":\"{segments}\",\"kind\":\"{}\",\"dtype\":\"{}\",\"B\":{batch},\"T\":{tokens},\"hq\":{hq},\"hkv\":{hkv},\"d\":{d},\"fwd_ms\":{fwd:.3},\"bwd_ms\":{bwd:.3},\"fwd_bwd_ms\":{:.3},\"step_ms\":{step:.4}}}",
            kind.name(),
            T::KERNEL_SUFFIX,
            fwd + bwd
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let ctx = GpuContext::new(0)?;
    println!("{{\"device\":\"{}\"}}", ctx.info().name);
    if std::env::args().any(|a| a == "--chunked") {
        // The chunked form against the scan at the anchor and the two training shapes.
        keep_pool_memory()?;
        bench::<bf16>(&ctx, PLANS, "kept", "anchor-8b", MixerKind::Gla, 8, 2048, 32, 8, 128)?;
        bench::<bf16>(&ctx, PLANS, "kept", "135m-train", MixerKind::Gla, 8, 1024, 9, 3, 64)?;
        bench::<bf16>(&ctx, PLANS, "kept", "1b-train", MixerKind::Gla, 8, 1024, 32, 8, 64)?;
        return Ok(());
    }
    if std::env::args().any(|a| a == "--sweep") {
        keep_pool_memory()?;
        bench::<bf16>(&ctx, SWEEP, "kept", "135m-train", MixerKind::Gla, 8, 1024, 9, 3, 64)?;
        bench::<bf16>(&ctx, SWEEP, "kept", "1b-train", MixerKind::Gla, 8, 1024, 32, 8, 64)?;
        bench::<bf16>(&ctx, SWEEP, "kept", "anchor-8b", MixerKind::Gla, 8, 2048, 32, 8, 128)?;
        return Ok(());
    }
    // First as the library runs by default (the pool returns memory at synchronisation), then
    // with the pool keeping it, which leaves the kernels' own time.
    bench::<bf16>(&ctx, PLANS, "default", "anchor-8b", MixerKind::Gla, 8, 2048, 32, 8, 128)?;
    bench::<bf16>(&ctx, PLANS, "default", "135m", MixerKind::Gla, 8, 2048, 9, 3, 64)?;
    keep_pool_memory()?;
    bench::<bf16>(&ctx, PLANS, "kept", "anchor-8b", MixerKind::Gla, 8, 2048, 32, 8, 128)?;
    bench::<f32>(&ctx, PLANS, "kept", "anchor-8b", MixerKind::Gla, 8, 2048, 32, 8, 128)?;
    // The training shapes: SmolLM2-135M and a 1B Llama at batch 8, sequences of 1024.
    bench::<bf16>(&ctx, PLANS, "kept", "135m-train", MixerKind::Gla, 8, 1024, 9, 3, 64)?;
    bench::<bf16>(&ctx, PLANS, "kept", "1b-train", MixerKind::Gla, 8, 1024, 32, 8, 64)?;
    bench::<bf16>(&ctx, PLANS, "kept", "1b", MixerKind::Gla, 8, 2048, 32, 8, 64)?;
    bench::<bf16>(&ctx, PLANS, "kept", "135m", MixerKind::Gla, 8, 2048, 9, 3, 64)?;
    bench::<f32>(&ctx, PLANS, "kept", "135m", MixerKind::Gla, 8, 2048, 9, 3, 64)?;
    bench::<bf16>(&ctx, PLANS, "kept", "135m-rwkv6", MixerKind::Rwkv6, 8, 2048, 9, 3, 64)?;
    Ok(())
}
