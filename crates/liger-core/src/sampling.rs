//! Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 picks the most likely token (greedy); higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid_argument(format!(
                "temperature must be a number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid_argument(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

pub struct Sampler {
    options: SamplingOptions,
    rng: StdRng,
    /// (token, probability) scratch space, reused between calls.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(options: SamplingOptions) -> Result<Self> {
        options.validate()?;
        let rng = StdRng::seed_from_u64(options.seed);
        Ok(Sampler { options, rng, candidates: Vec::new() })
    }

    pub fn options(&self) -> &SamplingOptions {
        &self.options
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.options.temperature == 0.0 {
            return argmax(logits);
        }
        let u = self.draw();
        sample_with_draw(&self.options, logits, u, &mut self.candidates)
    }

    /// The uniform number in `[0, 1)` the next non-greedy [`Sampler::sample`] would use, taken
    /// from the seeded generator. A sampler on another device takes it from here and picks the
    /// same token as [`sample_with_draw`]; greedy sampling draws nothing.
    pub fn draw(&mut self) -> f32 {
        self.rng.random::<f32>()
    }
}

/// The token that `options` (temperature > 0) pick from `logits` given the uniform draw `u`:
/// filter (temperature, top-k, top-p), then the inverse CDF at `u`. `candidates` is scratch
/// space. Every step is plain f32 arithmetic in a fixed order (and [`exp_nonpositive`] instead
/// of the platform's `exp`), so any device that repeats it picks exactly the same token.
pub fn sample_with_draw(options: &SamplingOptions, logits: &[f32], u: f32, candidates: &mut Vec<(u32, f32)>) -> u32 {
    let c = candidates;
    c.clear();
    c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l / options.temperature)));
    // Most likely first; ties broken by token id so the order is deterministic.
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = if options.top_k == 0 { c.len() } else { options.top_k.min(c.len()) };
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, by_logit);
        c.truncate(k);
    }
    c.sort_unstable_by(by_logit);
    let max = c[0].1;
    let mut sum = 0.0f32;
    for e in c.iter_mut() {
        e.1 = exp_nonpositive(e.1 - max);
        sum += e.1;
    }
    for e in c.iter_mut() {
        e.1 /= sum;
    }
    if options.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = c.iter().position(|e| {
            acc += e.1;
            acc >= options.top_p
        });
        c.truncate(keep.map_or(c.len(), |i| i + 1));
    }
    let mut total = 0.0f32;
    for e in c.iter() {
        total += e.1;
    }
    let mut r = u * total;
    for e in c.iter() {
        r -= e.1;
        if r <= 0.0 {
            return e.0;
        }
    }
    c[c.len() - 1].0
}

/// `e^x` for `x <= 0` (0 below -87), accurate to about one unit in the last place, from plain
/// multiplies and adds with no fused steps: every platform, and the GPU sampler, gets the same
/// bits, which the platform's `exp` does not promise.
pub fn exp_nonpositive(x: f32) -> f32 {
    if x < -87.0 {
        return 0.0;
    }
    // x = n ln2 + r with |r| <= ln2 / 2; ln2 split so that n * LN2_HI is exact.
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let n = (x * LOG2E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series to r^7: the remainder is below 1e-8 relative for |r| <= 0.35.
    const C: [f32; 6] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];
    let mut p = C[0];
    for c in &C[1..] {
        p = p * r + c;
    }
    p = (p * r + 1.0) * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests;
