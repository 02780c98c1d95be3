//! Attention kernels against their CPU twins in liger-core (`swa_forward`, `swa_backward`,
//! `SwaCache`; for the surprise cache `surprise_kept`, `SurpriseMemory` and
//! `surprise_attention_backward`), on fresh random inputs, outputs poisoned before each launch.

mod common;

use common::*;
use half::bf16;
use liger_core::liger::surprise::{
    surprise_attention_backward as cpu_surprise_backward, surprise_kept_with_repeats, RepeatRule,
};
use liger_core::liger::{swa_backward, swa_forward, HeadShape, SurpriseMemory, SwaCache, Window};
use liger_core::ErrorCode;
use liger_cuda::ops::attention::{
    attention_backward, attention_decode, attention_forward, cache_append, cache_prefill, surprise_attention_backward,
    surprise_attention_forward, surprise_select, AttentionDims,
};
use liger_cuda::{GpuBuffer, GpuContext, GpuElement};
use rand::rngs::StdRng;

const FP32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;

/// The CPU twins, one sequence at a time: (o, dq, dk, dv) for the whole batch.
fn cpu_attention(
    dims: AttentionDims,
    window: Option<Window>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
) -> [Vec<f64>; 4] {
    let (qn, kn) = (q.len() / dims.batch, k.len() / dims.batch);
    let w = window.unwrap_or(Window::FULL);
    let mut out: [Vec<f64>; 4] = Default::default();
    for b in 0..dims.batch {
        let (qb, kb, vb, dob) =
            (&q[b * qn..(b + 1) * qn], &k[b * kn..(b + 1) * kn], &v[b * kn..(b + 1) * kn], &d_o[b * qn..(b + 1) * qn]);
        let o = swa_forward(dims.shape, w, qb, kb, vb, None).unwrap();
        let g = swa_backward(dims.shape, w, qb, kb, vb, dob).unwrap();
        for (dst, src) in out.iter_mut().zip([&o, &g.dq, &g.dk, &g.dv]) {
            dst.extend(src.iter().map(|&x| x as f64));
        }
    }
    out
}

