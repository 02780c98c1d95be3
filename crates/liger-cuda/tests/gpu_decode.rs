//! The decoding step: its fused kernels against float64 references, and the whole step replayed
//! from a CUDA graph against the same step's plain launches (batch > 1, many steps, new
//! adapters, a reset state), plus the state's size. With a surprise cache: its kernels against
//! the CPU rule, and prefill + steps against the CPU engine's decoding and the full forward.

mod common;

use common::{check, check_host, gpu, host, inv_freq, poison, poisoned, random, rng, to_f64, up, upload};
use half::bf16;
use liger_core::config::{Architecture, ModelConfig};
use liger_core::convert::{linearize, LigerModel, LigerOptions, LoraOptions, LoraTarget};
use liger_core::generate::CausalLm;
use liger_core::liger::surprise::{surprise_kept, SCORE_EPS};
use liger_core::liger::{HeadShape, MixerConfig, MixerKind, Window};
use liger_core::model::{BaseModel, ModelFormat};
use liger_core::testing::{random_tokens, random_weights, tiny_config};
use liger_core::tokenizer::Tokenizer;
use liger_core::ErrorCode;
use liger_cuda::ops::decode::{
    decode_gemv, decode_gemv_swiglu, decode_lora_up, decode_mix, decode_rope_append, surprise_cache_fill,
    surprise_decode_step, DecodeRope, LoraUp, SurpriseLayout,
};
use liger_cuda::ops::rms_norm::rms_norm_forward_pair;
use liger_cuda::ops::swiglu::swiglu_forward_to;
use liger_cuda::{GpuBuffer, GpuContext, GpuElement, GpuLigerModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Tolerance for an output stored as `T`.
fn tol<T: GpuElement>() -> f64 {
    if T::KERNEL_SUFFIX == "bf16" {
        2e-2
    } else {
        1e-5
    }
}

fn rms_norm_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng) {
    let (rows, cols, eps) = (3, 200, 1e-5);
    let x = random(rng, rows * cols, 2.0);
    let w = random(rng, cols, 1.5);
    let mut reference = vec![0.0f64; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let rstd = 1.0 / (row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64 + eps as f64).sqrt();
        for i in 0..cols {
            reference[r * cols + i] = row[i] as f64 * rstd * w[i] as f64;
        }
    }
    // The step's norm: the shared one that writes f32 and T in one pass.
    let (mut y_f, mut y_t, mut rstd) = (poisoned(ctx, rows * cols), poison::<T>(ctx, rows * cols), poisoned(ctx, rows));
    rms_norm_forward_pair(ctx, &upload(ctx, &x), &upload(ctx, &w), eps, &mut y_f, &mut y_t, &mut rstd).unwrap();
    check_host(
        &format!("rms_norm_forward_pair f32 (T = {})", T::KERNEL_SUFFIX),
        &y_f.to_host().unwrap(),
        &reference,
        1e-5,
    );
    check_host(&format!("rms_norm_forward_pair {}", T::KERNEL_SUFFIX), &host(&y_t), &reference, tol::<T>());
}

fn rope_append_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng) {
    // Two sinks and a ring of three, then two surprise slots in each cache row: one sequence
    // past the sinks, one writing a sink slot.
    let (batch, shape, window, slots) = (2, HeadShape { hq: 4, hkv: 2, d: 32 }, Window { keys: 3, sinks: 2 }, 2);
    let row_entries = window.capacity() + slots;
    let HeadShape { hq, hkv, d } = shape;
    let freqs = inv_freq(d, 10000.0);
    let positions: Vec<u32> = vec![rng.random_range(2..100_000), rng.random_range(0..2)];
    let (q, k, v) =
        (random(rng, batch * hq * d, 1.0), random(rng, batch * hkv * d, 1.0), random(rng, batch * hkv * d, 1.0));
    let rope = |x: &[f32], b: usize, heads: usize| -> Vec<f64> {
        let mut out = vec![0.0f64; heads * d];
        for h in 0..heads {
            for j in 0..d / 2 {
                let angle = positions[b] as f64 * freqs[j] as f64;
                let (c, s) = (angle.cos(), angle.sin());
                let (x0, x1) = (x[(b * heads + h) * d + j] as f64, x[(b * heads + h) * d + j + d / 2] as f64);
                out[h * d + j] = x0 * c - x1 * s;
                out[h * d + j + d / 2] = x1 * c + x0 * s;
            }
        }
        out
    };
    let q_ref: Vec<f64> = (0..batch).flat_map(|b| rope(&q, b, hq)).collect();
    let (mut q_roped, cache_len) = (poison::<T>(ctx, batch * hq * d), batch * hkv * row_entries * d);
    let (mut k_cache, mut v_cache) = (poison::<T>(ctx, cache_len), poison::<T>(ctx, cache_len));
    let (freqs_gpu, positions_gpu) = (upload(ctx, &freqs), GpuBuffer::from_host(ctx, &positions).unwrap());
    let at = DecodeRope { inv_freq: &freqs_gpu, positions: &positions_gpu, batch, shape, window, slots };
    decode_rope_append(
        ctx,
        &at,
        &upload(ctx, &q),
        &upload(ctx, &k),
        &upload(ctx, &v),
        &mut q_roped,
        &mut k_cache,
        &mut v_cache,
    )
    .unwrap();
    check_host(&format!("decode rope of q ({})", T::KERNEL_SUFFIX), &host(&q_roped), &q_ref, tol::<T>());
    // The written slot of each (sequence, kv head), and nothing else.
    let (k_host, v_host) = (host(&k_cache), host(&v_cache));
    let (mut k_got, mut v_got, mut k_ref, mut v_ref) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in 0..batch {
        let k_roped = rope(&k, b, hkv);
        for h in 0..hkv {
            for slot in 0..row_entries {
                let at = ((b * hkv + h) * row_entries + slot) * d;
                if slot == window.slot(positions[b] as usize) {
                    k_got.extend_from_slice(&k_host[at..at + d]);
                    v_got.extend_from_slice(&v_host[at..at + d]);
                    k_ref.extend_from_slice(&k_roped[h * d..(h + 1) * d]);
                    v_ref.extend(to_f64(&v[(b * hkv + h) * d..(b * hkv + h + 1) * d]));
                } else {
                    assert!(
                        k_host[at..at + d].iter().chain(&v_host[at..at + d]).all(|x| x.is_nan()),
                        "slot {slot} of ({b}, {h}) was written"
                    );
                }
            }
        }
    }
    check_host(&format!("decode rope of k into the cache ({})", T::KERNEL_SUFFIX), &k_got, &k_ref, tol::<T>());
    check_host(&format!("decode v into the cache ({})", T::KERNEL_SUFFIX), &v_got, &v_ref, tol::<T>());
}

