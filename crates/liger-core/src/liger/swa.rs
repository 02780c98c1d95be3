//! Causal softmax attention over a sliding window of keys (the SWA branch of Liger
//! attention), and full causal attention (the hybrid layers) as the window without bound.
//!
//! `window_keys` is the number of keys a query sees, itself included: query i sees keys
//! `max(0, i + 1 - window_keys) ..= i`. The default, 65, is what the reference gets from
//! flash-attn's `sliding_window = 64` (keys i-64..=i). Scale 1/sqrt(D), grouped-query heads;
//! RoPE is applied by the caller. Layouts as in [`super::mixer`].

use super::config::HeadShape;
use super::feature::softmax;
use super::mixer::{gather_heads, scatter_heads, QkvGrads};
use crate::error::{Error, Result};
use crate::linalg::{matmul, MatRef};
use rayon::prelude::*;

/// The reference's window: 65 keys (the query's own and the 64 before it).
pub const DEFAULT_WINDOW_KEYS: usize = 65;
/// A window without bound: full causal attention.
pub const FULL_ATTENTION: usize = usize::MAX;

/// Query rows per block of the blocked forms.
const BLOCK: usize = 64;

fn check_window(window_keys: usize) -> Result<()> {
    if window_keys == 0 {
        return Err(Error::invalid_argument(format!(
            "window_keys must be at least 1 (a query always sees its own key); the default is {DEFAULT_WINDOW_KEYS}"
        )));
    }
    Ok(())
}

/// The keys a query at global position `pos` sees: `lo..=pos`.
fn first_visible(pos: usize, window_keys: usize) -> usize {
    (pos + 1).saturating_sub(window_keys)
}

/// Softmax probabilities of one block of queries against keys `lo..hi` (global positions),
/// `[rows, hi - lo]`, masked to each query's window. `q` rows are at positions `pos0..`.
#[allow(clippy::too_many_arguments)]
fn block_probs(qb: &[f32], keys: &[f32], rows: usize, pos0: usize, lo: usize, hi: usize, d: usize, window_keys: usize) -> Vec<f32> {
    let n = hi - lo;
    let mut s = vec![0.0f32; rows * n];
    matmul(MatRef::new(qb, rows, d), MatRef::new(&keys[lo * d..hi * d], n, d).t(), &mut s, false);
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = vec![0.0f32; rows * n];
    for r in 0..rows {
        let pos = pos0 + r;
        let (a, b) = (first_visible(pos, window_keys) - lo, pos + 1 - lo);
        let row = &mut s[r * n..(r + 1) * n];
        row[a..b].iter_mut().for_each(|x| *x *= scale);
        softmax(&row[a..b], &mut p[r * n + a..r * n + b]);
    }
    p
}

/// Attention of T new tokens, after `prefix` (keys and values `[P, hkv, D]` of the P tokens
/// before them, e.g. from an earlier prefill; only the last `window_keys - 1` matter).
/// Returns `[T, hq, D]`.
pub fn swa_forward(shape: HeadShape, window_keys: usize, q: &[f32], k: &[f32], v: &[f32], prefix: Option<(&[f32], &[f32])>) -> Result<Vec<f32>> {
    check_window(window_keys)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    let (d, group, kv_row) = (shape.d, shape.group(), shape.hkv * shape.d);
    let (pk, pv) = prefix.unwrap_or((&[], &[]));
    if pk.len() != pv.len() || !pk.len().is_multiple_of(kv_row) {
        return Err(Error::shape(format!("prefix keys and values must both be [P, {}, {}]; got {} and {} values", shape.hkv, d, pk.len(), pv.len())));
    }
    // Keep only the prefix tokens some new query can see.
    let p_all = pk.len() / kv_row;
    let p = p_all.min(window_keys - 1);
    let (pk, pv) = (&pk[(p_all - p) * kv_row..], &pv[(p_all - p) * kv_row..]);
    let outs: Vec<Vec<f32>> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let mut keys = gather_heads(pk, p, shape.hkv, d, kvh, 1);
            keys.extend(gather_heads(k, t, shape.hkv, d, kvh, 1));
            let mut vals = gather_heads(pv, p, shape.hkv, d, kvh, 1);
            vals.extend(gather_heads(v, t, shape.hkv, d, kvh, 1));
            let qh = gather_heads(q, t, shape.hq, d, kvh * group, group);
            let mut o = vec![0.0f32; group * t * d];
            for h in 0..group {
                for i0 in (0..t).step_by(BLOCK) {
                    let rows = BLOCK.min(t - i0);
                    let (lo, hi) = (first_visible(p + i0, window_keys), p + i0 + rows);
                    let qb = &qh[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    let probs = block_probs(qb, &keys, rows, p + i0, lo, hi, d, window_keys);
                    let ob = &mut o[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    matmul(MatRef::new(&probs, rows, hi - lo), MatRef::new(&vals[lo * d..hi * d], hi - lo, d), ob, false);
                }
            }
            o
        })
        .collect();
    let mut o = vec![0.0; q.len()];
    for (kvh, oh) in outs.iter().enumerate() {
        scatter_heads(oh, t, shape.hq, d, kvh * group, &mut o);
    }
    Ok(o)
}

