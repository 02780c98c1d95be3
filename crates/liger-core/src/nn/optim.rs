//! AdamW with decoupled weight decay, global-norm gradient clipping, learning-rate schedules.

use crate::error::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Moment estimates for a list of parameter tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdamWState {
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamWState {
    pub fn new(sizes: &[usize]) -> Self {
        AdamWState {
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update of every parameter tensor with its gradient at learning rate `lr`.
    pub fn update(&mut self, cfg: &AdamWConfig, lr: f32, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        let every = vec![true; params.len()];
        self.update_masked(cfg, lr, params, grads, &every)
    }

    /// As [`AdamWState::update`], with the weight decay on the tensors whose `decays` entry is
    /// true only.
    pub fn update_masked(
        &mut self,
        cfg: &AdamWConfig,
        lr: f32,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
        decays: &[bool],
    ) {
        assert_eq!(params.len(), self.m.len());
        assert_eq!(decays.len(), params.len());
        self.step += 1;
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (cfg.beta2 as f64).powi(self.step as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for ((((p, g), m), v), &decays) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v).zip(decays) {
            let decay = if decays { cfg.weight_decay } else { 0.0 };
            for i in 0..p.len() {
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                // Decoupled weight decay (Loshchilov & Hutter), then the Adam step.
                p[i] -= lr * decay * p[i];
                p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + cfg.eps);
            }
        }
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping. A non-finite norm is an error (training must stop rather than corrupt weights).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> Result<f32> {
    let sq: f64 = grads.iter().flat_map(|g| g.iter()).map(|&x| (x as f64) * (x as f64)).sum();
    let norm = sq.sqrt() as f32;
    if !norm.is_finite() {
        return Err(Error::new(
            ErrorCode::NonFiniteLoss,
            "the gradient norm is not finite; lower the learning rate or check the data",
        ));
    }
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        grads.iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= s));
    }
    Ok(norm)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Linear warmup from 0 over `warmup_steps`, then cosine decay to `min_ratio · lr` at `total_steps`.
    Cosine {
        warmup_steps: u64,
        total_steps: u64,
        min_ratio: f32,
    },
}

impl LrSchedule {
    /// Learning rate at (0-based) `step`.
    pub fn lr_at(&self, base: f32, step: u64) -> f32 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine { warmup_steps, total_steps, min_ratio } => {
                if step < warmup_steps {
                    return base * (step + 1) as f32 / warmup_steps as f32;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1);
                let progress = ((step - warmup_steps) as f32 / span as f32).min(1.0);
                let cos = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
                base * (min_ratio + (1.0 - min_ratio) * cos)
            }
        }
    }
}
