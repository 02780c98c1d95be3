//! Speed of the GPU Liger model: training-step tokens/s (LoRA r=8 on q, k, v, bf16 frozen
//! weights, random weights made on the GPU) and decoding time per step at batch 1 and more,
//! for the shapes `135m`, `1b` and `8b`. Prints one JSON line per measurement.
//!
//!     cargo run -p liger-cuda --release --example bench_gpu -- \
//!         --shapes 135m,1b --train 8x1024,1x1024 --decode-batches 1,16 --contexts 1024,32768
//!
//! `--mixer NAME` picks the Liger mixer (default gla); `--surprise-keys N` trains with a
//! surprise cache of N keys beside the window and 4 sinks, `--surprise-repeats R` with its
//! repeat rule, `--window N` with a window of N keys (default 65; the memory recipe's is 257);
//! decoding runs the same model. A decoding step is timed twice: with the logits copied back
//! (`step_ms`, as `forward_last_batch`) and with the greedy token picked on the GPU and only
//! the token ids copied back (`sampled_step_ms`, as the generation loop runs it).
//!
//! With `--profile`, one more training step runs with the time profile on
//! (`GpuContext::set_profiling`) and its table goes to stderr: where the step's time goes.
//!
//! A training step is forward + backward on the GPU, the gradients back on the host and the
//! AdamW update there (as `Trainer` does); steps end with a synchronisation, so wall-clock
//! time is the step time. Median of several steps after warm-up.

use half::bf16;
use liger_core::config::{Architecture, ModelConfig};
use liger_core::convert::{LigerOptions, LoraOptions, LoraTarget};
use liger_core::liger::{MixerConfig, MixerKind};
use liger_core::nn::optim::{AdamWConfig, AdamWState};
use liger_core::train::trainer::Trainable;
use liger_core::Result;
use liger_cuda::model::memory::{keep_freed_memory_pooled, peak_memory, reset_peak_memory};
use liger_cuda::model::shape_only_host;
use liger_cuda::{GpuContext, GpuLigerModel, GpuWeights};
use std::time::Instant;

/// A benchmark shape: the sizes of a Llama-family model.
struct Shape {
    name: &'static str,
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    vocab: usize,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "135m",
        layers: 30,
        hidden: 576,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        intermediate: 1536,
        vocab: 49152,
    },
    Shape {
        name: "1b",
        layers: 16,
        hidden: 2048,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
        intermediate: 8192,
        vocab: 128256,
    },
    Shape {
        name: "8b",
        layers: 32,
        hidden: 4096,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        intermediate: 14336,
        vocab: 128256,
    },
];

fn config(name: &str) -> Option<ModelConfig> {
    let s = SHAPES.iter().find(|s| s.name == name)?;
    Some(ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: s.vocab,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_layers: s.layers,
        num_heads: s.heads,
        num_kv_heads: s.kv_heads,
        head_dim: s.head_dim,
        rope_theta: 500000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 131072,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    })
}

/// Median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Tokens from a simple generator (speed does not depend on them).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// The window and the surprise cache of the benchmarked model.
#[derive(Clone, Copy)]
struct Cache {
    window: usize,
    surprise_keys: usize,
    repeats: f64,
}

fn model(name: &str, mixer: MixerKind, cache: Cache) -> Result<GpuLigerModel<bf16>> {
    let cfg = config(name)
        .ok_or_else(|| liger_core::Error::invalid_argument(format!("unknown shape {name}; known: 135m, 1b, 8b")))?;
    let ctx = GpuContext::new(0)?;
    keep_freed_memory_pooled(&ctx)?;
    let lora = LoraOptions { rank: 8, alpha: 8.0, targets: vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V], seed: 0 };
    let mut options = LigerOptions::default();
    options.attention.mixer = MixerConfig::new(mixer);
    options.attention.window_keys = cache.window;
    if cache.surprise_keys > 0 {
        (options.attention.sink_keys, options.attention.surprise_keys) = (4, cache.surprise_keys);
        options.attention.surprise_repeat_tolerance = cache.repeats;
    }
    let host = shape_only_host(&cfg, options, lora)?;
    let weights = GpuWeights::<bf16>::random(&ctx, &cfg, 7)?;
    GpuLigerModel::with_weights(ctx, host, weights)
}

