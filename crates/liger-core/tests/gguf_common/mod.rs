//! Helpers shared by the GGUF and quantization tests: where fixtures and the model live.
#![allow(dead_code)]

use liger_core::gguf::GgufFile;

pub use liger_core::testing::cache_dir;

/// Opens a fixture made by `scripts/make-quant-fixtures.py`, failing with instructions if absent.
pub fn open_fixture(name: &str) -> GgufFile {
    let path = cache_dir().join("fixtures").join(name);
    if !path.is_file() {
        panic!(
            "fixture {} is missing: run `python3 scripts/make-quant-fixtures.py` (needs `pip install gguf numpy`)",
            path.display()
        );
    }
    GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}; run scripts/make-quant-fixtures.py again", path.display()))
}

/// Deterministic uniform values in [-scale, scale).
pub fn random_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}
