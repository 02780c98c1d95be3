//! Helpers shared by tests (and benchmarks): tiny random models, the default model's path,
//! error measures. Public so integration tests and other crates' tests can use them.

use crate::config::{Architecture, ModelConfig};
use crate::tensor::QTensor;
use crate::weights::{LayerWeights, ModelWeights};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// A fresh directory under the system's temp folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("liger-{tag}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// File name of the default model in the cache folder.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cache folder: `$LIGER_CACHE_DIR`, else `~/.cache/liger`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIGER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("liger")
}

/// Path of the default model for tests: `$LIGER_MODEL_GGUF`, else the cache folder's copy.
/// Panics with instructions when it is missing, so that a test never passes silently without it.
pub fn default_model_path() -> PathBuf {
    let path =
        std::env::var_os("LIGER_MODEL_GGUF").map(PathBuf::from).unwrap_or_else(|| cache_dir().join(DEFAULT_MODEL_FILE));
    assert!(path.is_file(), "the default model is missing at {}: run `npm run fetch-model` first", path.display());
    path
}

/// A small config for tests; `arch` decides biases and q/k norms.
pub fn tiny_config(arch: Architecture) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        vocab_size: 97,
        hidden_size: 48,
        intermediate_size: 80,
        num_layers: 2,
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 8,
        rope_theta: 10000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 256,
        tie_word_embeddings: arch != Architecture::Mistral,
        attention_bias: arch == Architecture::Qwen2,
        qk_norm: arch == Architecture::Qwen3,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// Random f32 weights for `cfg` (uniform, scaled like a trained model's), from `seed`.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mat = |rows: usize, cols: usize| {
        let s = 1.0 / (cols as f32).sqrt();
        QTensor::from_f32(rows, cols, (0..rows * cols).map(|_| rng.random_range(-s..s) * 1.7).collect())
    };
    let embed = mat(cfg.vocab_size, cfg.hidden_size);
    let lm_head = (!cfg.tie_word_embeddings).then(|| mat(cfg.vocab_size, cfg.hidden_size));
    let (h, q, kv, f) = (cfg.hidden_size, cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let mut layers = Vec::new();
    for _ in 0..cfg.num_layers {
        layers.push(LayerWeights {
            attn_norm: Vec::new(),
            wq: mat(q, h),
            wk: mat(kv, h),
            wv: mat(kv, h),
            wo: mat(h, q),
            bq: None,
            bk: None,
            bv: None,
            q_norm: None,
            k_norm: None,
            ffn_norm: Vec::new(),
            w_gate: mat(f, h),
            w_up: mat(f, h),
            w_down: mat(h, f),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut vec = |n: usize, center: f32, spread: f32| -> Vec<f32> {
        (0..n).map(|_| center + rng.random_range(-spread..spread)).collect()
    };
    for l in &mut layers {
        l.attn_norm = vec(h, 1.0, 0.3);
        l.ffn_norm = vec(h, 1.0, 0.3);
        if cfg.attention_bias {
            l.bq = Some(vec(q, 0.0, 0.2));
            l.bk = Some(vec(kv, 0.0, 0.2));
            l.bv = Some(vec(kv, 0.0, 0.2));
        }
        if cfg.qk_norm {
            l.q_norm = Some(vec(cfg.head_dim, 1.0, 0.3));
            l.k_norm = Some(vec(cfg.head_dim, 1.0, 0.3));
        }
    }
    let final_norm = vec(h, 1.0, 0.3);
    ModelWeights { embed, layers, final_norm, lm_head }
}

/// Random token ids below `vocab`.
pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// max |a - b| / max(|b|) over all elements: an error relative to the reference's scale.
pub fn max_rel_error(a: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(a.len(), reference.len());
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(reference).map(|(x, r)| (*x as f64 - r).abs()).fold(0.0, f64::max) / scale
}

/// Byte offsets of the f16 scale (and minimum) fields inside one block of `ty`.
fn scale_offsets(ty: crate::tensor::GgmlType) -> &'static [usize] {
    use crate::tensor::GgmlType as T;
    match ty {
        T::F32 | T::F16 | T::BF16 | T::I8Row => &[],
        T::Q4_0 | T::Q5_0 | T::Q8_0 => &[0],
        T::Q4_1 | T::Q5_1 | T::Q4K | T::Q5K => &[0, 2],
        T::Q2K => &[80, 82],
        T::Q3K => &[108],
        T::Q6K => &[208],
    }
}

/// `n` values of `ty` (a multiple of its block size) as random stored bytes, from `seed`:
/// every code and packed sub-scale random, the f16 scales random in ±[0.001, 0.02), float
/// values uniform in [-1, 1). Covers every bit pattern the dot products must decode.
pub fn random_quantized_row(ty: crate::tensor::GgmlType, n: usize, seed: u64) -> Vec<u8> {
    use crate::tensor::GgmlType as T;
    use half::{bf16, f16};
    let mut rng = StdRng::seed_from_u64(seed);
    match ty {
        T::F32 => (0..n).flat_map(|_| rng.random_range(-1.0f32..1.0).to_le_bytes()).collect(),
        T::F16 => (0..n).flat_map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes()).collect(),
        T::BF16 => (0..n).flat_map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes()).collect(),
        // One f32 row scale, then random signed byte codes.
        T::I8Row => rng
            .random_range(0.001f32..0.02)
            .to_le_bytes()
            .into_iter()
            .chain((0..n).map(|_| rng.random::<u8>()))
            .collect(),
        _ => {
            let bytes = ty.bytes_for(n).expect("n must be a multiple of the block size");
            let mut out: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
            for block in out.chunks_exact_mut(ty.block_bytes()) {
                for &at in scale_offsets(ty) {
                    let magnitude = rng.random_range(0.001f32..0.02);
                    let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                    block[at..at + 2].copy_from_slice(&f16::from_f32(sign * magnitude).to_le_bytes());
                }
            }
            out
        }
    }
}
