//! Learned weights of the two branches of Liger attention, one pair per query head:
//! `o_h = alpha[h] · GRM_h + beta[h] · SWA_h`, in place of the configuration's one `alpha`
//! and `beta` for every head (the paper fixes both at 0.5).
//!
//! Each head can then take as much of the recurrent branch as helps it: a head that retrieves
//! from the window keeps `alpha` near 0, a head that carries the gist of the context can
//! raise it. Without the window branch (`use_swa = false`), `alpha` alone is a learned output
//! scale of the recurrent branch per head. The weights add `2 · heads` numbers per layer and
//! nothing to the decoding state.

use super::config::HeadShape;
use super::liger_attention::LigerAttentionConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One layer's branch weights, one per query head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMix {
    pub alpha: Vec<f32>,
    pub beta: Vec<f32>,
}

impl HeadMix {
    /// Every head with the configuration's weights: the function of the fixed mix, as a start.
    pub fn uniform(cfg: &LigerAttentionConfig, heads: usize) -> Self {
        HeadMix { alpha: vec![cfg.alpha; heads], beta: vec![cfg.beta; heads] }
    }

    /// Zero weights of `heads` heads (gradient buffers).
    pub fn zeros(heads: usize) -> Self {
        HeadMix { alpha: vec![0.0; heads], beta: vec![0.0; heads] }
    }

    /// Checks one weight pair per query head, all finite.
    pub fn validate(&self, heads: usize) -> Result<()> {
        if self.alpha.len() != heads || self.beta.len() != heads {
            return Err(Error::shape(format!(
                "head mix: the model has {heads} query heads, the weights are {} alpha and {} beta",
                self.alpha.len(),
                self.beta.len()
            )));
        }
        if let Some(bad) = self.alpha.iter().chain(&self.beta).find(|w| !w.is_finite()) {
            return Err(Error::invalid_argument(format!(
                "head mix: every weight must be finite, got {bad}; the model file is damaged or training diverged"
            )));
        }
        Ok(())
    }
}

/// The weights of head `h`: learned ones, else the configuration's.
fn weights_of(cfg: &LigerAttentionConfig, mix: Option<&HeadMix>, h: usize) -> (f32, f32) {
    mix.map_or((cfg.alpha, cfg.beta), |m| (m.alpha[h], m.beta[h]))
}

/// `grm = alpha_h · grm + beta_h · swa` for rows of `[T, hq, D]`, in place on the recurrent
/// branch's output (`swa = None`: the recurrent branch alone, scaled).
pub fn mix_branches(
    cfg: &LigerAttentionConfig,
    mix: Option<&HeadMix>,
    shape: HeadShape,
    grm: &mut [f32],
    swa: Option<&[f32]>,
) {
    let d = shape.d;
    for (i, row) in grm.chunks_exact_mut(d).enumerate() {
        let (alpha, beta) = weights_of(cfg, mix, i % shape.hq);
        match swa {
            Some(s) => row.iter_mut().zip(&s[i * d..(i + 1) * d]).for_each(|(g, a)| *g = alpha * *g + beta * a),
            None => row.iter_mut().for_each(|g| *g *= alpha),
        }
    }
}

/// The branches' shares of `d_o`: `(alpha_h · d_o, beta_h · d_o)` (the second empty without
/// the window branch).
pub fn split_branch_grads(
    cfg: &LigerAttentionConfig,
    mix: Option<&HeadMix>,
    shape: HeadShape,
    d_o: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = shape.d;
    let (mut d_grm, mut d_swa) = (Vec::with_capacity(d_o.len()), Vec::new());
    for (i, row) in d_o.chunks_exact(d).enumerate() {
        let (alpha, beta) = weights_of(cfg, mix, i % shape.hq);
        d_grm.extend(row.iter().map(|g| alpha * g));
        if cfg.use_swa {
            d_swa.extend(row.iter().map(|g| beta * g));
        }
    }
    (d_grm, d_swa)
}

/// Adds the gradients of `sum(d_o · o)` w.r.t. the weights into `grad`: per head,
/// `Σ d_o · grm` to alpha and `Σ d_o · swa` to beta, over the head's rows of `[T, hq, D]`.
/// `grm` and `swa` are the branches' outputs before the mix (GPU twin: `head_mix_grads` in
/// kernels/model.cu).
pub fn head_mix_grads(shape: HeadShape, d_o: &[f32], grm: &[f32], swa: Option<&[f32]>, grad: &mut HeadMix) {
    let d = shape.d;
    for (i, g_row) in d_o.chunks_exact(d).enumerate() {
        let h = i % shape.hq;
        let span = i * d..(i + 1) * d;
        grad.alpha[h] += g_row.iter().zip(&grm[span.clone()]).map(|(g, x)| (g * x) as f64).sum::<f64>() as f32;
        if let Some(s) = swa {
            grad.beta[h] += g_row.iter().zip(&s[span]).map(|(g, x)| (g * x) as f64).sum::<f64>() as f32;
        }
    }
}