fn train(
    name: &str,
    mixer: MixerKind,
    cache: Cache,
    batch: usize,
    seq: usize,
    steps: usize,
    profile: bool,
) -> Result<String> {
    let mut m = model(name, mixer, cache)?;
    let vocab = m.config().vocab_size;
    let seqs: Vec<Vec<u32>> = (0..2 * batch).map(|i| tokens(seq, vocab, i as u64)).collect();
    let mut grads = m.new_grads();
    let sizes: Vec<usize> = m.params().iter().map(|p| p.1.len()).collect();
    let mut adam = AdamWState::new(&sizes);
    let cfg = AdamWConfig::default();
    reset_peak_memory(m.context())?;
    let mut times = Vec::new();
    for step in 0..steps + 2 {
        let picked = &seqs[(step % 2) * batch..(step % 2 + 1) * batch];
        let inputs: Vec<&[u32]> = picked.iter().map(|s| s.as_slice()).collect();
        let start = Instant::now();
        grads.zero();
        let out = m.forward_backward_batch(&inputs, &inputs, 1.0 / (batch * seq) as f32, &mut grads)?;
        adam.update(&cfg, 1e-3, &mut m.params_mut(), &grads.as_slices());
        if step >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
        if !out.loss_sum.is_finite() {
            return Err(liger_core::Error::internal("the benchmark loss is not finite"));
        }
    }
    let step_s = median(times);
    if profile {
        let inputs: Vec<&[u32]> = seqs[..batch].iter().map(|s| s.as_slice()).collect();
        m.context().set_profiling(true)?;
        grads.zero();
        m.forward_backward_batch(&inputs, &inputs, 1.0 / (batch * seq) as f32, &mut grads)?;
        let entries = m.context().profile()?;
        m.context().set_profiling(false)?;
        eprintln!(
            "profile of one training step, {name} {batch}x{seq}:\n{}",
            liger_cuda::profile::format_profile(&entries[..entries.len().min(40)])
        );
    }
    let peak = peak_memory(m.context())? as f64 / (1u64 << 30) as f64;
    let (mixer_ms, attention_ms) = kernel_share(&m, batch, seq)?;
    Ok(format!(
        r#"{{"bench":"train_step","shape":"{name}","mixer":"{}","dtype":"bf16","lora":"r8 q,k,v","batch":{batch},"seq":{seq},"window":{},"surprise_keys":{},"surprise_repeats":{},"step_ms":{:.2},"tokens_per_s":{:.0},"peak_pool_gib":{peak:.2},"mixer_fwd_bwd_ms_all_layers":{mixer_ms:.1},"swa_fwd_bwd_ms_all_layers":{attention_ms:.1},"device":"{}"}}"#,
        mixer.name(),
        cache.window,
        cache.surprise_keys,
        cache.repeats,
        step_s * 1e3,
        (batch * seq) as f64 / step_s,
        m.context().info().name
    ))
}

