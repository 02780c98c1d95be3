//! The decoding step's adapter kernels (down projections of several adapters in one launch, up
//! projections inside the products or in one launch) and its window attention mixed with the
//! mixer output, against float64 references with poisoned outputs; the bf16 rounding against
//! the CPU's; and a batch past the fused adapters' limit against the CPU model.

mod common;

use common::{check_host, gpu, poisoned, random, rng, to_f64, upload};
use half::bf16;
use liger_core::config::{Architecture, ModelConfig};
use liger_core::convert::{linearize, LigerOptions, LoraOptions, LoraTarget};
use liger_core::liger::{HeadShape, MixerConfig, MixerKind};
use liger_core::model::{BaseModel, ModelFormat};
use liger_core::testing::{random_tokens, random_weights, tiny_config};
use liger_core::tokenizer::Tokenizer;
use liger_core::ErrorCode;
use liger_cuda::ops::decode::decode_gemv_lora;
use liger_cuda::ops::decode_lora::{decode_lora_down, decode_lora_up, LoraDown, LoraUp, LORA_DOWN_MAX_BATCH};
use liger_cuda::ops::decode_window::{decode_round_bf16, decode_window_attention, WindowCaches};
use liger_cuda::{GpuBuffer, GpuContext, GpuElement, GpuLigerModel};
use rand::rngs::StdRng;
use rand::Rng;

fn stored<T: GpuElement>(v: Vec<f32>) -> Vec<T> {
    v.into_iter().map(T::from_f32).collect()
}

fn host_f32<T: GpuElement>(b: &GpuBuffer<T>) -> Vec<f32> {
    b.to_host().unwrap().into_iter().map(T::to_f32).collect()
}

/// Three adapters of one input: A `[rank, k]`, B `[n, rank]`, a scale.
struct HostAdapter {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    n: usize,
    scale: f32,
}

impl HostAdapter {
    fn new(rng: &mut StdRng, k: usize, n: usize, rank: usize) -> Self {
        HostAdapter { a: random(rng, rank * k, 0.3), b: random(rng, n * rank, 0.3), rank, n, scale: rng.random_range(0.5..2.0) }
    }
    /// `scale · x_b Aᵀ` (row b of x, `[rank]`), in float64.
    fn down(&self, x: &[f32], b: usize, k: usize) -> Vec<f64> {
        (0..self.rank).map(|j| self.scale as f64 * (0..k).map(|i| x[b * k + i] as f64 * self.a[j * k + i] as f64).sum::<f64>()).collect()
    }
    /// `(scale · x_b Aᵀ) B_rᵀ` for output row r.
    fn delta(&self, x: &[f32], b: usize, k: usize, r: usize) -> f64 {
        self.down(x, b, k).iter().enumerate().map(|(j, u)| u * self.b[r * self.rank + j] as f64).sum()
    }
}

