//! Causal softmax attention over a sliding window of keys (the SWA branch of Liger
//! attention), and full causal attention (the hybrid layers) as the window without bound.
//!
//! A [`Window`] says which keys a query sees: the last `keys` (itself included) and the first
//! `sinks` tokens of the sequence. Query i sees key j when `j <= i` and (`j > i - keys` or
//! `j < sinks`). The default, 65 keys and no sinks, is what the reference gets from flash-attn's
//! `sliding_window = 64` (keys i-64..=i). Sinks are the attention-sink tokens of StreamingLLM and
//! Lizard: pretrained heads park much of their attention on the first tokens, and a window that
//! loses them changes every later layer's input. Scale 1/sqrt(D), grouped-query heads; RoPE is
//! applied by the caller. Layouts as in [`super::mixer`].

use super::config::HeadShape;
use super::feature::softmax;
use super::heads::{gather_heads, join_groups, QkvGrads};
use crate::error::{Error, Result};
use crate::linalg::{matmul, MatRef};
use rayon::prelude::*;

/// The reference's window: 65 keys (the query's own and the 64 before it).
pub const DEFAULT_WINDOW_KEYS: usize = 65;
/// A window without bound: full causal attention.
pub const FULL_ATTENTION: usize = usize::MAX;

/// Query rows per block of the blocked forms.
const BLOCK: usize = 64;

/// The keys a query sees: the last `keys` (itself included) and the first `sinks` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub keys: usize,
    pub sinks: usize,
}

impl Window {
    /// Every key up to the query's own.
    pub const FULL: Window = Window { keys: FULL_ATTENTION, sinks: 0 };

    pub fn new(keys: usize, sinks: usize) -> Result<Self> {
        if keys == 0 {
            return Err(Error::invalid_argument(format!(
                "window_keys must be at least 1 (a query always sees its own key); the default is {DEFAULT_WINDOW_KEYS}"
            )));
        }
        Ok(Window { keys, sinks })
    }

    /// Whether the query at position `i` sees the key at position `j`.
    pub fn sees(&self, i: usize, j: usize) -> bool {
        j <= i && (j < self.sinks || i - j < self.keys)
    }

    /// The first key of the recent part that the query at `i` sees.
    pub fn first_recent(&self, i: usize) -> usize {
        (i + 1).saturating_sub(self.keys)
    }

    /// Tokens a decoding sequence keeps: the sinks and the last `keys` (unbounded when full).
    pub fn capacity(&self) -> usize {
        self.sinks.saturating_add(self.keys)
    }

    /// Where a decoding cache of [`Window::capacity`] slots keeps the token at `pos`: sinks in
    /// the first slots for good, the rest in a ring after them.
    pub fn slot(&self, pos: usize) -> usize {
        if pos < self.sinks || self.keys == FULL_ATTENTION {
            pos
        } else {
            self.sinks + (pos - self.sinks) % self.keys
        }
    }
}

impl From<usize> for Window {
    /// A sliding window of `keys` keys and no sinks (`FULL_ATTENTION`: full causal attention).
    fn from(keys: usize) -> Self {
        Window { keys, sinks: 0 }
    }
}

/// The keys (by index into a position-sorted key list) some query of a block at positions
/// `first..=last` may see: the sinks `0..n_sinks` and the recent range `lo..hi`, as one list.
fn block_keys(window: Window, key_pos: &[usize], first: usize, last: usize) -> Vec<usize> {
    let n_sinks = key_pos.partition_point(|&p| p < window.sinks);
    let lo = key_pos.partition_point(|&p| p < window.first_recent(first));
    let hi = key_pos.partition_point(|&p| p <= last);
    let mut idx: Vec<usize> = (0..n_sinks.min(lo)).collect();
    idx.extend(lo.max(idx.len())..hi);
    idx
}

/// Copies the rows `idx` of a `[n, d]` matrix.
fn gather_rows(m: &[f32], idx: &[usize], d: usize) -> Vec<f32> {
    idx.iter().flat_map(|&j| &m[j * d..(j + 1) * d]).copied().collect()
}