fn mix_and_swiglu_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng) {
    let n = 1000;
    let (a, b) = (random(rng, n, 2.0), random(rng, n, 2.0));
    let b_t: Vec<T> = b.iter().map(|&x| T::from_f32(x)).collect();
    let b_stored: Vec<f64> = b_t.iter().map(|&x| x.to_f32() as f64).collect();
    let (a_gpu, b_gpu) = (upload(ctx, &a), GpuBuffer::from_host(ctx, &b_t).unwrap());
    let (alpha, beta) = (0.3f32, 0.7f32);
    for (use_a, use_b) in [(true, true), (true, false), (false, true)] {
        let reference: Vec<f64> = (0..n).map(|i| if use_a { alpha as f64 * a[i] as f64 } else { 0.0 } + if use_b { beta as f64 * b_stored[i] } else { 0.0 }).collect();
        let (mut o_f, mut o_t) = (poisoned(ctx, n), poison::<T>(ctx, n));
        decode_mix(ctx, use_a.then_some((&a_gpu, alpha)), use_b.then_some((&b_gpu, beta)), &mut o_f, &mut o_t).unwrap();
        let name = format!("decode_mix a={use_a} b={use_b} ({})", T::KERNEL_SUFFIX);
        check_host(&format!("{name} f32"), &o_f.to_host().unwrap(), &reference, 1e-5);
        check_host(&name, &host(&o_t), &reference, tol::<T>());
    }
    let reference: Vec<f64> = (0..n).map(|i| a[i] as f64 / (1.0 + (-a[i] as f64).exp()) * b[i] as f64).collect();
    let mut out = poison::<T>(ctx, n);
    swiglu_forward_to(ctx, &a_gpu, &upload(ctx, &b), &mut out).unwrap();
    check_host(&format!("swiglu_forward_to ({})", T::KERNEL_SUFFIX), &host(&out), &reference, tol::<T>());
}

/// `x W_iᵀ` of up to three weights in one launch, plain and accumulated, and gate/up + SwiGLU.
fn gemv_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, batch: usize) {
    let (k, rows) = (200, [70usize, 33, 5]);
    let stored = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let x = stored(random(rng, batch * k, 1.0));
    let ws: Vec<Vec<T>> = rows.iter().map(|&n| stored(random(rng, n * k, 0.2))).collect();
    let product = |w: &[T], b: usize, r: usize| -> f64 {
        (0..k).map(|i| x[b * k + i].to_f32() as f64 * w[r * k + i].to_f32() as f64).sum()
    };
    let x_gpu = GpuBuffer::from_host(ctx, &x).unwrap();
    let w_gpu: Vec<GpuBuffer<T>> = ws.iter().map(|w| GpuBuffer::from_host(ctx, w).unwrap()).collect();
    let starts: Vec<Vec<f32>> = rows.iter().map(|&n| random(rng, batch * n, 1.0)).collect();
    for accumulate in [false, true] {
        let mut ys: Vec<GpuBuffer<f32>> = rows
            .iter()
            .zip(&starts)
            .map(|(&n, s)| if accumulate { upload(ctx, s) } else { poisoned(ctx, batch * n) })
            .collect();
        let [y0, y1, y2] = &mut ys[..] else { unreachable!() };
        decode_gemv(ctx, &x_gpu, batch, k, &mut [(&w_gpu[0], y0), (&w_gpu[1], y1), (&w_gpu[2], y2)], accumulate)
            .unwrap();
        for (i, &n) in rows.iter().enumerate() {
            let reference: Vec<f64> = (0..batch * n)
                .map(|j| product(&ws[i], j / n, j % n) + if accumulate { starts[i][j] as f64 } else { 0.0 })
                .collect();
            check_host(
                &format!("decode_gemv {} batch {batch} weight {i} accumulate {accumulate}", T::KERNEL_SUFFIX),
                &ys[i].to_host().unwrap(),
                &reference,
                1e-5,
            );
        }
    }
    let n = rows[0];
    let mut act = poison::<T>(ctx, batch * n);
    let up = GpuBuffer::from_host(ctx, &stored(random(rng, n * k, 0.2))).unwrap();
    let up_host: Vec<T> = up.to_host().unwrap();
    decode_gemv_swiglu(ctx, &x_gpu, batch, k, &w_gpu[0], &up, &mut act).unwrap();
    let reference: Vec<f64> = (0..batch * n)
        .map(|j| {
            let (g, u) = (product(&ws[0], j / n, j % n), product(&up_host, j / n, j % n));
            g / (1.0 + (-g).exp()) * u
        })
        .collect();
    check_host(&format!("decode_gemv_swiglu {} batch {batch}", T::KERNEL_SUFFIX), &host(&act), &reference, tol::<T>());
}