/// Full causal attention: [`swa_forward`] with no window bound.
pub fn causal_attention_forward(shape: HeadShape, q: &[f32], k: &[f32], v: &[f32], prefix: Option<(&[f32], &[f32])>) -> Result<Vec<f32>> {
    swa_forward(shape, FULL_ATTENTION, q, k, v, prefix)
}

/// Gradients of `sum(d_o * swa_forward(q, k, v))` (no prefix) w.r.t. q, k, v.
pub fn swa_backward(shape: HeadShape, window_keys: usize, q: &[f32], k: &[f32], v: &[f32], d_o: &[f32]) -> Result<QkvGrads> {
    check_window(window_keys)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    if d_o.len() != q.len() {
        return Err(Error::shape(format!("d_o has {} values; it must match the output's {}", d_o.len(), q.len())));
    }
    let (d, group) = (shape.d, shape.group());
    let scale = 1.0 / (d as f32).sqrt();
    let per_head: Vec<[Vec<f32>; 3]> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let keys = gather_heads(k, t, shape.hkv, d, kvh, 1);
            let vals = gather_heads(v, t, shape.hkv, d, kvh, 1);
            let qh = gather_heads(q, t, shape.hq, d, kvh * group, group);
            let doh = gather_heads(d_o, t, shape.hq, d, kvh * group, group);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; group * t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
            for h in 0..group {
                for i0 in (0..t).step_by(BLOCK) {
                    let rows = BLOCK.min(t - i0);
                    let (lo, hi) = (first_visible(i0, window_keys), i0 + rows);
                    let n = hi - lo;
                    let qb = &qh[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    let dob = &doh[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    let probs = block_probs(qb, &keys, rows, i0, lo, hi, d, window_keys);
                    // dV += P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP)).
                    matmul(MatRef::new(&probs, rows, n).t(), MatRef::new(dob, rows, d), &mut dv[lo * d..hi * d], true);
                    let mut ds = vec![0.0f32; rows * n];
                    matmul(MatRef::new(dob, rows, d), MatRef::new(&vals[lo * d..hi * d], n, d).t(), &mut ds, false);
                    for r in 0..rows {
                        let (pr, dr) = (&probs[r * n..(r + 1) * n], &mut ds[r * n..(r + 1) * n]);
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        dr.iter_mut().zip(pr).for_each(|(x, &pp)| *x = pp * (*x - dot) * scale);
                    }
                    let dqb = &mut dq[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    matmul(MatRef::new(&ds, rows, n), MatRef::new(&keys[lo * d..hi * d], n, d), dqb, false);
                    matmul(MatRef::new(&ds, rows, n).t(), MatRef::new(qb, rows, d), &mut dk[lo * d..hi * d], true);
                }
            }
            [dq, dk, dv]
        })
        .collect();
    let mut grads = QkvGrads { dq: vec![0.0; q.len()], dk: vec![0.0; k.len()], dv: vec![0.0; v.len()] };
    for (kvh, [dq, dk, dv]) in per_head.iter().enumerate() {
        scatter_heads(dq, t, shape.hq, d, kvh * group, &mut grads.dq);
        scatter_heads(dk, t, shape.hkv, d, kvh, &mut grads.dk);
        scatter_heads(dv, t, shape.hkv, d, kvh, &mut grads.dv);
    }
    Ok(grads)
}

/// Backward of full causal attention.
pub fn causal_attention_backward(shape: HeadShape, q: &[f32], k: &[f32], v: &[f32], d_o: &[f32]) -> Result<QkvGrads> {
    swa_backward(shape, FULL_ATTENTION, q, k, v, d_o)
}

/// The keys and values a decoding sequence keeps for its window: a ring buffer of
/// `window_keys` tokens per key-value head (grows without bound for full attention).
#[derive(Debug, Clone, PartialEq)]
pub struct SwaCache {
    pub shape: HeadShape,
    pub window_keys: usize,
    /// Tokens seen so far; token `p` lives in slot `p % window_keys`.
    pub tokens: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl SwaCache {
    pub fn new(shape: HeadShape, window_keys: usize) -> Result<Self> {
        check_window(window_keys)?;
        Ok(SwaCache { shape, window_keys, tokens: 0, keys: Vec::new(), values: Vec::new() })
    }

    /// Tokens currently held (at most `window_keys`).
    pub fn len(&self) -> usize {
        self.tokens.min(self.window_keys)
    }
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }
    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * std::mem::size_of::<f32>()
    }

    /// The held keys and values `[len, hkv, D]`, oldest first (a prefix for [`swa_forward`]).
    pub fn ordered(&self) -> (Vec<f32>, Vec<f32>) {
        let row = self.shape.hkv * self.shape.d;
        let n = self.len();
        let (mut k, mut v) = (Vec::with_capacity(n * row), Vec::with_capacity(n * row));
        for p in self.tokens - n..self.tokens {
            let slot = p % self.window_keys;
            k.extend_from_slice(&self.keys[slot * row..(slot + 1) * row]);
            v.extend_from_slice(&self.values[slot * row..(slot + 1) * row]);
        }
        (k, v)
    }

    /// Appends tokens' keys and values `[n, hkv, D]` (after a prefill of them).
    pub fn extend(&mut self, k: &[f32], v: &[f32]) -> Result<()> {
        let row = self.shape.hkv * self.shape.d;
        if k.len() != v.len() || !k.len().is_multiple_of(row) {
            return Err(Error::shape(format!(
                "keys and values must both be [n, {}, {}]; got {} and {} values",
                self.shape.hkv,
                self.shape.d,
                k.len(),
                v.len()
            )));
        }
        let n = k.len() / row;
        // Only the last window_keys tokens can ever be seen again.
        let skipped = n.saturating_sub(self.window_keys);
        self.tokens += skipped;
        for i in skipped..n {
            self.push(&k[i * row..(i + 1) * row], &v[i * row..(i + 1) * row]);
        }
        Ok(())
    }

    fn push(&mut self, k: &[f32], v: &[f32]) {
        let row = k.len();
        let slot = self.tokens % self.window_keys;
        if (slot + 1) * row > self.keys.len() {
            // The ring is still filling up.
            self.keys.resize((slot + 1) * row, 0.0);
            self.values.resize((slot + 1) * row, 0.0);
        }
        self.keys[slot * row..(slot + 1) * row].copy_from_slice(k);
        self.values[slot * row..(slot + 1) * row].copy_from_slice(v);
        self.tokens += 1;
    }

    /// One decoding step: stores `k_t`, `v_t` (`[hkv, D]`), then attends `q_t` (`[hq, D]`)
    /// over the window; writes `o_t` (`[hq, D]`).
    pub fn step(&mut self, q_t: &[f32], k_t: &[f32], v_t: &[f32], o_t: &mut [f32]) -> Result<()> {
        let shape = self.shape;
        if shape.tokens(q_t.len(), k_t.len(), v_t.len())? != 1 || o_t.len() != q_t.len() {
            return Err(Error::shape(format!(
                "a step takes one token: q_t and o_t need {} values, k_t and v_t {}",
                shape.hq * shape.d,
                shape.hkv * shape.d
            )));
        }
        self.push(k_t, v_t);
        let (d, group, row) = (shape.d, shape.group(), shape.hkv * shape.d);
        let n = self.len();
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0.0f32; n];
        let mut probs = vec![0.0f32; n];
        for h in 0..shape.hq {
            let kvh = h / group;
            let qh = &q_t[h * d..(h + 1) * d];
            for (slot, s) in scores.iter_mut().enumerate() {
                let key = &self.keys[slot * row + kvh * d..slot * row + (kvh + 1) * d];
                *s = scale * key.iter().zip(qh).map(|(a, b)| a * b).sum::<f32>();
            }
            softmax(&scores, &mut probs);
            let oh = &mut o_t[h * d..(h + 1) * d];
            oh.fill(0.0);
            for (slot, &pr) in probs.iter().enumerate() {
                let val = &self.values[slot * row + kvh * d..slot * row + (kvh + 1) * d];
                oh.iter_mut().zip(val).for_each(|(o, &x)| *o += pr * x);
            }
        }
        Ok(())
    }
}