fn adapter_case(ctx: &GpuContext, rng: &mut StdRng, batch: usize) {
    // Ranks below, at and above a warp's width; output rows of q, k, v-like sizes.
    let (k, ranks, rows) = (200, [4usize, 32, 40], [70usize, 33, 5]);
    let x = random(rng, batch * k, 1.0);
    let adapters: Vec<HostAdapter> = ranks.iter().zip(rows).map(|(&r, n)| HostAdapter::new(rng, k, n, r)).collect();
    let a_gpu: Vec<GpuBuffer<f32>> = adapters.iter().map(|a| upload(ctx, &a.a)).collect();
    let b_gpu: Vec<GpuBuffer<f32>> = adapters.iter().map(|a| upload(ctx, &a.b)).collect();
    let mut us: Vec<GpuBuffer<f32>> = ranks.iter().map(|&r| poisoned(ctx, batch * r)).collect();
    {
        let [u0, u1, u2] = &mut us[..] else { unreachable!() };
        let mut downs = [u0, u1, u2].into_iter().zip(&a_gpu).zip(&adapters).map(|((u, a), h)| LoraDown { a, scale: h.scale, u }).collect::<Vec<_>>();
        decode_lora_down(ctx, &upload(ctx, &x), batch, k, &mut downs).unwrap();
    }
    for (i, h) in adapters.iter().enumerate() {
        let reference: Vec<f64> = (0..batch).flat_map(|b| h.down(&x, b, k)).collect();
        check_host(&format!("decode_lora_down batch {batch} adapter {i} (rank {})", h.rank), &us[i].to_host().unwrap(), &reference, 1e-5);
    }
    // The up projections in one launch, added to outputs that hold values already.
    let starts: Vec<Vec<f32>> = rows.iter().map(|&n| random(rng, batch * n, 1.0)).collect();
    let mut ys: Vec<GpuBuffer<f32>> = starts.iter().map(|s| upload(ctx, s)).collect();
    {
        let [y0, y1, y2] = &mut ys[..] else { unreachable!() };
        let mut outs: Vec<(LoraUp, &mut GpuBuffer<f32>)> = [y0, y1, y2].into_iter().enumerate().map(|(i, y)| (LoraUp { b: &b_gpu[i], u: &us[i], rank: ranks[i] }, y)).collect();
        decode_lora_up(ctx, batch, &mut outs).unwrap();
    }
    for (i, h) in adapters.iter().enumerate() {
        let reference: Vec<f64> = (0..batch * h.n).map(|j| starts[i][j] as f64 + h.delta(&x, j / h.n, k, j % h.n)).collect();
        check_host(&format!("decode_lora_up batch {batch} adapter {i}"), &ys[i].to_host().unwrap(), &reference, 1e-5);
    }
    if batch <= 4 {
        gemv_lora_case::<f32>(ctx, rng, &x, batch, k, &adapters, &b_gpu, &us);
        gemv_lora_case::<bf16>(ctx, rng, &x, batch, k, &adapters, &b_gpu, &us);
    }
}

/// `y_i = x W_iᵀ + u_i B_iᵀ` with x stored as T for the frozen weight, adapters in f32; the
/// second output without an adapter.
#[allow(clippy::too_many_arguments)]
fn gemv_lora_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, x: &[f32], batch: usize, k: usize, adapters: &[HostAdapter], b_gpu: &[GpuBuffer<f32>], us: &[GpuBuffer<f32>]) {
    let x_t: Vec<T> = stored(x.to_vec());
    let ws: Vec<Vec<T>> = adapters.iter().map(|a| stored(random(rng, a.n * k, 0.2))).collect();
    let w_gpu: Vec<GpuBuffer<T>> = ws.iter().map(|w| GpuBuffer::from_host(ctx, w).unwrap()).collect();
    let ups = [Some(LoraUp { b: &b_gpu[0], u: &us[0], rank: adapters[0].rank }), None, Some(LoraUp { b: &b_gpu[2], u: &us[2], rank: adapters[2].rank })];
    let starts: Vec<Vec<f32>> = adapters.iter().map(|a| random(rng, batch * a.n, 1.0)).collect();
    for accumulate in [false, true] {
        let mut ys: Vec<GpuBuffer<f32>> = adapters.iter().zip(&starts).map(|(a, s)| if accumulate { upload(ctx, s) } else { poisoned(ctx, batch * a.n) }).collect();
        let [y0, y1, y2] = &mut ys[..] else { unreachable!() };
        let x_gpu = GpuBuffer::from_host(ctx, &x_t).unwrap();
        decode_gemv_lora(ctx, &x_gpu, batch, k, &mut [(&w_gpu[0], y0), (&w_gpu[1], y1), (&w_gpu[2], y2)], &ups, accumulate).unwrap();
        for (i, a) in adapters.iter().enumerate() {
            let reference: Vec<f64> = (0..batch * a.n)
                .map(|j| {
                    let (b, r) = (j / a.n, j % a.n);
                    let frozen: f64 = (0..k).map(|e| x_t[b * k + e].to_f32() as f64 * ws[i][r * k + e].to_f32() as f64).sum();
                    let lora = if i == 1 { 0.0 } else { a.delta(x, b, k, r) };
                    frozen + lora + if accumulate { starts[i][j] as f64 } else { 0.0 }
                })
                .collect();
            check_host(&format!("decode_gemv_lora {} batch {batch} output {i} accumulate {accumulate}", T::KERNEL_SUFFIX), &ys[i].to_host().unwrap(), &reference, 1e-5);
        }
    }
}

