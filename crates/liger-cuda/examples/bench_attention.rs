//! Attention kernel timings: forward, forward + backward and decoding, for the sliding window
//! (65 keys) and full causal attention, f32 and bf16. CUDA events around each call, after a
//! warm-up; prints one JSON line per case with the median in ms.
//!
//! `cargo run -p liger-cuda --release --example bench_attention [B T hq hkv d]`
//! (default 8 2048 32 8 128, the shape of the published anchors).

use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use liger_core::liger::{HeadShape, Window};
use liger_core::Result;
use liger_cuda::ops::attention::{attention_backward, attention_decode, attention_forward, AttentionDims};
use liger_cuda::{GpuBuffer, GpuContext, GpuElement};

/// Median of the CUDA-event times of `run`, after warm-up calls; at most ~2 s of timed calls.
fn time_ms(ctx: &GpuContext, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        run()?;
    }
    ctx.synchronize()?;
    let event = |_| {
        ctx.stream()
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| liger_core::Error::internal(format!("{e:?}")))
    };
    let (start, end) = (event(())?, event(())?);
    let mut times = Vec::new();
    let mut spent = 0.0;
    while times.len() < 30 && (times.len() < 5 || spent < 2000.0) {
        start.record(ctx.stream()).map_err(|e| liger_core::Error::internal(format!("{e:?}")))?;
        run()?;
        end.record(ctx.stream()).map_err(|e| liger_core::Error::internal(format!("{e:?}")))?;
        let ms = start.elapsed_ms(&end).map_err(|e| liger_core::Error::internal(format!("{e:?}")))? as f64;
        spent += ms;
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn random<T: GpuElement>(ctx: &GpuContext, n: usize, seed: u64) -> Result<GpuBuffer<T>> {
    // A cheap deterministic generator: speed does not depend on the values.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let host: Vec<T> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            T::from_f32((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        })
        .collect();
    GpuBuffer::from_host(ctx, &host)
}

fn bench<T: GpuElement>(ctx: &GpuContext, dims: AttentionDims, label: &str) -> Result<()> {
    let HeadShape { hq, hkv, d } = dims.shape;
    let (qn, kn) = (dims.batch * dims.tokens * hq * d, dims.batch * dims.tokens * hkv * d);
    let (q, k, v, d_o) =
        (random::<T>(ctx, qn, 1)?, random::<T>(ctx, kn, 2)?, random::<T>(ctx, kn, 3)?, random::<T>(ctx, qn, 4)?);
    let mut o = GpuBuffer::<T>::zeros(ctx, qn)?;
    let mut lse = GpuBuffer::<f32>::zeros(ctx, dims.batch * hq * dims.tokens)?;
    let (mut dq, mut dk, mut dv) =
        (GpuBuffer::<T>::zeros(ctx, qn)?, GpuBuffer::<T>::zeros(ctx, kn)?, GpuBuffer::<T>::zeros(ctx, kn)?);
    for (window, name) in
        [(Some(65.into()), "window65"), (Some(Window { keys: 65, sinks: 4 }), "window65+4sinks"), (None, "causal")]
    {
        let fwd = time_ms(ctx, || attention_forward(ctx, dims, window, &q, &k, &v, &mut o, &mut lse))?;
        let fwd_bwd = time_ms(ctx, || {
            attention_forward(ctx, dims, window, &q, &k, &v, &mut o, &mut lse)?;
            attention_backward(ctx, dims, window, &q, &k, &v, &o, &lse, &d_o, &mut dq, &mut dk, &mut dv)
        })?;
        println!(
            "{{\"bench\":\"attention\",\"dtype\":\"{label}\",\"mask\":\"{name}\",\"B\":{},\"T\":{},\"hq\":{hq},\"hkv\":{hkv},\"d\":{d},\"fwd_ms\":{fwd:.4},\"fwd_bwd_ms\":{fwd_bwd:.4}}}",
            dims.batch, dims.tokens
        );
    }
    // Decoding one token per sequence against a cache of `capacity` keys.
    for capacity in [65, dims.tokens] {
        let cache = dims.batch * hkv * capacity * d;
        let (kc, vc) = (random::<T>(ctx, cache, 5)?, random::<T>(ctx, cache, 6)?);
        let q_t = random::<T>(ctx, dims.batch * hq * d, 7)?;
        let lengths = GpuBuffer::from_host(ctx, &vec![capacity as u32; dims.batch])?;
        let mut o_t = GpuBuffer::<T>::zeros(ctx, dims.batch * hq * d)?;
        let ms = time_ms(ctx, || {
            attention_decode(ctx, dims.batch, dims.shape, capacity, &q_t, &kc, &vc, &lengths, &mut o_t)
        })?;
        println!("{{\"bench\":\"attention_decode\",\"dtype\":\"{label}\",\"B\":{},\"keys\":{capacity},\"hq\":{hq},\"hkv\":{hkv},\"d\":{d},\"ms\":{ms:.4}}}", dims.batch);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<usize> =
        std::env::args().skip(1).map(|a| a.parse().expect("sizes are whole numbers: B T hq hkv d")).collect();
    let [batch, tokens, hq, hkv, d] = match args.as_slice() {
        [] => [8, 2048, 32, 8, 128],
        &[b, t, hq, hkv, d] => [b, t, hq, hkv, d],
        _ => panic!("usage: bench_attention [B T hq hkv d]"),
    };
    let ctx = GpuContext::new(0)?;
    println!("{{\"device\":\"{}\"}}", ctx.info().name);
    let dims = AttentionDims { batch, tokens, shape: HeadShape::new(hq, hkv, d)? };
    bench::<bf16>(&ctx, dims, "bf16")?;
    bench::<f32>(&ctx, dims, "f32")?;
    Ok(())
}
