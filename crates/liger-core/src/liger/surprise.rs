//! The surprise cache (`surprise_keys` = C): the window branch also sees, per key-value head,
//! the C tokens that left the window and that the recurrent state recalls worst (the sparse
//! cache of LoLA, arXiv 2505.23666).
//!
//! A token's surprise is how far the recurrent branch, read out with the token's own key as the
//! query, lands from the token's value: the mean over the head's query heads of
//! `|v_j - GRM(k_j, k, v)_j / (GRM(k_j, k, 1)_j + eps)|^2`, from the state just after the token
//! (the normalised read-out, whatever `grm_norm` says of the branch's output). Filler the state
//! already holds scores low; a number, a name or a passkey scores high. When token j leaves the
//! window (at position j + keys) it takes a free slot of the cache, or else the slot of lowest
//! score (the first such slot) if its own score is higher. Sinks never enter the cache.
//!
//! The same rule runs token by token in every form (a forward over many tokens, a prefill after
//! earlier ones, single decoding steps), so prefill + steps equals one forward. The choice itself
//! has no gradient; training holds it fixed ([`surprise_kept`]) and differentiates the attention
//! over what it kept ([`surprise_attention_backward`]), so the adapters learn to read the cache.
//! Memory: C more keys and values per key-value head and layer, constant in the sequence length.
//!
//! Repeats (`surprise_repeat_tolerance` = r > 0): a token whose value the cache already holds,
//! within `|v - v_c|^2 <= r |v_c|^2` for a held token c of the head, does not enter. Surprise is
//! measured against the recurrent state alone, which forgets within a few dozen tokens: text
//! that repeats with a longer period (boilerplate, a list, the filler of a long prompt) is
//! surprising every time, and without this rule its copies fill the cache (on a 2K-token prompt
//! of repeated filler, the 256 slots of a head held 2 to 40 distinct tokens) and push out what
//! appears once. Values, not keys: the cache's keys are rotated by their position, and a value
//! the cache holds brings nothing new to the attention's output. On natural text (WikiText-2)
//! fewer than 1 in 10,000 pairs of different tokens come within r = 0.05 past the first layer.

use super::config::{HeadShape, MixerConfig};
use super::feature::softmax;
use super::heads::{gather_heads, QkvGrads};
use super::mixer::{self, MixerState, DEFAULT_CHUNK_SIZE};
use super::swa::Window;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::VecDeque;

/// Most surprise-cache slots per key-value head.
pub const MAX_SURPRISE_KEYS: usize = 4096;

/// Keeps the read-out's normaliser away from zero (as `GRM_NORM_EPS`).
pub const SCORE_EPS: f32 = 1e-6;

/// `k` `[T, hkv, D]` repeated over each key-value head's query heads: `[T, hq, D]`, so that the
/// mixer reads its state out with the keys as queries.
fn keys_as_queries(shape: HeadShape, k: &[f32]) -> Vec<f32> {
    let (hq, hkv, d, group) = (shape.hq, shape.hkv, shape.d, shape.group());
    let t = k.len() / (hkv * d);
    let mut kq = vec![0.0; t * hq * d];
    for i in 0..t {
        for h in 0..hq {
            let src = (i * hkv + h / group) * d;
            kq[(i * hq + h) * d..(i * hq + h + 1) * d].copy_from_slice(&k[src..src + d]);
        }
    }
    kq
}

/// Surprise `[T, hkv]` from the read-outs `n`, `den` `[T, hq, D]` and the values `[T, hkv, D]`.
fn scores_from_readouts(shape: HeadShape, v: &[f32], n: &[f32], den: &[f32]) -> Vec<f32> {
    let (hq, hkv, d, group) = (shape.hq, shape.hkv, shape.d, shape.group());
    let t = v.len() / (hkv * d);
    let mut scores = vec![0.0f32; t * hkv];
    for i in 0..t {
        for h in 0..hq {
            let kvh = h / group;
            let (row, vrow) = ((i * hq + h) * d, (i * hkv + kvh) * d);
            let err: f32 = (0..d)
                .map(|x| {
                    let miss = v[vrow + x] - n[row + x] / (den[row + x] + SCORE_EPS);
                    miss * miss
                })
                .sum();
            scores[i * hkv + kvh] += err / group as f32;
        }
    }
    scores
}