/// The log-sum-exp of each query's scaled scores over its window, `[B, hq, T]`, in float64.
fn lse_reference(dims: AttentionDims, window: Option<Window>, q: &[f32], k: &[f32]) -> Vec<f64> {
    let (t, HeadShape { hq, hkv, d }) = (dims.tokens, dims.shape);
    let w = window.unwrap_or(Window::FULL);
    let scale = 1.0 / (d as f64).sqrt();
    let mut lse = Vec::with_capacity(dims.batch * hq * t);
    for b in 0..dims.batch {
        for h in 0..hq {
            let kvh = h / (hq / hkv);
            for i in 0..t {
                let qi = &q[((b * t + i) * hq + h) * d..][..d];
                let scores: Vec<f64> = (0..=i)
                    .filter(|&j| w.sees(i, j))
                    .map(|j| {
                        scale
                            * qi.iter()
                                .zip(&k[((b * t + j) * hkv + kvh) * d..][..d])
                                .map(|(&a, &c)| a as f64 * c as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse.push(m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln());
            }
        }
    }
    lse
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
}

fn inputs(rng: &mut StdRng, dims: AttentionDims) -> Inputs {
    let (qn, kn) = (
        dims.batch * dims.tokens * dims.shape.hq * dims.shape.d,
        dims.batch * dims.tokens * dims.shape.hkv * dims.shape.d,
    );
    // Scores of a few units: softmax is neither flat nor one-hot.
    Inputs { q: random(rng, qn, 1.5), k: random(rng, kn, 1.5), v: random(rng, kn, 1.0), d_o: random(rng, qn, 1.0) }
}

/// Runs forward and backward with storage `T` on `x` (already representable in `T`) and checks
/// every output against the CPU twins.
fn check_attention<T: GpuElement>(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Option<Window>,
    x: &Inputs,
    tol: f64,
    label: &str,
) -> [f64; 5] {
    let up = |h: &[f32]| GpuBuffer::from_host(ctx, &h.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>()).unwrap();
    let (q, k, v, d_o) = (up(&x.q), up(&x.k), up(&x.v), up(&x.d_o));
    let (mut o, mut lse) = (poison::<T>(ctx, x.q.len()), poisoned(ctx, dims.batch * dims.shape.hq * dims.tokens));
    attention_forward(ctx, dims, window, &q, &k, &v, &mut o, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) =
        (poison::<T>(ctx, x.q.len()), poison::<T>(ctx, x.k.len()), poison::<T>(ctx, x.k.len()));
    attention_backward(ctx, dims, window, &q, &k, &v, &o, &lse, &d_o, &mut dq, &mut dk, &mut dv).unwrap();

    let [o_ref, dq_ref, dk_ref, dv_ref] = cpu_attention(dims, window, &x.q, &x.k, &x.v, &x.d_o);
    let lse_ref = lse_reference(dims, window, &x.q, &x.k);
    [
        check_host(&format!("{label} o"), &host(&o), &o_ref, tol),
        check(&format!("{label} lse"), &lse, &lse_ref, tol.min(FP32_TOL)),
        check_gradient(&format!("{label} dq"), &host(&dq), &dq_ref, tol),
        check_gradient(&format!("{label} dk"), &host(&dk), &dk_ref, tol),
        check_host(&format!("{label} dv"), &host(&dv), &dv_ref, tol),
    ]
}

/// As `check_host`, except where the exact gradient is zero everywhere (a window of one key:
/// a softmax over a single key has no gradient), where an error relative to zero means
/// nothing: there the largest absolute value must be below `tol`.
fn check_gradient(name: &str, got: &[f32], reference: &[f64], tol: f64) -> f64 {
    if reference.iter().any(|&r| r != 0.0) {
        return check_host(name, got, reference, tol);
    }
    let unwritten = got.iter().filter(|v| v.is_nan()).count();
    assert_eq!(unwritten, 0, "{name}: {unwritten} of {} elements were not written", got.len());
    let worst = got.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    println!("{name}: exact gradient is zero; max absolute value {worst:.3e} over {} values", got.len());
    assert!(worst < tol, "{name}: max absolute value {worst:.3e} is above {tol:.0e}");
    worst
}

#[test]
fn forward_and_backward_f32_match_the_cpu_twins() {
    let ctx = gpu();
    let mut rng = rng("attention f32");
    let mut worst = [0.0f64; 5];
    for d in [64, 128] {
        for tokens in [100, 300] {
            let dims = AttentionDims { batch: 2, tokens, shape: HeadShape::new(4, 2, d).unwrap() };
            let x = inputs(&mut rng, dims);
            let sinks = |keys, sinks| Some(Window { keys, sinks });
            for window in
                [Some(65.into()), Some(1.into()), Some(16.into()), None, sinks(16, 4), sinks(65, 70), sinks(1, 1)]
            {
                let errs = check_attention::<f32>(
                    &ctx,
                    dims,
                    window,
                    &x,
                    FP32_TOL,
                    &format!("f32 d={d} T={tokens} window={window:?}"),
                );
                worst.iter_mut().zip(errs).for_each(|(w, e)| *w = w.max(e));
            }
        }
    }
    println!("{{\"test\":\"attention_f32\",\"max_rel_err\":{{\"o\":{:.3e},\"lse\":{:.3e},\"dq\":{:.3e},\"dk\":{:.3e},\"dv\":{:.3e}}}}}", worst[0], worst[1], worst[2], worst[3], worst[4]);
}

#[test]
fn forward_and_backward_bf16_match_the_cpu_twins_on_rounded_inputs() {
    let ctx = gpu();
    let mut rng = rng("attention bf16");
    let mut worst = [0.0f64; 5];
    let w = |keys, sinks| Some(Window { keys, sinks });
    for (d, tokens, window) in [
        (64, 300, w(65, 0)),
        (128, 100, None),
        (128, 300, w(16, 0)),
        (64, 100, w(1, 0)),
        (64, 300, None),
        (96, 100, w(65, 0)),
        (64, 300, w(65, 4)),
        (128, 300, w(16, 70)),
        (96, 200, w(16, 4)),
    ] {
        let dims = AttentionDims { batch: 2, tokens, shape: HeadShape::new(4, 2, d).unwrap() };
        let raw = inputs(&mut rng, dims);
        let x =
            Inputs { q: round_bf16(&raw.q), k: round_bf16(&raw.k), v: round_bf16(&raw.v), d_o: round_bf16(&raw.d_o) };
        let errs = check_attention::<bf16>(
            &ctx,
            dims,
            window,
            &x,
            BF16_TOL,
            &format!("bf16 d={d} T={tokens} window={window:?}"),
        );
        worst.iter_mut().zip(errs).for_each(|(w, e)| *w = w.max(e));
    }
    println!("{{\"test\":\"attention_bf16\",\"max_rel_err\":{{\"o\":{:.3e},\"lse\":{:.3e},\"dq\":{:.3e},\"dk\":{:.3e},\"dv\":{:.3e}}}}}", worst[0], worst[1], worst[2], worst[3], worst[4]);
}

/// The first query that no longer sees each token `[T, hkv]`, from the CPU's cache contents:
/// a sink is seen to the end; another token through its window, then for as long as it is kept.
fn runs_from_kept(tokens: usize, hkv: usize, window: Window, slots: usize, kept: &[i32]) -> Vec<i32> {
    let mut until: Vec<i32> = (0..tokens * hkv)
        .map(|r| if r / hkv < window.sinks { tokens } else { (r / hkv + window.keys).min(tokens) } as i32)
        .collect();
    for i in 0..tokens {
        for kvh in 0..hkv {
            for &j in kept[(i * hkv + kvh) * slots..(i * hkv + kvh + 1) * slots].iter().filter(|&&j| j >= 0) {
                until[j as usize * hkv + kvh] = until[j as usize * hkv + kvh].max(i as i32 + 1);
            }
        }
    }
    until
}

/// The surprise cache with storage `T` (and the repeat rule at `repeats`, 0: off): its choice
/// (exact), the forward against the CPU decoding memory, and the backward (choice held fixed)
/// against its CPU twin. Returns (o, dq, dk, dv) errors.
#[allow(clippy::too_many_arguments)]
fn check_surprise<T: GpuElement>(
    ctx: &GpuContext,
    dims: AttentionDims,
    window: Window,
    (slots, repeats): (usize, f64),
    x: &Inputs,
    scores: &[f32],
    tol: f64,
    label: &str,
) -> [f64; 4] {
    let up = |h: &[f32]| GpuBuffer::from_host(ctx, &h.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>()).unwrap();
    let (q, k, v, d_o) = (up(&x.q), up(&x.k), up(&x.v), up(&x.d_o));
    let cache = surprise_select(ctx, dims, window, slots, repeats, &upload(ctx, scores), &upload(ctx, &x.v)).unwrap();
    let (mut o, mut lse) = (poison::<T>(ctx, x.q.len()), poisoned(ctx, dims.batch * dims.shape.hq * dims.tokens));
    surprise_attention_forward(ctx, dims, window, &cache, &q, &k, &v, &mut o, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) =
        (poison::<T>(ctx, x.q.len()), poison::<T>(ctx, x.k.len()), poison::<T>(ctx, x.k.len()));
    surprise_attention_backward(ctx, dims, window, &cache, &q, &k, &v, &o, &lse, &d_o, &mut dq, &mut dk, &mut dv)
        .unwrap();

    let (t, shape) = (dims.tokens, dims.shape);
    let (qn, kn, sn) = (t * shape.hq * shape.d, t * shape.hkv * shape.d, t * shape.hkv);
    let (kept_gpu, until_gpu) = (cache.kept.to_host().unwrap(), cache.until.to_host().unwrap());
    let (tile_until_gpu, tiles) = (cache.tile_until.to_host().unwrap(), t.div_ceil(64));
    let mut refs: [Vec<f64>; 4] = Default::default();
    for b in 0..dims.batch {
        let (qb, kb, vb, dob, sb) = (
            &x.q[b * qn..][..qn],
            &x.k[b * kn..][..kn],
            &x.v[b * kn..][..kn],
            &x.d_o[b * qn..][..qn],
            &scores[b * sn..][..sn],
        );
        let rule = RepeatRule { values: vb, d: shape.d, tolerance: repeats };
        let kept = surprise_kept_with_repeats(shape.hkv, window, slots, sb, Some(rule));
        assert_eq!(&kept_gpu[b * sn * slots..][..sn * slots], &kept[..], "{label}: cache contents of sequence {b}");
        let runs = runs_from_kept(t, shape.hkv, window, slots, &kept);
        assert_eq!(&until_gpu[b * sn..][..sn], &runs[..], "{label}: runs of sequence {b}");
        // The largest run end of each tile of 64 tokens, per key-value head.
        let tile_until: Vec<i32> = (0..shape.hkv * tiles)
            .map(|r| {
                let (kvh, tile) = (r / tiles, r % tiles);
                (tile * 64..t.min(tile * 64 + 64)).map(|j| runs[j * shape.hkv + kvh]).max().unwrap()
            })
            .collect();
        assert_eq!(
            &tile_until_gpu[b * shape.hkv * tiles..][..shape.hkv * tiles],
            &tile_until[..],
            "{label}: tiles of sequence {b}"
        );
        let mut memory = SurpriseMemory::new(shape, window, slots).unwrap().with_repeat_tolerance(repeats).unwrap();
        let o = memory.attend(qb, kb, vb, sb).unwrap();
        let g = cpu_surprise_backward(shape, window, slots, qb, kb, vb, &kept, dob).unwrap();
        for (dst, src) in refs.iter_mut().zip([&o, &g.dq, &g.dk, &g.dv]) {
            dst.extend(src.iter().map(|&x| x as f64));
        }
    }
    [
        check_host(&format!("{label} o"), &host(&o), &refs[0], tol),
        check_host(&format!("{label} dq"), &host(&dq), &refs[1], tol),
        check_host(&format!("{label} dk"), &host(&dk), &refs[2], tol),
        check_host(&format!("{label} dv"), &host(&dv), &refs[3], tol),
    ]
}

#[test]
fn surprise_cache_choice_forward_and_backward_match_the_cpu_twins() {
    let ctx = gpu();
    let mut rng = rng("surprise attention");
    let w = |keys, sinks| Window { keys, sinks };
    for (d, tokens, window, slots, repeats) in [
        (64, 300, w(16, 2), 5, 0.0),
        (64, 300, w(65, 4), 64, 0.0),
        (128, 200, w(16, 0), 40, 0.0),
        (96, 150, w(8, 1), 1, 0.0),
        (64, 700, w(33, 1), 6, 0.0),
        (64, 300, w(16, 2), 5, 0.05),
        (64, 700, w(33, 1), 64, 0.05),
        (128, 200, w(16, 0), 40, 0.3),
    ] {
        let dims = AttentionDims { batch: 2, tokens, shape: HeadShape::new(4, 2, d).unwrap() };
        let mut raw = inputs(&mut rng, dims);
        if repeats > 0.0 {
            // Values from a pool of 9 per head, each copy a little off (about 1% of its norm),
            // so that the rule keeps copies out while distinct values enter.
            let pool = random(&mut rng, 9 * d, 1.0);
            for (row, value) in raw.v.chunks_mut(d).enumerate() {
                let from = &pool[(row * 7 % 9) * d..][..d];
                value.iter_mut().zip(from).for_each(|(v, &p)| *v = p + 0.01 * *v);
            }
        }
        let label = format!("d={d} T={tokens} {window:?} slots={slots} repeats={repeats}");
        // Distinct positive scores: the choice has no ties.
        let scores: Vec<f32> = random(&mut rng, 2 * tokens * 2, 1.0).iter().map(|s| s + 2.0).collect();
        let f32_errs = check_surprise::<f32>(
            &ctx,
            dims,
            window,
            (slots, repeats),
            &raw,
            &scores,
            FP32_TOL,
            &format!("f32 {label}"),
        );
        let x =
            Inputs { q: round_bf16(&raw.q), k: round_bf16(&raw.k), v: round_bf16(&raw.v), d_o: round_bf16(&raw.d_o) };
        let bf16_errs = check_surprise::<bf16>(
            &ctx,
            dims,
            window,
            (slots, repeats),
            &x,
            &scores,
            BF16_TOL,
            &format!("bf16 {label}"),
        );
        println!(
            "{{\"test\":\"surprise_attention\",\"case\":\"{label}\",\"f32\":{f32_errs:?},\"bf16\":{bf16_errs:?}}}"
        );
    }
}

/// Prefills `prefill` tokens (`cache_prefill`), then decodes `steps` tokens for two sequences
/// through `cache_append` + `attention_decode`, comparing each step with `SwaCache::step`.
/// The caches hold `window.capacity()` slots (sinks and a ring buffer) or, for full attention,
/// `capacity` (the total token count).
#[allow(clippy::too_many_arguments)]
fn check_decode<T: GpuElement>(
    ctx: &GpuContext,
    rng: &mut StdRng,
    shape: HeadShape,
    window: Window,
    prefill: usize,
    steps: usize,
    tol: f64,
    label: &str,
) -> f64 {
    let batch = 2;
    let cache_window = if window == Window::FULL { Window::from(prefill + steps) } else { window };
    let capacity = cache_window.capacity();
    let (q_row, kv_row) = (shape.hq * shape.d, shape.hkv * shape.d);
    let cache_len = batch * shape.hkv * capacity * shape.d;
    let up = |h: &[f32]| GpuBuffer::from_host(ctx, &h.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>()).unwrap();
    let (mut k_cache, mut v_cache) = (poison::<T>(ctx, cache_len), poison::<T>(ctx, cache_len));
    let mut cpu: Vec<SwaCache> = (0..batch).map(|_| SwaCache::new(shape, window).unwrap()).collect();

    let k = round_bf16(&random(rng, batch * prefill * kv_row, 1.5));
    let v = round_bf16(&random(rng, batch * prefill * kv_row, 1.0));
    let zeros = GpuBuffer::from_host(ctx, &vec![0u32; batch]).unwrap();
    cache_prefill(ctx, batch, prefill, shape, cache_window, &up(&k), &up(&v), &zeros, &mut k_cache, &mut v_cache)
        .unwrap();
    for (b, cache) in cpu.iter_mut().enumerate() {
        let part = b * prefill * kv_row..(b + 1) * prefill * kv_row;
        cache.extend(&k[part.clone()], &v[part]).unwrap();
    }

    let mut worst = 0.0f64;
    for step in 0..steps {
        let q = round_bf16(&random(rng, batch * q_row, 1.5));
        let k = round_bf16(&random(rng, batch * kv_row, 1.5));
        let v = round_bf16(&random(rng, batch * kv_row, 1.0));
        let pos = (prefill + step) as u32;
        let positions = GpuBuffer::from_host(ctx, &[pos; 2]).unwrap();
        let lengths = GpuBuffer::from_host(ctx, &[(pos + 1).min(capacity as u32); 2]).unwrap();
        cache_append(ctx, batch, shape, cache_window, &up(&k), &up(&v), &positions, &mut k_cache, &mut v_cache)
            .unwrap();
        let mut o = poison::<T>(ctx, batch * q_row);
        attention_decode(ctx, batch, shape, capacity, &up(&q), &k_cache, &v_cache, &lengths, &mut o).unwrap();
        let mut expected = Vec::with_capacity(batch * q_row);
        for (b, cache) in cpu.iter_mut().enumerate() {
            let mut o_b = vec![0.0f32; q_row];
            cache
                .step(
                    &q[b * q_row..(b + 1) * q_row],
                    &k[b * kv_row..(b + 1) * kv_row],
                    &v[b * kv_row..(b + 1) * kv_row],
                    &mut o_b,
                )
                .unwrap();
            expected.extend(o_b.iter().map(|&x| x as f64));
        }
        worst = worst.max(check_host(&format!("{label} step {step}"), &host(&o), &expected, tol));
    }
    worst
}

#[test]
fn decode_matches_swa_cache_steps_and_full_causal_decoding() {
    let ctx = gpu();
    let mut rng = rng("attention decode");
    let mut worst = (0.0f64, 0.0f64);
    for d in [64, 128] {
        let shape = HeadShape::new(4, 2, d).unwrap();
        // The window's ring buffer, prefilled past its capacity and wrapping while decoding.
        worst.0 = worst.0.max(check_decode::<f32>(
            &ctx,
            &mut rng,
            shape,
            16.into(),
            37,
            40,
            FP32_TOL,
            &format!("decode f32 ring d={d}"),
        ));
        worst.0 = worst.0.max(check_decode::<f32>(
            &ctx,
            &mut rng,
            shape,
            65.into(),
            3,
            70,
            FP32_TOL,
            &format!("decode f32 window 65 d={d}"),
        ));
        // Sinks beside the ring: prefilled past both, and filling both while decoding.
        let sinks = |keys, sinks| Window { keys, sinks };
        worst.0 = worst.0.max(check_decode::<f32>(
            &ctx,
            &mut rng,
            shape,
            sinks(16, 4),
            37,
            40,
            FP32_TOL,
            &format!("decode f32 ring + 4 sinks d={d}"),
        ));
        worst.0 = worst.0.max(check_decode::<f32>(
            &ctx,
            &mut rng,
            shape,
            sinks(8, 5),
            2,
            30,
            FP32_TOL,
            &format!("decode f32 ring + 5 sinks from 2 d={d}"),
        ));
        // Full causal: the cache holds every token.
        worst.0 = worst.0.max(check_decode::<f32>(
            &ctx,
            &mut rng,
            shape,
            Window::FULL,
            20,
            40,
            FP32_TOL,
            &format!("decode f32 causal d={d}"),
        ));
        worst.1 = worst.1.max(check_decode::<bf16>(
            &ctx,
            &mut rng,
            shape,
            16.into(),
            37,
            20,
            BF16_TOL,
            &format!("decode bf16 ring d={d}"),
        ));
        worst.1 = worst.1.max(check_decode::<bf16>(
            &ctx,
            &mut rng,
            shape,
            sinks(16, 4),
            37,
            20,
            BF16_TOL,
            &format!("decode bf16 ring + sinks d={d}"),
        ));
    }
    println!("{{\"test\":\"attention_decode\",\"max_rel_err\":{{\"f32\":{:.3e},\"bf16\":{:.3e}}}}}", worst.0, worst.1);
}

#[test]
fn cache_append_wraps_around_the_ring() {
    let ctx = gpu();
    let mut rng = rng("cache append");
    let (batch, capacity, shape) = (3, 5, HeadShape::new(4, 2, 32).unwrap());
    let kv_row = shape.hkv * shape.d;
    let cache_len = batch * shape.hkv * capacity * shape.d;
    let (mut k_cache, mut v_cache) = (poisoned(&ctx, cache_len), poisoned(&ctx, cache_len));
    // Host model of the caches [B, hkv, capacity, d].
    let (mut k_ref, mut v_ref) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
    // Sequences at different positions, each passing the end of the ring more than once.
    let mut positions = [0u32, 3, 11];
    for _ in 0..13 {
        let (k, v) = (random(&mut rng, batch * kv_row, 1.0), random(&mut rng, batch * kv_row, 1.0));
        let pos = GpuBuffer::from_host(&ctx, &positions).unwrap();
        cache_append(
            &ctx,
            batch,
            shape,
            capacity.into(),
            &upload(&ctx, &k),
            &upload(&ctx, &v),
            &pos,
            &mut k_cache,
            &mut v_cache,
        )
        .unwrap();
        for (b, position) in positions.iter_mut().enumerate() {
            let slot = *position as usize % capacity;
            for h in 0..shape.hkv {
                let src = (b * shape.hkv + h) * shape.d;
                let dst = ((b * shape.hkv + h) * capacity + slot) * shape.d;
                k_ref[dst..dst + shape.d].copy_from_slice(&k[src..src + shape.d]);
                v_ref[dst..dst + shape.d].copy_from_slice(&v[src..src + shape.d]);
            }
            *position += 1;
        }
    }
    assert_eq!(k_cache.to_host().unwrap(), k_ref);
    assert_eq!(v_cache.to_host().unwrap(), v_ref);

    // A prefill longer than the ring keeps its last `capacity` tokens, each in its slot.
    let tokens = 12;
    let (k, v) = (random(&mut rng, batch * tokens * kv_row, 1.0), random(&mut rng, batch * tokens * kv_row, 1.0));
    let starts = [0u32, 7, 100];
    let (mut k_cache, mut v_cache) = (poisoned(&ctx, cache_len), poisoned(&ctx, cache_len));
    let pos = GpuBuffer::from_host(&ctx, &starts).unwrap();
    cache_prefill(
        &ctx,
        batch,
        tokens,
        shape,
        capacity.into(),
        &upload(&ctx, &k),
        &upload(&ctx, &v),
        &pos,
        &mut k_cache,
        &mut v_cache,
    )
    .unwrap();
    let (k_got, v_got) = (k_cache.to_host().unwrap(), v_cache.to_host().unwrap());
    for (b, &start) in starts.iter().enumerate() {
        for t in tokens - capacity..tokens {
            let slot = (start as usize + t) % capacity;
            for h in 0..shape.hkv {
                let src = ((b * tokens + t) * shape.hkv + h) * shape.d;
                let dst = ((b * shape.hkv + h) * capacity + slot) * shape.d;
                assert_eq!(k_got[dst..dst + shape.d], k[src..src + shape.d], "key b={b} t={t}");
                assert_eq!(v_got[dst..dst + shape.d], v[src..src + shape.d], "value b={b} t={t}");
            }
        }
    }
    // With sinks: the first tokens keep their slots, the others share the ring after them.
    let window = Window { keys: 3, sinks: 2 };
    let (mut k_cache, mut v_cache) = (poisoned(&ctx, cache_len), poisoned(&ctx, cache_len));
    let zeros = GpuBuffer::from_host(&ctx, &[0u32; 3]).unwrap();
    cache_prefill(
        &ctx,
        batch,
        tokens,
        shape,
        window,
        &upload(&ctx, &k),
        &upload(&ctx, &v),
        &zeros,
        &mut k_cache,
        &mut v_cache,
    )
    .unwrap();
    let k_got = k_cache.to_host().unwrap();
    for b in 0..batch {
        for t in [0, 1, 9, 10, 11] {
            let slot = window.slot(t);
            for h in 0..shape.hkv {
                let src = ((b * tokens + t) * shape.hkv + h) * shape.d;
                let dst = ((b * shape.hkv + h) * capacity + slot) * shape.d;
                assert_eq!(k_got[dst..dst + shape.d], k[src..src + shape.d], "sink cache: key b={b} t={t} slot {slot}");
            }
        }
    }
    println!("cache_append: 13 steps over a ring of {capacity} and a prefill of {tokens} checked exactly, with and without sinks");
}

#[test]
fn bad_sizes_are_typed_errors() {
    let ctx = gpu();
    let shape = HeadShape::new(4, 2, 64).unwrap();
    let dims = AttentionDims { batch: 2, tokens: 8, shape };
    let (qn, kn) = (2 * 8 * 4 * 64, 2 * 8 * 2 * 64);
    let (q, k, v) = (poisoned(&ctx, qn), poisoned(&ctx, kn), poisoned(&ctx, kn));
    let (mut o, mut lse) = (poisoned(&ctx, qn), poisoned(&ctx, 2 * 4 * 8));
    let err = attention_forward(&ctx, dims, Some(0.into()), &q, &k, &v, &mut o, &mut lse).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("window_keys"), "{}", err.message);
    let err = attention_forward(&ctx, dims, None, &q, &q, &v, &mut o, &mut lse).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    assert!(err.message.contains("attention k"), "{}", err.message);
    let mut short_lse = poisoned(&ctx, 8);
    let err = attention_forward(&ctx, dims, None, &q, &k, &v, &mut o, &mut short_lse).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    let odd = AttentionDims { batch: 2, tokens: 8, shape: HeadShape::new(4, 2, 40).unwrap() };
    let err = attention_forward(&ctx, odd, None, &q, &k, &v, &mut o, &mut lse).unwrap_err();
    assert!(err.message.contains("head size"), "{}", err.message);

    let (mut kc, mut vc) = (poisoned(&ctx, 2 * 2 * 16 * 64), poisoned(&ctx, 2 * 2 * 16 * 64));
    let lengths = GpuBuffer::from_host(&ctx, &[1u32]).unwrap();
    let mut o_t = poisoned(&ctx, 2 * 4 * 64);
    let err =
        attention_decode(&ctx, 2, shape, 16, &poisoned(&ctx, 2 * 4 * 64), &kc, &vc, &lengths, &mut o_t).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch);
    assert!(err.message.contains("lengths"), "{}", err.message);
    let positions = GpuBuffer::from_host(&ctx, &[0u32, 1]).unwrap();
    let k_t = poisoned(&ctx, 2 * 2 * 64);
    let err = cache_append(&ctx, 2, shape, 0.into(), &k_t, &k_t, &positions, &mut kc, &mut vc).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("capacity"), "{}", err.message);
}