/// Softmax probabilities `[rows, n]` of a block of queries (rows at positions `pos0..`) against
/// the `n` keys `keys` at positions `key_pos`, masked to each query's window.
fn block_probs(
    qb: &[f32],
    keys: &[f32],
    key_pos: &[usize],
    rows: usize,
    pos0: usize,
    d: usize,
    window: Window,
) -> Vec<f32> {
    let n = key_pos.len();
    let mut s = vec![0.0f32; rows * n];
    matmul(MatRef::new(qb, rows, d), MatRef::new(keys, n, d).t(), &mut s, false);
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = vec![0.0f32; rows * n];
    for r in 0..rows {
        let row = &mut s[r * n..(r + 1) * n];
        for (x, &j) in row.iter_mut().zip(key_pos) {
            *x = if window.sees(pos0 + r, j) { *x * scale } else { f32::NEG_INFINITY };
        }
        softmax(row, &mut p[r * n..(r + 1) * n]);
    }
    p
}

/// Attention of T new tokens at positions `pos0..` over keys and values `[N, hkv, D]` at the
/// sorted positions `key_pos` (the new tokens' own keys among them). Returns `[T, hq, D]`.
fn attend(
    shape: HeadShape,
    window: Window,
    q: &[f32],
    pos0: usize,
    k: &[f32],
    v: &[f32],
    key_pos: &[usize],
) -> Vec<f32> {
    let (d, group) = (shape.d, shape.group());
    let t = q.len() / (shape.hq * d);
    let n = key_pos.len();
    let outs: Vec<Vec<f32>> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let keys = gather_heads(k, n, shape.hkv, d, kvh, 1);
            let vals = gather_heads(v, n, shape.hkv, d, kvh, 1);
            let qh = gather_heads(q, t, shape.hq, d, kvh * group, group);
            let mut o = vec![0.0f32; group * t * d];
            for i0 in (0..t).step_by(BLOCK) {
                let rows = BLOCK.min(t - i0);
                let idx = block_keys(window, key_pos, pos0 + i0, pos0 + i0 + rows - 1);
                let (bk, bv) = (gather_rows(&keys, &idx, d), gather_rows(&vals, &idx, d));
                let bpos: Vec<usize> = idx.iter().map(|&j| key_pos[j]).collect();
                for h in 0..group {
                    let qb = &qh[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    let probs = block_probs(qb, &bk, &bpos, rows, pos0 + i0, d, window);
                    let ob = &mut o[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    matmul(MatRef::new(&probs, rows, idx.len()), MatRef::new(&bv, idx.len(), d), ob, false);
                }
            }
            o
        })
        .collect();
    join_groups(&outs, t, shape)
}

/// Attention of T new tokens after `prefix`: the keys and values `[P, hkv, D]` of the P tokens
/// before them, from the first token on (e.g. an earlier prefill). Returns `[T, hq, D]`.
pub fn swa_forward(
    shape: HeadShape,
    window: impl Into<Window>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    prefix: Option<(&[f32], &[f32])>,
) -> Result<Vec<f32>> {
    let window = window.into();
    Window::new(window.keys, window.sinks)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    let kv_row = shape.hkv * shape.d;
    let (pk, pv) = prefix.unwrap_or((&[], &[]));
    if pk.len() != pv.len() || !pk.len().is_multiple_of(kv_row) {
        return Err(Error::shape(format!(
            "prefix keys and values must both be [P, {}, {}]; got {} and {} values",
            shape.hkv,
            shape.d,
            pk.len(),
            pv.len()
        )));
    }
    let p = pk.len() / kv_row;
    // Keep only the prefix tokens some new query can see: the sinks and the recent ones.
    let key_pos: Vec<usize> = (0..p).filter(|&j| j < window.sinks || p - j < window.keys).chain(p..p + t).collect();
    let gather = |pre: &[f32], new: &[f32]| -> Vec<f32> {
        let mut out: Vec<f32> =
            key_pos.iter().take_while(|&&j| j < p).flat_map(|&j| &pre[j * kv_row..(j + 1) * kv_row]).copied().collect();
        out.extend_from_slice(new);
        out
    };
    let (keys, vals) = if p == 0 { (k.to_vec(), v.to_vec()) } else { (gather(pk, k), gather(pv, v)) };
    Ok(attend(shape, window, q, p, &keys, &vals, &key_pos))
}