/// The surprise `[T, hkv]` of T tokens (raw keys and values) that follow the states `grm` and
/// `ones` (the recurrence over the values and over values of one), and the `ones` state after
/// them (the state does not depend on the queries).
pub fn surprise_scores(
    mixer: &MixerConfig,
    shape: HeadShape,
    k: &[f32],
    v: &[f32],
    grm: &MixerState,
    ones: &MixerState,
) -> Result<(Vec<f32>, MixerState)> {
    let kq = keys_as_queries(shape, k);
    let (n, _) = mixer::chunk_forward(mixer, shape, &kq, k, v, Some(grm), DEFAULT_CHUNK_SIZE)?;
    let (den, next_ones) =
        mixer::chunk_forward(mixer, shape, &kq, k, &vec![1.0; v.len()], Some(ones), DEFAULT_CHUNK_SIZE)?;
    Ok((scores_from_readouts(shape, v, &n, &den), next_ones))
}

/// The surprise `[hkv]` of one token, from the states before it (`grm` left unchanged), and the
/// `ones` state after it.
pub fn surprise_score_step(
    mixer: &MixerConfig,
    shape: HeadShape,
    k_t: &[f32],
    v_t: &[f32],
    grm: &MixerState,
    ones: &MixerState,
) -> Result<(Vec<f32>, MixerState)> {
    let kq = keys_as_queries(shape, k_t);
    let (mut n, mut den) = (vec![0.0; kq.len()], vec![0.0; kq.len()]);
    let mut next_ones = ones.clone();
    mixer::recurrent_step(mixer, &mut grm.clone(), &kq, k_t, v_t, &mut n)?;
    mixer::recurrent_step(mixer, &mut next_ones, &kq, k_t, &vec![1.0; v_t.len()], &mut den)?;
    Ok((scores_from_readouts(shape, v_t, &n, &den), next_ones))
}

/// A token of the recent part: rotated key and value `[hkv, D]`, surprise `[hkv]`.
#[derive(Debug, Clone, PartialEq)]
struct Recent {
    key: Vec<f32>,
    value: Vec<f32>,
    score: Vec<f32>,
}

/// A cached token of one key-value head: its surprise, rotated key and value `[D]`.
#[derive(Debug, Clone, PartialEq)]
struct Kept {
    score: f32,
    key: Vec<f32>,
    value: Vec<f32>,
}

/// What the window branch keeps while decoding with a surprise cache: the sinks, the last
/// `window.keys` tokens, and per key-value head at most `slots` cached tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SurpriseMemory {
    pub shape: HeadShape,
    pub window: Window,
    pub slots: usize,
    /// The repeat rule's tolerance (see the module's doc); 0 = off.
    pub repeat_tolerance: f64,
    /// Tokens seen so far.
    pub tokens: usize,
    sink_keys: Vec<f32>,
    sink_values: Vec<f32>,
    recent: VecDeque<Recent>,
    kept: Vec<Vec<Kept>>,
}

impl SurpriseMemory {
    pub fn new(shape: HeadShape, window: Window, slots: usize) -> Result<Self> {
        Window::new(window.keys, window.sinks)?;
        if slots == 0 || slots > MAX_SURPRISE_KEYS {
            return Err(Error::invalid_argument(format!(
                "surprise_keys must be between 1 and {MAX_SURPRISE_KEYS}, got {slots}"
            )));
        }
        Ok(SurpriseMemory {
            shape,
            window,
            slots,
            repeat_tolerance: 0.0,
            tokens: 0,
            sink_keys: Vec::new(),
            sink_values: Vec::new(),
            recent: VecDeque::new(),
            kept: vec![Vec::new(); shape.hkv],
        })
    }

    /// The same memory with the repeat rule at `tolerance` (0 = off).
    pub fn with_repeat_tolerance(mut self, tolerance: f64) -> Result<Self> {
        check_repeat_tolerance(tolerance)?;
        self.repeat_tolerance = tolerance;
        Ok(self)
    }

    /// Memory held now, in bytes (keys, values and scores).
    pub fn bytes(&self) -> usize {
        let d = self.shape.d;
        let sinks = self.sink_keys.len() + self.sink_values.len();
        let recent = self.recent.len() * self.shape.hkv * (2 * d + 1);
        let kept: usize = self.kept.iter().map(|h| h.len() * (2 * d + 1)).sum();
        (sinks + recent + kept) * std::mem::size_of::<f32>()
    }

