//! Helpers of the GPU tests: the device, fresh random inputs, poisoned outputs, error checks.
#![allow(dead_code)]

pub mod mixer;

use liger_core::config::{Architecture, ModelConfig};
use liger_core::testing::tiny_config;
use liger_core::tokenizer::Tokenizer;
use liger_cuda::{GpuBuffer, GpuContext, GpuElement};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// GPU 0, synchronising after every launch so a fault names its kernel. Fails (never skips)
/// without a GPU.
pub fn gpu() -> GpuContext {
    let mut ctx = GpuContext::new(0).unwrap_or_else(|e| panic!("the GPU tests need an NVIDIA GPU: {e}"));
    ctx.set_sync_after_launch(true);
    ctx
}

/// A generator with a fresh seed, printed so a failure can be replayed.
pub fn rng(test: &str) -> StdRng {
    let seed: u64 = rand::random();
    println!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// An output buffer filled with NaN, so that any element a kernel does not write shows.
pub fn poisoned(ctx: &GpuContext, n: usize) -> GpuBuffer<f32> {
    GpuBuffer::filled(ctx, n, f32::NAN).unwrap()
}

pub fn upload(ctx: &GpuContext, host: &[f32]) -> GpuBuffer<f32> {
    GpuBuffer::from_host(ctx, host).unwrap()
}

/// Copies `got` back, checks every element was written (no NaN left), and that its max
/// relative error against `reference` is below `tol`. Returns the error.
pub fn check(name: &str, got: &GpuBuffer<f32>, reference: &[f64], tol: f64) -> f64 {
    let host = got.to_host().unwrap();
    check_host(name, &host, reference, tol)
}

pub fn check_host(name: &str, host: &[f32], reference: &[f64], tol: f64) -> f64 {
    assert_eq!(host.len(), reference.len(), "{name}: length");
    let unwritten = host.iter().filter(|v| v.is_nan()).count();
    assert_eq!(unwritten, 0, "{name}: {unwritten} of {} elements were not written", host.len());
    let err = liger_core::testing::max_rel_error(host, reference);
    println!("{name}: max relative error {err:.3e} over {} values", host.len());
    assert!(err < tol, "{name}: max relative error {err:.3e} is above {tol:.0e}");
    err
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// RoPE's inverse frequencies for a head of `head_dim`, as the model computes them.
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|j| 1.0 / theta.powf(2.0 * j as f32 / head_dim as f32)).collect()
}

/// A buffer of `T` holding `x` rounded to `T`.
pub fn up<T: GpuElement>(ctx: &GpuContext, x: &[f32]) -> GpuBuffer<T> {
    GpuBuffer::from_host(ctx, &x.iter().map(|&v| T::from_f32(v)).collect::<Vec<_>>()).unwrap()
}

/// An output buffer of `T` filled with NaN (see [`poisoned`]).
pub fn poison<T: GpuElement>(ctx: &GpuContext, n: usize) -> GpuBuffer<T> {
    GpuBuffer::filled(ctx, n, T::from_f32(f32::NAN)).unwrap()
}

/// A buffer of `T` copied back as f32.
pub fn host<T: GpuElement>(x: &GpuBuffer<T>) -> Vec<f32> {
    x.to_host().unwrap().into_iter().map(|v| v.to_f32()).collect()
}

/// A tiny model config whose heads the GPU kernels take (head size 32).
pub fn tiny_gpu_config(arch: Architecture) -> ModelConfig {
    ModelConfig {
        hidden_size: 64,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        intermediate_size: 96,
        ..tiny_config(arch)
    }
}

/// A word-level tokenizer over the tiny config's 97 ids: <unk>, BOS 1, EOS 2, then words
/// `w3`..`w96`; text splits at whitespace and unknown words map to <unk>.
pub fn word_tokenizer() -> Tokenizer {
    let mut vocab = vec![r#""<unk>":0"#.to_string(), r#""<s>":1"#.into(), r#""</s>":2"#.into()];
    vocab.extend((3..97).map(|i| format!(r#""w{i}":{i}"#)));
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<unk>"}}}}"#,
        vocab.join(",")
    );
    Tokenizer::from_json(json.as_bytes(), "test tokenizer").unwrap()
}