/// Milliseconds a training step spends in the mixer and in the windowed attention (one
/// forward and one backward per layer, in the types the bf16 model runs them: the mixer on
/// f32 activations, the attention in bf16 on tensor cores), measured on their own at the
/// step's sizes: where the step's time goes.
fn kernel_share(m: &GpuLigerModel<bf16>, batch: usize, seq: usize) -> Result<(f64, f64)> {
    use liger_cuda::ops::attention::{attention_backward, attention_forward, AttentionDims};
    use liger_cuda::ops::mixer::{mixer_chunk_backward, mixer_chunk_forward, MixerDims};
    use liger_cuda::GpuBuffer;
    let ctx = m.context();
    let c = m.config();
    let shape = liger_core::liger::HeadShape::new(c.num_heads, c.num_kv_heads, c.head_dim)?;
    let n = batch * seq;
    let filled = |len: usize, seed: u64| -> Result<GpuBuffer<f32>> {
        let mut b = GpuBuffer::zeros(ctx, len)?;
        liger_cuda::model::glue::fill_uniform(ctx, &mut b, seed, 0.0, 1.0)?;
        Ok(b)
    };
    let (q, k, v, d_o) = (
        filled(n * c.q_size(), 1)?,
        filled(n * c.kv_size(), 2)?,
        filled(n * c.kv_size(), 3)?,
        filled(n * c.q_size(), 4)?,
    );
    let (mut o, mut dq) = (GpuBuffer::zeros(ctx, q.len())?, GpuBuffer::zeros(ctx, q.len())?);
    let (mut dk, mut dv) = (GpuBuffer::zeros(ctx, k.len())?, GpuBuffer::zeros(ctx, k.len())?);
    let mut lse = GpuBuffer::zeros(ctx, batch * shape.hq * seq)?;
    let att = m.host().options.attention;
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        ctx.synchronize()?;
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            f()?;
            ctx.synchronize()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(times))
    };
    let mdims = MixerDims { batch, tokens: seq, shape };
    let mixer = time(&mut || {
        mixer_chunk_forward(ctx, &att.mixer, mdims, &q, &k, &v, &mut o, None, None)?;
        mixer_chunk_backward(ctx, &att.mixer, mdims, &q, &k, &v, &d_o, &mut dq, &mut dk, &mut dv)
    })?;
    let adims = AttentionDims { batch, tokens: seq, shape };
    let window = Some(att.window());
    let half = |x: &GpuBuffer<f32>| liger_cuda::model::glue::scaled::<bf16>(ctx, x, 1.0);
    let (qh, kh, vh, doh) = (half(&q)?, half(&k)?, half(&v)?, half(&d_o)?);
    let (mut oh, mut dqh) = (GpuBuffer::<bf16>::zeros(ctx, q.len())?, GpuBuffer::<bf16>::zeros(ctx, q.len())?);
    let (mut dkh, mut dvh) = (GpuBuffer::<bf16>::zeros(ctx, k.len())?, GpuBuffer::<bf16>::zeros(ctx, k.len())?);
    let attention = time(&mut || {
        attention_forward(ctx, adims, window, &qh, &kh, &vh, &mut oh, &mut lse)?;
        attention_backward(ctx, adims, window, &qh, &kh, &vh, &oh, &lse, &doh, &mut dqh, &mut dkh, &mut dvh)
    })?;
    Ok((mixer * c.num_layers as f64, attention * c.num_layers as f64))
}