    /// Memory held once the window and the cache are full.
    pub fn max_bytes(shape: HeadShape, window: Window, slots: usize) -> usize {
        let per_token = shape.hkv * (2 * shape.d + 1) * std::mem::size_of::<f32>();
        let sinks = window.sinks * shape.hkv * 2 * shape.d * std::mem::size_of::<f32>();
        sinks + window.keys.saturating_add(slots).saturating_mul(per_token)
    }

    /// Keeps one token (rotated key and value `[hkv, D]`, surprise `[hkv]`); a token leaving
    /// the window is offered to the cache.
    fn push(&mut self, key: &[f32], value: &[f32], score: &[f32]) {
        if self.tokens < self.window.sinks {
            self.sink_keys.extend_from_slice(key);
            self.sink_values.extend_from_slice(value);
        } else {
            self.recent.push_back(Recent { key: key.to_vec(), value: value.to_vec(), score: score.to_vec() });
            if self.recent.len() > self.window.keys {
                let leaving = self.recent.pop_front().expect("the recent part is not empty");
                self.offer(&leaving);
            }
        }
        self.tokens += 1;
    }

    fn offer(&mut self, token: &Recent) {
        let d = self.shape.d;
        for (kvh, kept) in self.kept.iter_mut().enumerate() {
            let value = &token.value[kvh * d..(kvh + 1) * d];
            if repeats(value, kept.iter().map(|k| k.value.as_slice()), self.repeat_tolerance) {
                continue;
            }
            let held: Vec<f32> = kept.iter().map(|k| k.score).collect();
            if let Some(slot) = slot_for(&held, self.slots, token.score[kvh]) {
                let entry = Kept {
                    score: token.score[kvh],
                    key: token.key[kvh * d..(kvh + 1) * d].to_vec(),
                    value: token.value[kvh * d..(kvh + 1) * d].to_vec(),
                };
                if slot == kept.len() {
                    kept.push(entry);
                } else {
                    kept[slot] = entry;
                }
            }
        }
    }

    /// Attention of the newest token's rotated query `[hq, D]` over everything held (sinks,
    /// cache, recent part); writes `o` `[hq, D]`.
    fn attend_newest(&self, q: &[f32], o: &mut [f32]) {
        let (d, group, row) = (self.shape.d, self.shape.group(), self.shape.hkv * self.shape.d);
        let scale = 1.0 / (d as f32).sqrt();
        let sinks = self.sink_keys.len() / row;
        for h in 0..self.shape.hq {
            let kvh = h / group;
            let qh = &q[h * d..(h + 1) * d];
            let at = |j: usize| j * row + kvh * d..j * row + (kvh + 1) * d;
            let mut keys: Vec<&[f32]> = (0..sinks).map(|j| &self.sink_keys[at(j)]).collect();
            let mut values: Vec<&[f32]> = (0..sinks).map(|j| &self.sink_values[at(j)]).collect();
            keys.extend(self.kept[kvh].iter().map(|k| k.key.as_slice()));
            values.extend(self.kept[kvh].iter().map(|k| k.value.as_slice()));
            keys.extend(self.recent.iter().map(|r| &r.key[kvh * d..(kvh + 1) * d]));
            values.extend(self.recent.iter().map(|r| &r.value[kvh * d..(kvh + 1) * d]));
            let logits: Vec<f32> =
                keys.iter().map(|k| scale * k.iter().zip(qh).map(|(a, b)| a * b).sum::<f32>()).collect();
            let mut probs = vec![0.0; logits.len()];
            softmax(&logits, &mut probs);
            let oh = &mut o[h * d..(h + 1) * d];
            oh.fill(0.0);
            for (p, val) in probs.iter().zip(&values) {
                oh.iter_mut().zip(val.iter()).for_each(|(o, &x)| *o += p * x);
            }
        }
    }