#[test]
fn decode_adapters_match_float64_references() {
    let ctx = gpu();
    let mut rng = rng("decode_adapters_match_float64_references");
    for batch in [1, 3, 6, LORA_DOWN_MAX_BATCH] {
        adapter_case(&ctx, &mut rng, batch);
    }
}

#[test]
fn decode_adapters_reject_bad_sizes() {
    let ctx = gpu();
    let f = |n: usize| GpuBuffer::<f32>::zeros(&ctx, n).unwrap();
    let (a, x) = (f(4 * 16), f(17 * 16));
    let err = decode_lora_down(&ctx, &x, 17, 16, &mut [LoraDown { a: &a, scale: 1.0, u: &mut f(17 * 4) }]).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let err = decode_lora_down(&ctx, &f(6), 1, 6, &mut [LoraDown { a: &f(12), scale: 1.0, u: &mut f(2) }]).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let err = decode_lora_down(&ctx, &f(32), 2, 16, &mut [LoraDown { a: &a, scale: 1.0, u: &mut f(7) }]).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let err = decode_lora_down(&ctx, &f(32), 2, 16, &mut []).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let (b, u) = (f(10 * 4), f(2 * 4));
    let err = decode_lora_up(&ctx, 2, &mut [(LoraUp { b: &b, u: &u, rank: 4 }, &mut f(2 * 9))]).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let err = decode_lora_up(&ctx, 2, &mut [(LoraUp { b: &b, u: &f(7), rank: 4 }, &mut f(2 * 10))]).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let (w, x1) = (f(10 * 16), f(16));
    let bad_up = [Some(LoraUp { b: &f(9 * 4), u: &u, rank: 4 }), None, None];
    let err = decode_gemv_lora(&ctx, &x1, 1, 16, &mut [(&w, &mut f(10))], &bad_up, false).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let stray_up = [None, Some(LoraUp { b: &b, u: &u, rank: 4 }), None];
    let err = decode_gemv_lora(&ctx, &x1, 1, 16, &mut [(&w, &mut f(10))], &stray_up, false).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
}

/// `alpha · mixer + beta · softmax(q Kᵀ/√d) V` over the first `min(length, capacity)` slots,
/// in float64, for q, keys and values as stored.
#[allow(clippy::too_many_arguments)]
fn window_reference(batch: usize, shape: HeadShape, capacity: usize, q: &[f32], keys: &[f32], values: &[f32], lengths: &[u32], mixer: &[f32], alpha: f64, beta: f64) -> Vec<f64> {
    let HeadShape { hq, hkv, d } = shape;
    let mut out = vec![0.0f64; batch * hq * d];
    for (b, &length) in lengths.iter().enumerate().take(batch) {
        let n = (length as usize).min(capacity);
        for h in 0..hq {
            let kvh = h / (hq / hkv);
            let row = (b * hq + h) * d;
            let slot = |j: usize| ((b * hkv + kvh) * capacity + j) * d;
            let scores: Vec<f64> = (0..n).map(|j| (0..d).map(|e| q[row + e] as f64 * keys[slot(j) + e] as f64).sum::<f64>() / (d as f64).sqrt()).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for e in 0..d {
                let attention: f64 = if n == 0 { 0.0 } else { (0..n).map(|j| weights[j] * values[slot(j) + e] as f64).sum::<f64>() / total };
                out[row + e] = alpha * mixer[row + e] as f64 + beta * attention;
            }
        }
    }
    out
}