fn decode(
    name: &str,
    mixer: MixerKind,
    cache: Cache,
    batch: usize,
    context: usize,
    steps: usize,
    profile: bool,
) -> Result<String> {
    let m = model(name, mixer, cache)?;
    let vocab = m.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch).map(|i| tokens(context, vocab, 100 + i as u64)).collect();
    let mut state = m.new_batch_state(batch);
    reset_peak_memory(m.context())?;
    let start = Instant::now();
    m.forward_last_batch(&mut state, &prompts.iter().map(|p| p.as_slice()).collect::<Vec<_>>())?;
    let prefill_s = start.elapsed().as_secs_f64();
    // Median wall time of a step (logits or, sampled on the GPU, token ids copied back
    // included), after 3 warm-up steps.
    let greedy = liger_core::sampling::SamplingOptions::default();
    let draws = vec![0.0f32; batch];
    let timed = |state: &mut liger_cuda::GpuLigerState<bf16>, sample: bool| -> Result<f64> {
        let mut times = Vec::new();
        for step in 0..steps + 3 {
            let next: Vec<Vec<u32>> = (0..batch).map(|b| tokens(1, vocab, (step * batch + b) as u64)).collect();
            let rows: Vec<&[u32]> = next.iter().map(|p| p.as_slice()).collect();
            let start = Instant::now();
            if sample {
                m.forward_sample_batch(state, &rows, &greedy, &draws)?;
            } else {
                m.forward_last_batch(state, &rows)?;
            }
            if step >= 3 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(median(times) * 1e3)
    };
    let step_ms = timed(&mut state, false)?;
    let sampled_step_ms = timed(&mut state, true)?;
    let graph = state.uses_graph();
    m.set_decode_graphs(false);
    let plain_step_ms = timed(&mut state, false)?;
    m.set_decode_graphs(true);
    if profile {
        m.context().set_profiling(true)?;
        let next: Vec<Vec<u32>> = (0..batch).map(|b| tokens(1, vocab, b as u64)).collect();
        m.context().profile_restart()?;
        m.forward_last_batch(&mut state, &next.iter().map(|p| p.as_slice()).collect::<Vec<_>>())?;
        let entries = m.context().profile()?;
        m.context().set_profiling(false)?;
        eprintln!(
            "profile of one decoding step (plain launches), {name} b{batch}:\n{}",
            liger_cuda::profile::format_profile(&entries)
        );
    }
    let peak = peak_memory(m.context())? as f64 / (1u64 << 30) as f64;
    Ok(format!(
        r#"{{"bench":"decode","shape":"{name}","mixer":"{}","dtype":"bf16","batch":{batch},"context":{context},"window":{},"surprise_keys":{},"surprise_repeats":{},"prefill_s":{prefill_s:.3},"step_ms":{step_ms:.3},"sampled_step_ms":{sampled_step_ms:.3},"graph":{graph},"plain_step_ms":{plain_step_ms:.3},"state_bytes_per_seq":{},"ms_per_token":{:.4},"tokens_per_s":{:.0},"peak_pool_gib":{peak:.2}}}"#,
        mixer.name(),
        cache.window,
        cache.surprise_keys,
        cache.repeats,
        state.bytes_per_sequence(),
        step_ms / batch as f64,
        batch as f64 * 1e3 / step_ms
    ))
}

fn list(args: &[String], flag: &str, default: &str) -> Vec<String> {
    let value = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map_or(default, |s| s.as_str());
    value.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shapes = list(&args, "--shapes", "135m");
    let trains = list(&args, "--train", "8x1024");
    let batches = list(&args, "--decode-batches", "1,16");
    let contexts = list(&args, "--contexts", "1024");
    let steps: usize = list(&args, "--steps", "5")[0].parse().unwrap_or(5);
    let profile = args.iter().any(|a| a == "--profile");
    let mixer_name = list(&args, "--mixer", "gla")[0].clone();
    let number = |flag: &str, default: &str| {
        list(&args, flag, default)[0].parse::<f64>().unwrap_or_else(|_| {
            eprintln!("{flag} takes a number");
            std::process::exit(2)
        })
    };
    let cache = Cache {
        window: number("--window", "65") as usize,
        surprise_keys: number("--surprise-keys", "0") as usize,
        repeats: number("--surprise-repeats", "0"),
    };
    let Some(mixer) = MixerKind::ALL.into_iter().find(|k| k.name() == mixer_name) else {
        eprintln!("--mixer takes one of gla, hgrn2, gsa, retention, mamba2, rwkv6, linear; got {mixer_name}");
        std::process::exit(2);
    };
    let report = |what: String, r: Result<String>| match r {
        Ok(line) => println!("{line}"),
        Err(e) => println!(r#"{{"bench":"{what}","error":"{}: {}"}}"#, e.code, e.message.replace('"', "'")),
    };
    for shape in &shapes {
        for bt in &trains {
            let Some((b, t)) = bt.split_once('x').and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?))) else {
                eprintln!("--train takes BxT pairs such as 8x1024, got {bt}");
                std::process::exit(2);
            };
            report(format!("train_step {shape} {bt}"), train(shape, mixer, cache, b, t, steps, profile));
        }
        for b in &batches {
            for ctx_len in &contexts {
                let (Ok(b), Ok(c)) = (b.parse(), ctx_len.parse()) else {
                    eprintln!("--decode-batches and --contexts take numbers");
                    std::process::exit(2);
                };
                report(format!("decode {shape} b{b} c{c}"), decode(shape, mixer, cache, b, c, 20, profile));
            }
        }
    }
}
