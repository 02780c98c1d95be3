//! Tests of the Liger mixers against the float64 references, on fresh random inputs.
//! Errors are reported as `max |got - want| / max |want|` over the whole tensor.

mod backward;
mod gated_delta;
mod liger_attention;
mod mixers;
mod surprise;
mod swa;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A generator seeded from the clock (printed, so a failure can be replayed).
pub(super) fn rng() -> SmallRng {
    let seed = std::env::var("LIGER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("seed {seed} (set LIGER_TEST_SEED to replay)");
    SmallRng::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`.
pub(super) fn uniform(rng: &mut SmallRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub(super) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// `max |got - want| / max |want|`.
pub(super) fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "compared tensors differ in size");
    assert!(got.iter().all(|x| x.is_finite()), "result holds non-finite values");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "the reference is all zeros: the inputs do not exercise the op");
    let diff = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
    diff / scale
}

/// Central-difference gradient of `f` at `x` (f64), `h` the step.
pub(super) fn numeric_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            xs[i] = x[i] + h;
            let up = f(&xs);
            xs[i] = x[i] - h;
            let down = f(&xs);
            xs[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