    /// Attention of T new tokens (rotated `q` `[T, hq, D]`, rotated `k` and `v` `[T, hkv, D]`,
    /// surprise `[T, hkv]`) after the held ones, token by token; keeps them. Returns `[T, hq, D]`.
    pub fn attend(&mut self, q: &[f32], k: &[f32], v: &[f32], scores: &[f32]) -> Result<Vec<f32>> {
        let shape = self.shape;
        let t = shape.tokens(q.len(), k.len(), v.len())?;
        if scores.len() != t * shape.hkv {
            return Err(Error::shape(format!(
                "surprise scores must be [{t}, {}], got {} values",
                shape.hkv,
                scores.len()
            )));
        }
        let (row_q, row_kv) = (shape.hq * shape.d, shape.hkv * shape.d);
        let mut o = vec![0.0; q.len()];
        for i in 0..t {
            self.push(
                &k[i * row_kv..(i + 1) * row_kv],
                &v[i * row_kv..(i + 1) * row_kv],
                &scores[i * shape.hkv..(i + 1) * shape.hkv],
            );
            self.attend_newest(&q[i * row_q..(i + 1) * row_q], &mut o[i * row_q..(i + 1) * row_q]);
        }
        Ok(o)
    }
}

/// Largest repeat tolerance: at 1 a zero value would repeat every held one.
pub const MAX_REPEAT_TOLERANCE: f64 = 0.5;

/// Checks a repeat tolerance: 0 (off) to [`MAX_REPEAT_TOLERANCE`].
pub fn check_repeat_tolerance(tolerance: f64) -> Result<()> {
    if !(0.0..=MAX_REPEAT_TOLERANCE).contains(&tolerance) {
        return Err(Error::invalid_argument(format!(
            "surprise_repeat_tolerance must be between 0 (off) and {MAX_REPEAT_TOLERANCE}, got {tolerance} (0.05 is a good start)"
        )));
    }
    Ok(())
}

/// Whether `value` repeats one of `held` within `tolerance`: `|value - h|^2 <= tolerance |h|^2`.
/// Never with a tolerance of 0 (the rule off).
fn repeats<'a>(value: &[f32], mut held: impl Iterator<Item = &'a [f32]>, tolerance: f64) -> bool {
    tolerance > 0.0
        && held.any(|h| {
            let (dist, norm) = value
                .iter()
                .zip(h)
                .fold((0.0f32, 0.0f32), |(dist, norm), (&a, &b)| (dist + (a - b) * (a - b), norm + b * b));
            dist as f64 <= tolerance * norm as f64
        })
}

/// The values `[T, hkv, D]` of the tokens a cache chooses from, and the repeat rule's tolerance.
#[derive(Clone, Copy, Debug)]
pub struct RepeatRule<'a> {
    pub values: &'a [f32],
    pub d: usize,
    pub tolerance: f64,
}

/// The cache's rule for a token leaving the window with surprise `score`, given the scores the
/// cache holds: a free slot (`held.len()`), else the first slot of lowest score if the token's
/// is higher, else none.
fn slot_for(held: &[f32], slots: usize, score: f32) -> Option<usize> {
    if held.len() < slots {
        return Some(held.len());
    }
    if held.is_empty() {
        return None;
    }
    let lowest = (0..held.len()).fold(0, |m, s| if held[s] < held[m] { s } else { m });
    (score > held[lowest]).then_some(lowest)
}

/// The cache's contents while each of T tokens (from the first) attends, by running the rule on
/// their surprise `[T, hkv]`: `[T, hkv, slots]` token indices, -1 for an empty slot (GPU twin:
/// `surprise_select`). A token stays in its slot until it is replaced.
pub fn surprise_kept(hkv: usize, window: Window, slots: usize, scores: &[f32]) -> Vec<i32> {
    surprise_kept_with_repeats(hkv, window, slots, scores, None)
}

/// [`surprise_kept`] with the repeat rule: a token whose value repeats one the head's cache
/// holds (see the module's doc) does not enter.
pub fn surprise_kept_with_repeats(
    hkv: usize,
    window: Window,
    slots: usize,
    scores: &[f32],
    rule: Option<RepeatRule>,
) -> Vec<i32> {
    let t = scores.len() / hkv.max(1);
    let mut kept = vec![-1i32; t * hkv * slots];
    for kvh in 0..hkv {
        let mut cache: Vec<usize> = Vec::with_capacity(slots);
        for i in 0..t {
            if let Some(j) = i.checked_sub(window.keys).filter(|&j| j >= window.sinks) {
                let repeat = rule.is_some_and(|r| {
                    let value = |c: usize| &r.values[(c * hkv + kvh) * r.d..(c * hkv + kvh + 1) * r.d];
                    repeats(value(j), cache.iter().map(|&c| value(c)), r.tolerance)
                });
                let held: Vec<f32> = cache.iter().map(|&c| scores[c * hkv + kvh]).collect();
                match slot_for(&held, slots, scores[j * hkv + kvh]).filter(|_| !repeat) {
                    Some(slot) if slot == cache.len() => cache.push(j),
                    Some(slot) => cache[slot] = j,
                    None => {}
                }
            }
            let out = &mut kept[(i * hkv + kvh) * slots..(i * hkv + kvh + 1) * slots];
            out.iter_mut().zip(&cache).for_each(|(o, &j)| *o = j as i32);
        }
    }
    kept
}