fn window_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, shape: HeadShape, capacity: usize, lengths: &[u32]) {
    let batch = lengths.len();
    let HeadShape { hq, hkv, d } = shape;
    let as_stored = |v: Vec<f32>| -> Vec<T> { stored(v) };
    let (q, keys, values) = (as_stored(random(rng, batch * hq * d, 2.0)), as_stored(random(rng, batch * hkv * capacity * d, 1.0)), as_stored(random(rng, batch * hkv * capacity * d, 1.0)));
    let mixer = random(rng, batch * hq * d, 1.0);
    let (alpha, beta) = (rng.random_range(0.2..1.0f32), rng.random_range(0.2..1.0f32));
    let f = |v: &[T]| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
    let reference = window_reference(batch, shape, capacity, &f(&q), &f(&keys), &f(&values), lengths, &mixer, alpha as f64, beta as f64);
    let up = |v: &[T]| GpuBuffer::from_host(ctx, v).unwrap();
    let (keys_gpu, values_gpu, lengths_gpu) = (up(&keys), up(&values), GpuBuffer::from_host(ctx, lengths).unwrap());
    let caches = WindowCaches { batch, shape, capacity, keys: &keys_gpu, values: &values_gpu, lengths: &lengths_gpu };
    let (mut o_f, mut o_t) = (poisoned(ctx, batch * hq * d), GpuBuffer::filled(ctx, batch * hq * d, T::from_f32(f32::NAN)).unwrap());
    decode_window_attention(ctx, &caches, &up(&q), &upload(ctx, &mixer), alpha, beta, &mut o_f, &mut o_t).unwrap();
    let name = format!("decode_window_attention {} heads {hq}/{hkv} d {d} capacity {capacity} lengths {lengths:?}", T::KERNEL_SUFFIX);
    check_host(&format!("{name} (f32 output)"), &o_f.to_host().unwrap(), &reference, 1e-5);
    let tol = if T::KERNEL_SUFFIX == "bf16" { 2e-2 } else { 1e-5 };
    check_host(&name, &host_f32(&o_t), &reference, tol);
}

#[test]
fn window_attention_matches_float64_reference() {
    let ctx = gpu();
    let mut rng = rng("window_attention_matches_float64_reference");
    // A 64-key window (the default) with GQA groups of 4 and 3; a window of 70 keys (three
    // rounds of 32, the last partial); a group of 12 query heads (more than one per warp);
    // sequences with fewer keys than the window, and one at a length past it.
    for (shape, capacity, lengths) in [
        (HeadShape { hq: 8, hkv: 2, d: 128 }, 64, vec![64, 1, 30]),
        (HeadShape { hq: 9, hkv: 3, d: 64 }, 64, vec![200]),
        (HeadShape { hq: 4, hkv: 4, d: 32 }, 70, vec![70, 45]),
        (HeadShape { hq: 12, hkv: 1, d: 64 }, 5, vec![9, 3]),
    ] {
        window_case::<f32>(&ctx, &mut rng, shape, capacity, &lengths);
        window_case::<bf16>(&ctx, &mut rng, shape, capacity, &lengths);
    }
}