/// Full causal attention: [`swa_forward`] with no window bound.
pub fn causal_attention_forward(
    shape: HeadShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    prefix: Option<(&[f32], &[f32])>,
) -> Result<Vec<f32>> {
    swa_forward(shape, FULL_ATTENTION, q, k, v, prefix)
}

/// Gradients of `sum(d_o * swa_forward(q, k, v))` (no prefix) w.r.t. q, k, v.
pub fn swa_backward(
    shape: HeadShape,
    window: impl Into<Window>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
) -> Result<QkvGrads> {
    let window = window.into();
    Window::new(window.keys, window.sinks)?;
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    if d_o.len() != q.len() {
        return Err(Error::shape(format!("d_o has {} values; it must match the output's {}", d_o.len(), q.len())));
    }
    let (d, group) = (shape.d, shape.group());
    let scale = 1.0 / (d as f32).sqrt();
    let key_pos: Vec<usize> = (0..t).collect();
    let per_head: Vec<[Vec<f32>; 3]> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let keys = gather_heads(k, t, shape.hkv, d, kvh, 1);
            let vals = gather_heads(v, t, shape.hkv, d, kvh, 1);
            let qh = gather_heads(q, t, shape.hq, d, kvh * group, group);
            let doh = gather_heads(d_o, t, shape.hq, d, kvh * group, group);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; group * t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
            for i0 in (0..t).step_by(BLOCK) {
                let rows = BLOCK.min(t - i0);
                let idx = block_keys(window, &key_pos, i0, i0 + rows - 1);
                let n = idx.len();
                let (bk, bv) = (gather_rows(&keys, &idx, d), gather_rows(&vals, &idx, d));
                let (mut bdk, mut bdv) = (vec![0.0f32; n * d], vec![0.0f32; n * d]);
                for h in 0..group {
                    let qb = &qh[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    let dob = &doh[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    let probs = block_probs(qb, &bk, &idx, rows, i0, d, window);
                    // dV += P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP)).
                    matmul(MatRef::new(&probs, rows, n).t(), MatRef::new(dob, rows, d), &mut bdv, true);
                    let mut ds = vec![0.0f32; rows * n];
                    matmul(MatRef::new(dob, rows, d), MatRef::new(&bv, n, d).t(), &mut ds, false);
                    for r in 0..rows {
                        let (pr, dr) = (&probs[r * n..(r + 1) * n], &mut ds[r * n..(r + 1) * n]);
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        dr.iter_mut().zip(pr).for_each(|(x, &pp)| *x = pp * (*x - dot) * scale);
                    }
                    let dqb = &mut dq[(h * t + i0) * d..(h * t + i0 + rows) * d];
                    matmul(MatRef::new(&ds, rows, n), MatRef::new(&bk, n, d), dqb, false);
                    matmul(MatRef::new(&ds, rows, n).t(), MatRef::new(qb, rows, d), &mut bdk, true);
                }
                for (r, &j) in idx.iter().enumerate() {
                    dk[j * d..(j + 1) * d].iter_mut().zip(&bdk[r * d..(r + 1) * d]).for_each(|(a, b)| *a += b);
                    dv[j * d..(j + 1) * d].iter_mut().zip(&bdv[r * d..(r + 1) * d]).for_each(|(a, b)| *a += b);
                }
            }
            [dq, dk, dv]
        })
        .collect();
    Ok(QkvGrads::from_kv_heads(shape, t, &per_head))
}

