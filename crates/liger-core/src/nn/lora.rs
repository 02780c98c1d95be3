//! LoRA: a low-rank update `W + (alpha / r) · B A` of a frozen projection, trained in place of W.

use crate::linalg::{matmul, MatRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One adapter for a projection `y = W x` with `W: [out, in]`.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// `[rank, in]`, initialised uniformly as in PEFT (Kaiming with a = sqrt(5)).
    pub a: Vec<f32>,
    /// `[out, rank]`, initialised to zero so that training starts from the base model.
    pub b: Vec<f32>,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// `alpha / rank`.
    pub scale: f32,
}

/// Gradients of one adapter.
#[derive(Clone, Debug)]
pub struct LoraGrad {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// What the forward pass keeps for the backward pass: `u = x Aᵀ` (`T x rank`).
pub struct LoraSaved {
    pub u: Vec<f32>,
}

impl LoraAdapter {
    pub fn new(in_features: usize, out_features: usize, rank: usize, alpha: f32, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bound = 1.0 / (in_features as f32).sqrt();
        LoraAdapter {
            a: (0..rank * in_features).map(|_| rng.random_range(-bound..bound)).collect(),
            b: vec![0.0; out_features * rank],
            rank,
            in_features,
            out_features,
            scale: alpha / rank as f32,
        }
    }

    pub fn zero_grad(&self) -> LoraGrad {
        LoraGrad { a: vec![0.0; self.a.len()], b: vec![0.0; self.b.len()] }
    }

    /// `y += scale · (x Aᵀ) Bᵀ` for `t` rows of `x` (`t x in`), `y` (`t x out`).
    pub fn forward_add(&self, x: &[f32], t: usize, y: &mut [f32]) -> LoraSaved {
        let mut u = vec![0.0f32; t * self.rank];
        matmul(
            MatRef::new(x, t, self.in_features),
            MatRef::new(&self.a, self.rank, self.in_features).t(),
            &mut u,
            false,
        );
        let us: Vec<f32> = u.iter().map(|v| v * self.scale).collect();
        matmul(MatRef::new(&us, t, self.rank), MatRef::new(&self.b, self.out_features, self.rank).t(), y, true);
        LoraSaved { u }
    }

    /// Given `dy` (`t x out`): accumulates dA, dB into `grad`, and adds the adapter's part of
    /// `dx` (`t x in`) into `dx`.
    pub fn backward(&self, x: &[f32], saved: &LoraSaved, dy: &[f32], t: usize, grad: &mut LoraGrad, dx: &mut [f32]) {
        let (r, i, o) = (self.rank, self.in_features, self.out_features);
        // dB += scale · dyᵀ u
        let us: Vec<f32> = saved.u.iter().map(|v| v * self.scale).collect();
        matmul(MatRef::new(dy, t, o).t(), MatRef::new(&us, t, r), &mut grad.b, true);
        // du = scale · dy B
        let mut du = vec![0.0f32; t * r];
        matmul(MatRef::new(dy, t, o), MatRef::new(&self.b, o, r), &mut du, false);
        du.iter_mut().for_each(|v| *v *= self.scale);
        // dA += duᵀ x ; dx += du A
        matmul(MatRef::new(&du, t, r).t(), MatRef::new(x, t, i), &mut grad.a, true);
        matmul(MatRef::new(&du, t, r), MatRef::new(&self.a, r, i), dx, true);
    }

    /// `W + scale · B A` as f32 (`out x in`), for merging the adapter into the base weight.
    pub fn merged(&self, w: &[f32]) -> Vec<f32> {
        let mut out = w.to_vec();
        let bs: Vec<f32> = self.b.iter().map(|v| v * self.scale).collect();
        matmul(
            MatRef::new(&bs, self.out_features, self.rank),
            MatRef::new(&self.a, self.rank, self.in_features),
            &mut out,
            true,
        );
        out
    }
}