/// The keys query `i` sees, in attention order: the sinks, its cache (`cached`, one query's
/// `[slots]` of [`surprise_kept`] for its head), then the recent part of the window.
fn seen_keys(window: Window, i: usize, cached: &[i32]) -> Vec<usize> {
    let sinks = window.sinks.min(i + 1);
    let recent = window.first_recent(i).max(window.sinks);
    (0..sinks).chain(cached.iter().filter(|&&j| j >= 0).map(|&j| j as usize)).chain(recent..=i).collect()
}

/// Gradients of `sum(d_o * o)` for the attention of T tokens from the first (rotated q
/// `[T, hq, D]`, rotated k and v `[T, hkv, D]`) over the sinks, the cache `kept` (from
/// [`surprise_kept`], held fixed) and the window, w.r.t. the rotated q, k and v (GPU twin:
/// `surprise_attention_backward`).
#[allow(clippy::too_many_arguments)]
pub fn surprise_attention_backward(
    shape: HeadShape,
    window: Window,
    slots: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kept: &[i32],
    d_o: &[f32],
) -> Result<QkvGrads> {
    let t = shape.tokens(q.len(), k.len(), v.len())?;
    if d_o.len() != q.len() || kept.len() != t * shape.hkv * slots {
        return Err(Error::shape(format!(
            "d_o must be [{t}, {}, {}] and the cache [{t}, {}, {slots}]; got {} and {} values",
            shape.hq,
            shape.d,
            shape.hkv,
            d_o.len(),
            kept.len()
        )));
    }
    let (d, group) = (shape.d, shape.group());
    let scale = 1.0 / (d as f32).sqrt();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let per_head: Vec<[Vec<f32>; 3]> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let (keys, vals) = (gather_heads(k, t, shape.hkv, d, kvh, 1), gather_heads(v, t, shape.hkv, d, kvh, 1));
            let qh = gather_heads(q, t, shape.hq, d, kvh * group, group);
            let doh = gather_heads(d_o, t, shape.hq, d, kvh * group, group);
            let (mut dq, mut dk, mut dv) = (vec![0.0f32; group * t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
            let row = |m: &[f32], j: usize| m[j * d..(j + 1) * d].to_vec();
            for i in 0..t {
                let seen =
                    seen_keys(window, i, &kept[(i * shape.hkv + kvh) * slots..(i * shape.hkv + kvh + 1) * slots]);
                for h in 0..group {
                    let r = h * t + i;
                    let (qi, doi) = (row(&qh, r), row(&doh, r));
                    let logits: Vec<f32> = seen.iter().map(|&j| scale * dot(&qi, &keys[j * d..(j + 1) * d])).collect();
                    let mut probs = vec![0.0; seen.len()];
                    softmax(&logits, &mut probs);
                    // dP = dO V^T; dS = P * (dP - sum(P * dP)).
                    let dp: Vec<f32> = seen.iter().map(|&j| dot(&doi, &vals[j * d..(j + 1) * d])).collect();
                    let delta: f32 = probs.iter().zip(&dp).map(|(p, g)| p * g).sum();
                    for ((&j, &p), &g) in seen.iter().zip(&probs).zip(&dp) {
                        let ds = p * (g - delta) * scale;
                        for x in 0..d {
                            dq[r * d + x] += ds * keys[j * d + x];
                            dk[j * d + x] += ds * qi[x];
                            dv[j * d + x] += p * doi[x];
                        }
                    }
                }
            }
            [dq, dk, dv]
        })
        .collect();
    Ok(QkvGrads::from_kv_heads(shape, t, &per_head))
}