/// Backward of full causal attention.
pub fn causal_attention_backward(shape: HeadShape, q: &[f32], k: &[f32], v: &[f32], d_o: &[f32]) -> Result<QkvGrads> {
    swa_backward(shape, FULL_ATTENTION, q, k, v, d_o)
}

/// The keys and values a decoding sequence keeps for its window: the sinks for good and a
/// ring buffer of the last `window.keys` tokens per key-value head after them (grows without
/// bound for full attention).
#[derive(Debug, Clone, PartialEq)]
pub struct SwaCache {
    pub shape: HeadShape,
    pub window: Window,
    /// Tokens seen so far; token `p` lives in slot `window.slot(p)`.
    pub tokens: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl SwaCache {
    pub fn new(shape: HeadShape, window: impl Into<Window>) -> Result<Self> {
        let window = window.into();
        Window::new(window.keys, window.sinks)?;
        Ok(SwaCache { shape, window, tokens: 0, keys: Vec::new(), values: Vec::new() })
    }

    /// Tokens currently held (at most the window's capacity).
    pub fn len(&self) -> usize {
        self.tokens.min(self.window.capacity())
    }
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }
    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * std::mem::size_of::<f32>()
    }

    /// Positions of the held tokens, in order: the sinks, then the recent ones.
    fn held_positions(&self) -> Vec<usize> {
        let sinks = self.window.sinks.min(self.tokens);
        let recent_from = self.tokens.saturating_sub(self.window.keys).max(sinks);
        (0..sinks).chain(recent_from..self.tokens).collect()
    }

    /// The held keys and values `[len, hkv, D]` in position order.
    pub fn ordered(&self) -> (Vec<f32>, Vec<f32>) {
        let row = self.shape.hkv * self.shape.d;
        let (mut k, mut v) = (Vec::with_capacity(self.len() * row), Vec::with_capacity(self.len() * row));
        for p in self.held_positions() {
            let slot = self.window.slot(p);
            k.extend_from_slice(&self.keys[slot * row..(slot + 1) * row]);
            v.extend_from_slice(&self.values[slot * row..(slot + 1) * row]);
        }
        (k, v)
    }

    /// Attention of T new tokens (`q` `[T, hq, D]`, `k`, `v` `[T, hkv, D]`) after the held
    /// ones; then keeps their keys and values. Returns `[T, hq, D]`.
    pub fn attend(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        self.shape.tokens(q.len(), k.len(), v.len())?;
        let (pk, pv) = self.ordered();
        let n = k.len() / (self.shape.hkv * self.shape.d);
        let key_pos: Vec<usize> = self.held_positions().into_iter().chain(self.tokens..self.tokens + n).collect();
        let (keys, vals) = ([pk, k.to_vec()].concat(), [pv, v.to_vec()].concat());
        let o = attend(self.shape, self.window, q, self.tokens, &keys, &vals, &key_pos);
        self.extend(k, v)?;
        Ok(o)
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
        for i in 0..n {
            // Only the sinks and the last window.keys tokens can ever be seen again.
            if self.tokens < self.window.sinks || n - i <= self.window.keys {
                self.push(&k[i * row..(i + 1) * row], &v[i * row..(i + 1) * row]);
            } else {
                self.tokens += 1;
            }
        }
        Ok(())
    }

    fn push(&mut self, k: &[f32], v: &[f32]) {
        let row = k.len();
        let slot = self.window.slot(self.tokens);
        if (slot + 1) * row > self.keys.len() {
            // The cache is still filling up.
            self.keys.resize((slot + 1) * row, 0.0);
            self.values.resize((slot + 1) * row, 0.0);
        }
        self.keys[slot * row..(slot + 1) * row].copy_from_slice(k);
        self.values[slot * row..(slot + 1) * row].copy_from_slice(v);
        self.tokens += 1;
    }

    /// One decoding step: stores `k_t`, `v_t` (`[hkv, D]`), then attends `q_t` (`[hq, D]`)
    /// over the window; writes `o_t` (`[hq, D]`). Every held token is visible to the new query.
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