#[test]
fn window_attention_rejects_bad_sizes() {
    let ctx = gpu();
    let f = |n: usize| GpuBuffer::<f32>::zeros(&ctx, n).unwrap();
    let lengths = GpuBuffer::<u32>::zeros(&ctx, 1).unwrap();
    let (keys, values) = (f(2 * 4 * 48), f(2 * 4 * 48));
    let at = WindowCaches { batch: 1, shape: HeadShape { hq: 4, hkv: 2, d: 48 }, capacity: 4, keys: &keys, values: &values, lengths: &lengths };
    let err = decode_window_attention(&ctx, &at, &f(4 * 48), &f(4 * 48), 1.0, 1.0, &mut f(4 * 48), &mut f(4 * 48)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let (keys, values) = (f(2 * 4 * 32), f(2 * 4 * 32));
    let at = WindowCaches { shape: HeadShape { hq: 3, hkv: 2, d: 32 }, keys: &keys, values: &values, ..at };
    let err = decode_window_attention(&ctx, &at, &f(3 * 32), &f(3 * 32), 1.0, 1.0, &mut f(3 * 32), &mut f(3 * 32)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let at = WindowCaches { shape: HeadShape { hq: 4, hkv: 2, d: 32 }, capacity: 5, ..at };
    let err = decode_window_attention(&ctx, &at, &f(4 * 32), &f(4 * 32), 1.0, 1.0, &mut f(4 * 32), &mut f(4 * 32)).unwrap_err();
    assert!(err.message.contains("window keys"), "{}", err.message);
    let at = WindowCaches { capacity: 0, ..at };
    let err = decode_window_attention(&ctx, &at, &f(4 * 32), &f(4 * 32), 1.0, 1.0, &mut f(4 * 32), &mut f(4 * 32)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let at = WindowCaches { capacity: 4, ..at };
    let err = decode_window_attention(&ctx, &at, &f(4 * 32), &f(4 * 32), 1.0, 1.0, &mut f(4 * 32 - 1), &mut f(4 * 32)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
}

#[test]
fn bf16_rounding_matches_the_cpu() {
    let ctx = gpu();
    let mut rng = rng("bf16_rounding_matches_the_cpu");
    let mut x = random(&mut rng, 10_000, 3.0);
    // Exact halfway cases (ties to even), tiny and huge values.
    x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -1.0 - 1.0 / 256.0, 1e-40, 3.0e38, 0.0]);
    let mut gpu_x = upload(&ctx, &x);
    decode_round_bf16(&ctx, &mut gpu_x).unwrap();
    let got = gpu_x.to_host().unwrap();
    let wrong = x.iter().zip(&got).filter(|(&a, &g)| bf16::from_f32(a).to_f32().to_bits() != g.to_bits()).count();
    println!("decode_round_bf16: {wrong} of {} values differ from the CPU's rounding", x.len());
    assert_eq!(wrong, 0);
}

/// A tiny converted GLA model with a 5-key window and random adapters on q, k, v and o.
fn tiny_model(rng: &mut StdRng) -> liger_core::convert::LigerModel {
    let cfg = ModelConfig { hidden_size: 64, num_heads: 4, num_kv_heads: 2, head_dim: 32, intermediate_size: 96, ..tiny_config(Architecture::Llama) };
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
    let tokenizer = Tokenizer::from_json(json.as_bytes(), "test tokenizer").unwrap();
    let base = BaseModel::new(cfg.clone(), random_weights(&cfg, rng.random()), tokenizer, None, "tiny".into(), ModelFormat::Checkpoint);
    let mut options = LigerOptions::default();
    options.attention.mixer = MixerConfig::new(MixerKind::Gla);
    options.attention.window_keys = 5;
    let lora = LoraOptions { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec(), seed: rng.random() };
    let mut m = linearize(base, options, lora).unwrap();
    for layer in &mut m.lora.layers {
        for t in LoraTarget::ALL {
            if let Some(a) = layer.get_mut(t) {
                a.b.iter_mut().for_each(|b| *b = rng.random_range(-0.2..0.2));
            }
        }
    }
    m
}

/// Prefill + steps of `batch` sequences against the CPU's full forward.
fn decode_against_cpu(test: &str, batch: usize) {
    let mut rng = rng(test);
    let cpu = tiny_model(&mut rng);
    let vocab = cpu.config().vocab_size;
    let (prompt, steps) = (4, 8);
    let seqs: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(prompt + steps, vocab, rng.random())).collect();
    let full: Vec<Vec<f32>> = seqs.iter().map(|s| cpu.all_logits(s).unwrap()).collect();
    let gpu_model = GpuLigerModel::<f32>::new(gpu(), cpu).unwrap();
    let mut state = gpu_model.new_batch_state(batch);
    let mut worst: f64 = 0.0;
    for end in prompt..=prompt + steps {
        let from = if end == prompt { 0 } else { end - 1 };
        let tokens: Vec<&[u32]> = seqs.iter().map(|s| &s[from..end]).collect();
        let logits = gpu_model.forward_last_batch(&mut state, &tokens).unwrap();
        for (b, full) in full.iter().enumerate() {
            worst = worst.max(liger_core::testing::max_rel_error(&logits[b * vocab..(b + 1) * vocab], &to_f64(&full[(end - 1) * vocab..end * vocab])));
        }
    }
    println!("batch {batch}: prefill {prompt} + {steps} steps (window 5 wrapped) vs the CPU's full forward, max rel error {worst:.2e}");
    assert!(worst < 1e-4, "{worst:.2e}");
}

#[test]
fn batches_at_and_past_the_fused_adapters_decode_like_the_cpu() {
    // 16: fused adapters after cuBLAS products; 17: two GEMMs per adapter.
    decode_against_cpu("batches_at_and_past_the_fused_adapters_decode_like_the_cpu (16)", LORA_DOWN_MAX_BATCH);
    decode_against_cpu("batches_at_and_past_the_fused_adapters_decode_like_the_cpu (17)", LORA_DOWN_MAX_BATCH + 1);
}