#[test]
fn decode_products_match_float64_references() {
    let ctx = gpu();
    let mut rng = rng("decode_products_match_float64_references");
    for batch in [1, 3] {
        gemv_case::<f32>(&ctx, &mut rng, batch);
        gemv_case::<bf16>(&ctx, &mut rng, batch);
    }
    let f = |n: usize| GpuBuffer::<f32>::zeros(&ctx, n).unwrap();
    let (w, x5) = (f(8 * 16), f(5 * 16));
    let err = decode_gemv(&ctx, &x5, 5, 16, &mut [(&w, &mut f(40))], false).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let err = decode_gemv(&ctx, &f(6), 1, 6, &mut [(&f(12), &mut f(2))], false).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let err = decode_gemv(&ctx, &f(16), 1, 16, &mut [(&w, &mut f(9))], false).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let err = decode_gemv_swiglu(&ctx, &f(16), 1, 16, &w, &f(16), &mut f(8)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
}

#[test]
fn lora_up_projections_match_float64_references() {
    // Three adapters (q 96 outputs rank 8, k and v 32 outputs, ranks 8 and 3), 3 sequences,
    // each added to what its output held, with its own scale.
    let ctx = gpu();
    let mut rng = rng("lora_up_projections_match_float64_references");
    let batch = 3;
    let shapes = [(96, 8, 2.0f32), (32, 8, 0.5), (32, 3, 1.0)];
    let host_parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = shapes
        .iter()
        .map(|&(out, rank, _)| {
            (random(&mut rng, batch * rank, 1.0), random(&mut rng, out * rank, 1.0), random(&mut rng, batch * out, 1.0))
        })
        .collect();
    let uploaded: Vec<(GpuBuffer<f32>, GpuBuffer<f32>)> =
        host_parts.iter().map(|(u, b, _)| (upload(&ctx, u), upload(&ctx, b))).collect();
    let mut ys: Vec<GpuBuffer<f32>> = host_parts.iter().map(|(_, _, y)| upload(&ctx, y)).collect();
    let mut parts: Vec<LoraUp> = shapes
        .iter()
        .zip(&uploaded)
        .zip(ys.iter_mut())
        .map(|((&(_, rank, scale), (u, b)), y)| LoraUp { u, b, rank, scale, y })
        .collect();
    decode_lora_up(&ctx, batch, &mut parts).unwrap();
    for (i, (&(out, rank, scale), (u, b, y0))) in shapes.iter().zip(&host_parts).enumerate() {
        let reference: Vec<f64> = (0..batch * out)
            .map(|e| {
                let (s, o) = (e / out, e % out);
                y0[e] as f64
                    + scale as f64 * (0..rank).map(|j| u[s * rank + j] as f64 * b[o * rank + j] as f64).sum::<f64>()
            })
            .collect();
        check_host(&format!("decode_lora_up adapter {i}"), &host(&ys[i]), &reference, 1e-5);
    }
    let f = |n: usize| GpuBuffer::<f32>::zeros(&ctx, n).unwrap();
    let (u, b) = (f(3 * 8), f(96 * 8));
    let err =
        decode_lora_up(&ctx, 3, &mut [LoraUp { u: &u, b: &b, rank: 8, scale: 1.0, y: &mut f(95 * 3) }]).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    assert_eq!(decode_lora_up(&ctx, 3, &mut []).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn a_batch_past_the_small_products_decodes_like_the_cpu() {
    let mut rng = rng("a_batch_past_the_small_products_decodes_like_the_cpu");
    let cpu = tiny_model(&mut rng);
    let vocab = cpu.config().vocab_size;
    let (batch, prompt, steps) = (6, 5, 6);
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
            worst = worst.max(liger_core::testing::max_rel_error(
                &logits[b * vocab..(b + 1) * vocab],
                &to_f64(&full[(end - 1) * vocab..end * vocab]),
            ));
        }
    }
    println!("batch {batch}: prefill {prompt} + {steps} steps vs the CPU's full forward, max rel error {worst:.2e}");
    assert!(worst < 1e-4, "{worst:.2e}");
    assert_eq!(gpu_model.max_tokens(), None);
}

#[test]
fn fused_decode_kernels_match_float64_references() {
    let ctx = gpu();
    let mut rng = rng("fused_decode_kernels_match_float64_references");
    rms_norm_case::<f32>(&ctx, &mut rng);
    rms_norm_case::<bf16>(&ctx, &mut rng);
    rope_append_case::<f32>(&ctx, &mut rng);
    rope_append_case::<bf16>(&ctx, &mut rng);
    mix_and_swiglu_case::<f32>(&ctx, &mut rng);
    mix_and_swiglu_case::<bf16>(&ctx, &mut rng);
}

#[test]
fn fused_decode_kernels_reject_bad_sizes() {
    let ctx = gpu();
    let f = |n: usize| GpuBuffer::<f32>::zeros(&ctx, n).unwrap();
    let err = rms_norm_forward_pair(&ctx, &f(10), &f(4), 1e-5, &mut f(10), &mut f(10), &mut f(2)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let err = rms_norm_forward_pair(&ctx, &f(8), &f(4), 1e-5, &mut f(8), &mut f(9), &mut f(2)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let (freqs, positions) = (f(16), GpuBuffer::<u32>::zeros(&ctx, 1).unwrap());
    let shape = HeadShape { hq: 2, hkv: 1, d: 32 };
    let at = DecodeRope { inv_freq: &freqs, positions: &positions, batch: 1, shape, window: 0.into(), slots: 0 };
    let err = decode_rope_append(&ctx, &at, &f(64), &f(32), &f(32), &mut f(64), &mut f(0), &mut f(0)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let at = DecodeRope { window: 4.into(), ..at };
    let err = decode_rope_append(&ctx, &at, &f(64), &f(32), &f(32), &mut f(64), &mut f(100), &mut f(128)).unwrap_err();
    assert!(err.message.contains("key cache"), "{}", err.message);
    let err = decode_mix(&ctx, Some((&f(5), 1.0)), None::<(&GpuBuffer<f32>, f32)>, &mut f(6), &mut f(6)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let err = swiglu_forward_to(&ctx, &f(6), &f(5), &mut f(6)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
}

/// A tiny converted GLA model with a 5-key window and adapters on q, k, v and o (random B).
fn tiny_model(rng: &mut StdRng) -> LigerModel {
    let cfg = ModelConfig {
        hidden_size: 64,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        intermediate_size: 96,
        ..tiny_config(Architecture::Llama)
    };
    let mut options = LigerOptions::default();
    options.attention.mixer = MixerConfig::new(MixerKind::Gla);
    options.attention.window_keys = 5;
    converted_model(rng, cfg, options)
}

/// A model of `cfg` with random weights, converted with `options`, adapters on q, k, v and o
/// (random B).
fn converted_model(rng: &mut StdRng, cfg: ModelConfig, options: LigerOptions) -> LigerModel {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
    let tokenizer = Tokenizer::from_json(json.as_bytes(), "test tokenizer").unwrap();
    let base = BaseModel::new(
        cfg.clone(),
        random_weights(&cfg, rng.random()),
        tokenizer,
        None,
        "tiny".into(),
        ModelFormat::Checkpoint,
    );
    let lora = LoraOptions { rank: 4, alpha: 8.0, targets: LoraTarget::ALL.to_vec(), seed: rng.random() };
    let mut m = linearize(base, options, lora).unwrap();
    randomize_lora_b(&mut m, rng);
    m
}

fn randomize_lora_b(m: &mut LigerModel, rng: &mut StdRng) {
    for layer in &mut m.lora.layers {
        for t in LoraTarget::ALL {
            if let Some(a) = layer.get_mut(t) {
                a.b.iter_mut().for_each(|b| *b = rng.random_range(-0.2..0.2));
            }
        }
    }
}

/// The largest difference between two logit vectors, relative to the largest logit.
fn difference(a: &[f32], b: &[f32]) -> f64 {
    liger_core::testing::max_rel_error(a, &to_f64(b))
}

#[test]
fn graph_replay_gives_the_logits_of_plain_launches() {
    let mut rng = rng("graph_replay_gives_the_logits_of_plain_launches");
    let host = tiny_model(&mut rng);
    let vocab = host.config().vocab_size;
    // Capture needs launches that do not wait for the GPU (the test runner may ask for that).
    let mut ctx = GpuContext::new(0).unwrap();
    ctx.set_sync_after_launch(false);
    ctx.set_profiling(false).unwrap();
    let mut model = GpuLigerModel::<bf16>::new(ctx, host).unwrap();
    let batch = 3;
    let (mut graphed, mut plain) = (model.new_batch_state(batch), model.new_batch_state(batch));
    let prompts: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(7, vocab, rng.random())).collect();
    let run = |model: &GpuLigerModel<bf16>,
               graphed: &mut liger_cuda::GpuLigerState<bf16>,
               plain: &mut liger_cuda::GpuLigerState<bf16>,
               tokens: &[Vec<u32>]|
     -> f64 {
        let tokens: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        model.set_decode_graphs(true);
        let a = model.forward_last_batch(graphed, &tokens).unwrap();
        model.set_decode_graphs(false);
        let b = model.forward_last_batch(plain, &tokens).unwrap();
        assert!(a.iter().all(|v| v.is_finite()) && a.len() == batch * vocab);
        difference(&a, &b)
    };
    let mut worst = run(&model, &mut graphed, &mut plain, &prompts);
    let step_tokens =
        |rng: &mut StdRng| -> Vec<Vec<u32>> { (0..batch).map(|_| random_tokens(1, vocab, rng.random())).collect() };
    for _ in 0..60 {
        let next = step_tokens(&mut rng);
        worst = worst.max(run(&model, &mut graphed, &mut plain, &next));
    }
    println!("60 steps of batch {batch}: graph replay vs plain launches, max rel difference {worst:.2e}");
    assert!(
        graphed.uses_graph() && graphed.graph_captures() == 1,
        "the steps were not replayed from one graph ({} captures)",
        graphed.graph_captures()
    );
    assert!(!plain.uses_graph());
    assert!(worst < 1e-6, "graph replay differs from plain launches: {worst:.2e}");

    // New adapters: the graph is captured again and reads them.
    let before = run(&model, &mut graphed, &mut plain, &step_tokens(&mut rng));
    randomize_lora_b(model.host_mut(), &mut rng);
    let mut after = 0.0f64;
    for _ in 0..5 {
        after = after.max(run(&model, &mut graphed, &mut plain, &step_tokens(&mut rng)));
    }
    println!("after new adapters: max rel difference {after:.2e} ({} captures)", graphed.graph_captures());
    assert_eq!(graphed.graph_captures(), 2, "new adapters must lead to a new capture");
    assert!(before < 1e-6 && after < 1e-6, "{before:.2e} {after:.2e}");

    // A reset state starts again from a prefill, and its steps are replayed correctly.
    graphed.reset();
    plain.reset();
    assert!(graphed.is_empty() && !graphed.uses_graph());
    let prompts: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(4, vocab, rng.random())).collect();
    let mut reset = run(&model, &mut graphed, &mut plain, &prompts);
    for _ in 0..10 {
        reset = reset.max(run(&model, &mut graphed, &mut plain, &step_tokens(&mut rng)));
    }
    println!("after a reset: max rel difference {reset:.2e} ({} captures)", graphed.graph_captures());
    assert!(graphed.uses_graph() && reset < 1e-6, "{reset:.2e}");
    assert_eq!(graphed.len(), 4 + 10);
}

#[test]
fn the_decode_state_keeps_the_window_in_the_storage_type() {
    let mut rng = rng("the_decode_state_keeps_the_window_in_the_storage_type");
    let host = tiny_model(&mut rng);
    let c = host.config().clone();
    let window = host.options.attention.window_keys;
    let model = GpuLigerModel::<bf16>::new(gpu(), host).unwrap();
    let mut state = model.new_batch_state(2);
    let prompt = random_tokens(3, c.vocab_size, rng.random());
    model.forward_last_batch(&mut state, &[&prompt, &prompt]).unwrap();
    let (hkv, d) = (c.num_kv_heads, c.head_dim);
    // Per layer: the f32 state of each kv head, and the window's keys and values in bf16.
    let expected = c.num_layers * (4 * hkv * d * d + 2 * window * hkv * d * 2);
    println!("decode state per sequence: {} bytes (expected {expected})", state.bytes_per_sequence());
    assert_eq!(state.bytes_per_sequence(), expected);
    assert_eq!(model.state_bytes_per_sequence(), expected, "the size known before allocation");
    let err = model.forward_last_batch(&mut state, &[&[c.vocab_size as u32], &[0]]).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    assert_eq!(state.len(), 3, "a refused step must not advance the state");
}

// ---- decoding with a surprise cache ------------------------------------------------------------

/// `x` rounded to `T` and back.
fn stored<T: GpuElement>(x: Vec<f32>) -> Vec<f32> {
    x.into_iter().map(|v| T::from_f32(v).to_f32()).collect()
}

/// Equal, or both NaN (an entry left as poisoned).
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

/// `|a - b|^2 <= tolerance |b|^2` in f64: the repeat rule written out.
fn repeats_value(a: &[f32], b: &[f32], tolerance: f64) -> bool {
    let dist: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    tolerance > 0.0 && dist <= tolerance * norm
}

/// The step kernel of the surprise cache against its rule written out on the host: a sink, a
/// token entering the ring, the first token to leave it (a free slot), one slot in use and one
/// free, and evictions (a higher score takes the first slot of lowest score; an equal or lower
/// one stays out). With the repeat rule (`tolerance` > 0), leaving tokens whose value is a
/// near-copy of a held one stay out, into a full cache or a free slot alike; the lengths of each
/// row follow.
fn surprise_step_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, tolerance: f64) {
    let (shape, window, slots) = (HeadShape { hq: 4, hkv: 2, d: 64 }, Window { keys: 3, sinks: 1 }, 2);
    let HeadShape { hkv, d, .. } = shape;
    let positions: Vec<u32> = vec![0, 2, 4, 9, 10, 5];
    let batch = positions.len();
    let at = SurpriseLayout { batch, shape, window, slots, repeat_tolerance: tolerance };
    let (capacity, rows, width) = (window.capacity(), at.row_entries(), window.keys + slots);
    let (n, v) = (random(rng, batch * hkv * d, 1.0), random(rng, batch * hkv * d, 1.0));
    let den: Vec<f32> = random(rng, batch * hkv * d, 0.5).iter().map(|x| x + 1.0).collect();
    let (mut keys, mut values) = (random(rng, at.cache_len(), 1.0), random(rng, at.cache_len(), 1.0));
    let mut scores: Vec<f32> = (0..at.scores_len()).map(|_| rng.random_range(0.0..1.0)).collect();
    let ring_of = |b: usize| (positions[b] as usize - window.sinks) % window.keys;
    // (sequence, head, the leaving token's score, the slots' (-inf: free)).
    let free = f32::NEG_INFINITY;
    for (b, kvh, leaving, held) in [
        (2, 0, 0.4, [free, free]),
        (2, 1, 0.4, [free, free]),
        (3, 0, 0.9, [0.5, 0.2]),
        (3, 1, 0.1, [0.5, 0.2]),
        (4, 0, 0.7, [0.3, 0.3]),
        (4, 1, 0.3, [0.3, 0.6]),
        (5, 0, 0.2, [0.8, free]),
        (5, 1, 0.2, [0.8, free]),
    ] {
        let row = (b * hkv + kvh) * width;
        scores[row + ring_of(b)] = leaving;
        scores[row + window.keys..row + width].copy_from_slice(&held);
    }
    // Near-copies of a held value (1% off): into the full cache of (3, 0), whose score would
    // enter, and into the free slot of (5, 1).
    for (b, kvh, slot) in [(3, 0, 1), (5, 1, 0)] {
        let r = b * hkv + kvh;
        let (from, to) = ((r * rows + capacity + slot) * d, (r * rows + window.sinks + ring_of(b)) * d);
        for e in 0..d {
            values[to + e] = values[from + e] * 1.01;
        }
    }
    let (keys, values) = (stored::<T>(std::mem::take(&mut keys)), stored::<T>(std::mem::take(&mut values)));
    let (mut want_keys, mut want_values, mut want_scores) = (keys.clone(), values.clone(), to_f64(&scores));
    let mut want_lengths = vec![0u32; batch * hkv];
    for (b, &pos) in positions.iter().enumerate() {
        let pos = pos as usize;
        for kvh in 0..hkv {
            let (r, eps) = (b * hkv + kvh, SCORE_EPS as f64);
            let surprise: f64 =
                (r * d..(r + 1) * d).map(|i| (v[i] as f64 - n[i] as f64 / (den[i] as f64 + eps)).powi(2)).sum();
            if pos < window.sinks {
                want_lengths[r] = pos as u32 + 1;
                continue;
            }
            let (ring, row) = ((pos - window.sinks) % window.keys, r * width);
            let mut used = 0;
            if pos >= capacity {
                let (leaving, held) = (scores[row + ring], &scores[row + window.keys..row + width]);
                used = held.iter().filter(|s| s.is_finite()).count();
                let slot = if used < slots {
                    Some(used)
                } else {
                    let lowest = (0..slots).fold(0, |m, s| if held[s] < held[m] { s } else { m });
                    (leaving > held[lowest]).then_some(lowest)
                };
                let from = (r * rows + window.sinks + ring) * d;
                let value_of = |s: usize| &values[(r * rows + capacity + s) * d..][..d];
                let repeat = (0..used).any(|s| repeats_value(&values[from..from + d], value_of(s), tolerance));
                if let (Some(slot), false) = (slot, repeat) {
                    let to = (r * rows + capacity + slot) * d;
                    want_keys.copy_within(from..from + d, to);
                    want_values.copy_within(from..from + d, to);
                    want_scores[row + window.keys + slot] = leaving as f64;
                    used += usize::from(slot == used);
                }
            }
            want_scores[row + ring] = surprise;
            want_lengths[r] = ((pos + 1).min(capacity) + used) as u32;
        }
    }
    let (mut k_cache, mut v_cache, mut scores_gpu) = (up::<T>(ctx, &keys), up::<T>(ctx, &values), upload(ctx, &scores));
    let positions_gpu = GpuBuffer::from_host(ctx, &positions).unwrap();
    let (n, den, v) = (upload(ctx, &n), upload(ctx, &den), upload(ctx, &v));
    let mut lengths = GpuBuffer::<u32>::zeros(ctx, batch * hkv).unwrap();
    surprise_decode_step(
        ctx,
        &at,
        &positions_gpu,
        &n,
        &den,
        &v,
        &mut k_cache,
        &mut v_cache,
        &mut scores_gpu,
        &mut lengths,
    )
    .unwrap();
    let name = format!("{} repeats {tolerance}", T::KERNEL_SUFFIX);
    assert!(same(&host(&k_cache), &want_keys), "surprise step: the keys differ from the rule's ({name})");
    assert!(same(&host(&v_cache), &want_values), "surprise step: the values differ from the rule's ({name})");
    check(&format!("surprise step scores ({name})"), &scores_gpu, &want_scores, 1e-5);
    assert_eq!(lengths.to_host().unwrap(), want_lengths, "surprise step: the entries in use ({name})");
}

/// The prefill's fill of the caches against writing each token at its window entry on the
/// host and the cache's contents by the CPU rule (`surprise_kept`); a free slot scores -inf,
/// other entries without a token stay as they were.
fn surprise_fill_case<T: GpuElement>(ctx: &GpuContext, rng: &mut StdRng, tokens: usize) {
    let (batch, shape, window, slots) = (2, HeadShape { hq: 4, hkv: 2, d: 32 }, Window { keys: 3, sinks: 1 }, 2);
    let HeadShape { hkv, d, .. } = shape;
    let at = SurpriseLayout { batch, shape, window, slots, repeat_tolerance: 0.0 };
    let (capacity, rows, width) = (window.capacity(), at.row_entries(), window.keys + slots);
    let k_new = stored::<T>(random(rng, batch * tokens * hkv * d, 1.0));
    let v_new = stored::<T>(random(rng, batch * tokens * hkv * d, 1.0));
    let token_scores: Vec<f32> = (0..batch * tokens * hkv).map(|_| rng.random_range(0.0..1.0)).collect();
    let per_sequence = tokens * hkv;
    let kept: Vec<i32> = (0..batch)
        .flat_map(|b| surprise_kept(hkv, window, slots, &token_scores[b * per_sequence..(b + 1) * per_sequence]))
        .collect();
    let (mut want_keys, mut want_values) = (vec![f32::NAN; at.cache_len()], vec![f32::NAN; at.cache_len()]);
    let mut want_scores = vec![f32::NAN; at.scores_len()];
    for b in 0..batch {
        for kvh in 0..hkv {
            let r = b * hkv + kvh;
            let mut held = vec![None; rows];
            for pos in 0..tokens {
                held[window.slot(pos)] = Some(pos);
            }
            let last = &kept[((b * tokens + tokens - 1) * hkv + kvh) * slots..][..slots];
            for (s, &j) in last.iter().enumerate() {
                match j {
                    0.. => held[capacity + s] = Some(j as usize),
                    _ => want_scores[r * width + window.keys + s] = f32::NEG_INFINITY,
                }
            }
            for (entry, token) in held.iter().enumerate() {
                let Some(j) = *token else { continue };
                let (src, dst) = ((b * tokens + j) * hkv + kvh, (r * rows + entry) * d);
                want_keys[dst..dst + d].copy_from_slice(&k_new[src * d..(src + 1) * d]);
                want_values[dst..dst + d].copy_from_slice(&v_new[src * d..(src + 1) * d]);
                if entry >= window.sinks {
                    want_scores[r * width + entry - window.sinks] = token_scores[src];
                }
            }
        }
    }
    let (mut k_cache, mut v_cache) = (poison::<T>(ctx, at.cache_len()), poison::<T>(ctx, at.cache_len()));
    let mut scores = poisoned(ctx, at.scores_len());
    surprise_cache_fill(
        ctx,
        &at,
        tokens,
        &up::<T>(ctx, &k_new),
        &up::<T>(ctx, &v_new),
        &upload(ctx, &token_scores),
        &GpuBuffer::from_host(ctx, &kept).unwrap(),
        &mut k_cache,
        &mut v_cache,
        &mut scores,
    )
    .unwrap();
    let name = format!("{} tokens ({})", tokens, T::KERNEL_SUFFIX);
    assert!(same(&host(&k_cache), &want_keys), "surprise fill after {name}: the keys differ");
    assert!(same(&host(&v_cache), &want_values), "surprise fill after {name}: the values differ");
    assert!(same(&scores.to_host().unwrap(), &want_scores), "surprise fill after {name}: the scores differ");
    println!("surprise fill after {name}: every entry as the rule leaves it");
}

#[test]
fn surprise_cache_kernels_follow_the_cpu_rule() {
    let ctx = gpu();
    let mut rng = rng("surprise_cache_kernels_follow_the_cpu_rule");
    for tolerance in [0.0, 0.05] {
        surprise_step_case::<f32>(&ctx, &mut rng, tolerance);
        surprise_step_case::<bf16>(&ctx, &mut rng, tolerance);
    }
    for tokens in [2, 5, 11] {
        surprise_fill_case::<f32>(&ctx, &mut rng, tokens);
        surprise_fill_case::<bf16>(&ctx, &mut rng, tokens);
    }
    let at = SurpriseLayout {
        batch: 1,
        shape: HeadShape { hq: 2, hkv: 1, d: 32 },
        window: Window { keys: 3, sinks: 1 },
        slots: 2,
        repeat_tolerance: 0.0,
    };
    let f = |n: usize| GpuBuffer::<f32>::zeros(&ctx, n).unwrap();
    let positions = GpuBuffer::<u32>::zeros(&ctx, 1).unwrap();
    let lengths = || GpuBuffer::<u32>::zeros(&ctx, 1).unwrap();
    let (cache, scores) = (at.cache_len(), at.scores_len());
    let err = surprise_decode_step(
        &ctx,
        &at,
        &positions,
        &f(32),
        &f(32),
        &f(32),
        &mut f(cache - 1),
        &mut f(cache),
        &mut f(scores),
        &mut lengths(),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
    let no_slots = SurpriseLayout { slots: 0, ..at };
    let err = surprise_decode_step(
        &ctx,
        &no_slots,
        &positions,
        &f(32),
        &f(32),
        &f(32),
        &mut f(cache),
        &mut f(cache),
        &mut f(scores),
        &mut lengths(),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
    let kept = GpuBuffer::<i32>::zeros(&ctx, 4).unwrap();
    let err = surprise_cache_fill(
        &ctx,
        &at,
        2,
        &f(64),
        &f(64),
        &f(2),
        &kept,
        &mut f(cache),
        &mut f(cache),
        &mut f(scores + 1),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ShapeMismatch, "{}", err.message);
}

/// A three-layer model with head size 64, a window of 8 keys, `sinks` sinks and a surprise
/// cache of `slots` slots, with the repeat rule at `repeats` (0: off).
fn surprise_model(
    rng: &mut StdRng,
    mixer: MixerKind,
    grm_norm: bool,
    sinks: usize,
    (slots, repeats): (usize, f64),
) -> LigerModel {
    let cfg = ModelConfig {
        hidden_size: 128,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        intermediate_size: 96,
        num_layers: 3,
        ..tiny_config(Architecture::Llama)
    };
    let mut options = LigerOptions::default();
    let attention = &mut options.attention;
    attention.mixer = MixerConfig::new(mixer);
    (attention.window_keys, attention.sink_keys, attention.surprise_keys, attention.grm_norm) =
        (8, sinks, slots, grm_norm);
    attention.surprise_repeat_tolerance = repeats;
    converted_model(rng, cfg, options)
}

/// The calls of a decoding run over `len` tokens: the prompt, then one token each, with one
/// call of three tokens on the way (several steps in one call).
fn decode_calls(prompt: usize, len: usize) -> Vec<std::ops::Range<usize>> {
    let (mut calls, mut at) = (Vec::new(), 0);
    while at < len {
        let n = match at {
            0 => prompt,
            _ if at == prompt + 4 => 3.min(len - at),
            _ => 1,
        };
        calls.push(at..at + n);
        at += n;
    }
    calls
}

/// Prefill + steps with a surprise cache give at every position the logits of the CPU engine's
/// decoding and of the GPU's full forward (f32), on sequences long enough that the cache fills
/// and evicts: a long prompt (the prefill fills the cache), then in the same state, reset, a
/// short one (the steps fill it). The state's size is the CPU engine's. With the repeat rule,
/// the first sequence repeats three tokens: the first layer's values repeat exactly, so its
/// heads keep slots free that the other sequence's fill.
#[test]
fn a_surprise_cache_decodes_like_the_cpu_engine_and_the_full_forward() {
    let mut rng = rng("a_surprise_cache_decodes_like_the_cpu_engine_and_the_full_forward");
    let (batch, len) = (2, 36);
    let mut failures = Vec::new();
    for (mixer, grm_norm, sinks, slots, repeats) in [
        (MixerKind::Gla, false, 1, 4, 0.0),
        (MixerKind::Retention, true, 0, 3, 0.0),
        (MixerKind::Hgrn2, false, 2, 1, 0.0),
        (MixerKind::Gla, false, 1, 4, 0.05),
        (MixerKind::Gla, true, 0, 6, 0.3),
    ] {
        let seed: u64 = rng.random();
        let make = || surprise_model(&mut StdRng::seed_from_u64(seed), mixer, grm_norm, sinks, (slots, repeats));
        let cpu = make();
        let vocab = cpu.config().vocab_size;
        let model = GpuLigerModel::<f32>::new(gpu(), make()).unwrap();
        let mut state = model.new_batch_state(batch);
        let (mut worst_cpu, mut worst_full) = (0.0f64, 0.0f64);
        for prompt in [14, 3] {
            state.reset();
            let mut seqs: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(len, vocab, rng.random())).collect();
            if repeats > 0.0 {
                seqs[0] = (0..len).map(|i| seqs[0][i % 3]).collect();
            }
            let full = model.all_logits_batch(&seqs.iter().map(|s| s.as_slice()).collect::<Vec<_>>()).unwrap();
            let mut cpu_states: Vec<_> = (0..batch).map(|_| cpu.new_state()).collect();
            for call in decode_calls(prompt, len) {
                let tokens: Vec<&[u32]> = seqs.iter().map(|s| &s[call.clone()]).collect();
                let got = model.forward_last_batch(&mut state, &tokens).unwrap();
                let last = call.end - 1;
                for (b, cpu_state) in cpu_states.iter_mut().enumerate() {
                    let got = &got[b * vocab..(b + 1) * vocab];
                    assert!(got.iter().all(|v| v.is_finite()));
                    worst_cpu = worst_cpu.max(difference(got, &cpu.forward_last(cpu_state, tokens[b]).unwrap()));
                    worst_full = worst_full.max(difference(got, &full[b][last * vocab..(last + 1) * vocab]));
                }
            }
            assert_eq!(state.len(), len);
        }
        println!(
            "surprise cache {mixer:?} grm_norm {grm_norm} sinks {sinks} slots {slots} repeats {repeats}: prefill + steps, max rel error vs CPU decoding {worst_cpu:.2e}, vs GPU full forward {worst_full:.2e}"
        );
        if !(worst_cpu < 1e-4 && worst_full < 1e-4) {
            failures.push(format!("{mixer:?}: CPU {worst_cpu:.2e}, full forward {worst_full:.2e}"));
        }
        assert_eq!(state.bytes_per_sequence(), model.state_bytes_per_sequence(), "the size known before allocation");
        assert_eq!(model.state_bytes_per_sequence(), cpu.state_bytes(), "the CPU engine's decoding state (f32)");
        // A model converted without the cache knows the size it would keep with it (the
        // linearize report of a cache added after training).
        let mut without = make();
        without.options.attention.set_surprise_cache(Default::default());
        let without = GpuLigerModel::<f32>::new(gpu(), without).unwrap();
        assert!(without.state_bytes_per_sequence() < model.state_bytes_per_sequence());
        assert_eq!(without.state_bytes_per_sequence_with(&cpu.options), model.state_bytes_per_sequence());
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// A surprise cache in bf16: prefill + steps against the bf16 full forward while the cache only
/// fills (its choice then depends on no score, which bf16 rounding could tip one way or the
/// other), the state's size, and steps replayed from a CUDA graph against plain launches while
/// the cache evicts and keeps repeats out.
#[test]
fn a_surprise_cache_decodes_in_bf16_and_replays_from_a_graph() {
    let mut rng = rng("a_surprise_cache_decodes_in_bf16_and_replays_from_a_graph");
    let (batch, len, prompt) = (2, 30, 10);
    // More slots than tokens leave the window: nothing is evicted.
    let slots = 32;
    let host = surprise_model(&mut rng, MixerKind::Gla, true, 1, (slots, 0.0));
    let c = host.config().clone();
    let vocab = c.vocab_size;
    let model = GpuLigerModel::<bf16>::new(gpu(), host).unwrap();
    let seqs: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(len, vocab, rng.random())).collect();
    let full = model.all_logits_batch(&seqs.iter().map(|s| s.as_slice()).collect::<Vec<_>>()).unwrap();
    let mut state = model.new_batch_state(batch);
    let mut worst = 0.0f64;
    for call in decode_calls(prompt, len) {
        let tokens: Vec<&[u32]> = seqs.iter().map(|s| &s[call.clone()]).collect();
        let got = model.forward_last_batch(&mut state, &tokens).unwrap();
        let last = call.end - 1;
        for (b, full) in full.iter().enumerate() {
            worst = worst.max(difference(&got[b * vocab..(b + 1) * vocab], &full[last * vocab..(last + 1) * vocab]));
        }
    }
    println!("surprise cache bf16, {slots} slots: prefill {prompt} + steps vs the bf16 full forward, max rel error {worst:.2e}");
    assert!(worst < 2e-2, "{worst:.2e}");
    // Per layer: two f32 recurrent states, the window and the slots in bf16, their f32 scores.
    let (hkv, d, keys, sinks) = (c.num_kv_heads, c.head_dim, 8, 1);
    let expected =
        c.num_layers * (2 * 4 * hkv * d * d + 2 * (sinks + keys + slots) * hkv * d * 2 + 4 * hkv * (keys + slots));
    assert_eq!(state.bytes_per_sequence(), expected);
    assert_eq!(model.state_bytes_per_sequence(), expected);

    // Capture needs launches that do not wait for the GPU (the test runner may ask for that).
    let mut ctx = GpuContext::new(0).unwrap();
    ctx.set_sync_after_launch(false);
    ctx.set_profiling(false).unwrap();
    // With the repeat rule, and a first sequence that repeats three tokens: its heads keep
    // slots free, so the replayed steps read lengths that differ between heads.
    let host = surprise_model(&mut rng, MixerKind::Gla, false, 1, (4, 0.05));
    let model = GpuLigerModel::<bf16>::new(ctx, host).unwrap();
    let (mut graphed, mut plain) = (model.new_batch_state(batch), model.new_batch_state(batch));
    let mut seqs: Vec<Vec<u32>> = (0..batch).map(|_| random_tokens(len, vocab, rng.random())).collect();
    seqs[0] = (0..len).map(|i| seqs[0][i % 3]).collect();
    let mut worst = 0.0f64;
    for call in decode_calls(prompt, len) {
        let tokens: Vec<&[u32]> = seqs.iter().map(|s| &s[call.clone()]).collect();
        model.set_decode_graphs(true);
        let a = model.forward_last_batch(&mut graphed, &tokens).unwrap();
        model.set_decode_graphs(false);
        let b = model.forward_last_batch(&mut plain, &tokens).unwrap();
        assert!(a.iter().all(|v| v.is_finite()));
        worst = worst.max(difference(&a, &b));
    }
    println!(
        "surprise cache bf16, 4 slots, repeats 0.05: graph replay vs plain launches, max rel difference {worst:.2e}"
    );
    assert!(graphed.uses_graph() && graphed.graph_captures() == 1, "{} captures", graphed.graph_captures());
    assert!(worst < 1e-6, "graph replay differs from plain launches: {worst:.2e}");
}
