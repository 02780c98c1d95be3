//! Gated slot attention (GSA) with M slots per key-value head, as two gated passes:
//!
//! ```text
//! log a_t = logsigmoid(pool_M(k_t)) / normalizer      w_t = 1 - a_t       (M values)
//! Kslots_t = diag(a_t) Kslots_{t-1} + w_t^T k_t      Vslots_t = diag(a_t) Vslots_{t-1} + w_t^T v_t
//! p_t = softmax(Kslots_t q_t / sqrt(D))              o_t = p_t Vslots_t
//! ```
//!
//! `pool_M` is the mean over M equal groups of consecutive key dims (so M must divide D).
//! The queries and keys enter raw (no feature map); the slot read-out is unscaled as in the
//! reference code (`GsaScale::One`, the default) or scaled by 1/sqrt(D) like softmax
//! attention (`GsaScale::InvSqrtHeadDim`; the `/ sqrt(D)` above). Both slot memories are `[M, D]` and follow the same
//! update as the GLA state (`gla/`) with key features `w` (the value pass is exactly that
//! kernel with query features `p`). The key pass reads its memory the other way round
//! (contracting over D, leaving the gated M axis), which reuses the kernel's building
//! blocks: its scores are `gated_rows(q k^T, w)` inside a chunk.

use super::config::{HeadShape, MixerConfig};
use super::feature::{log_sigmoid, sigmoid, softmax, softmax_backward_acc};
use super::gla::{
    self, advance_state, chunk_cumsum, decay, gated_cols_acc, gated_rows_acc, gated_scores, scale_rows, GatedDims,
    GatedInputs,
};
use super::heads::{gather_heads, join_groups, QkvGrads};
use crate::linalg::{matmul, MatRef};
use rayon::prelude::*;

/// Sizes of one key-value head's problem.
#[derive(Clone, Copy)]
struct SlotDims {
    group: usize,
    t: usize,
    d: usize,
    m: usize,
}

/// One key-value head's inputs: scaled queries of its group `[G, T, D]`, keys, values
/// `[T, D]`, slot log-decays and slot writes `[T, M]`.
struct SlotInputs {
    qs: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    log_a: Vec<f32>,
    w: Vec<f32>,
}

/// Slot log-decay and write of one key: `log a = logsigmoid(pool(k)) / n`, `w = 1 - a`.
fn slot_gates(cfg: &MixerConfig, k: &[f32], log_a: &mut [f32], w: &mut [f32]) {
    let per_slot = k.len() / log_a.len();
    for (m, (la, wm)) in log_a.iter_mut().zip(w.iter_mut()).enumerate() {
        let pool = k[m * per_slot..(m + 1) * per_slot].iter().sum::<f32>() / per_slot as f32;
        *la = log_sigmoid(pool) / cfg.gate_normalizer;
        *wm = -la.exp_m1();
    }
}

fn head_inputs(
    cfg: &MixerConfig,
    shape: HeadShape,
    t: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kvh: usize,
) -> SlotInputs {
    let (d, group, m) = (shape.d, shape.group(), cfg.gsa_slots);
    let scale = cfg.gsa_scale.factor(d);
    let mut qs = gather_heads(q, t, shape.hq, d, kvh * group, group);
    qs.iter_mut().for_each(|x| *x *= scale);
    let kh = gather_heads(k, t, shape.hkv, d, kvh, 1);
    let (mut log_a, mut w) = (vec![0.0; t * m], vec![0.0; t * m]);
    for ((kr, la), wr) in kh.chunks_exact(d).zip(log_a.chunks_exact_mut(m)).zip(w.chunks_exact_mut(m)) {
        slot_gates(cfg, kr, la, wr);
    }
    SlotInputs { qs, k: kh, v: gather_heads(v, t, shape.hkv, d, kvh, 1), log_a, w }
}

/// The key pass: slot scores `s_t = Kslots_t q_t` (`[G, T, M]`), advancing `kslots` `[M, D]`.
fn slot_scores_forward(x: &SlotInputs, dims: SlotDims, chunk: usize, kslots: &mut [f32]) -> Vec<f32> {
    let SlotDims { group, t, d, m } = dims;
    let mut s = vec![0.0f32; group * t * m];
    for c0 in (0..t).step_by(chunk) {
        let l = chunk.min(t - c0);
        let gc = chunk_cumsum(&x.log_a, c0, l, m);
        let kc = &x.k[c0 * d..(c0 + l) * d];
        let wc = &x.w[c0 * m..(c0 + l) * m];
        for h in 0..group {
            let qh = &x.qs[(h * t + c0) * d..(h * t + c0 + l) * d];
            let sh = &mut s[(h * t + c0) * m..(h * t + c0 + l) * m];
            // Entering memory, decayed to each row; then the chunk's own writes.
            matmul(MatRef::new(qh, l, d), MatRef::new(kslots, m, d).t(), sh, false);
            sh.iter_mut().zip(&gc).for_each(|(x, &g)| *x *= decay(g));
            let mut b = vec![0.0f32; l * l];
            matmul(MatRef::new(qh, l, d), MatRef::new(kc, l, d).t(), &mut b, false);
            gated_rows_acc(&b, wc, &gc, l, m, sh);
        }
        advance_state(kslots, wc, kc, &gc, l, m, d);
    }
    s
}

/// Backward of the key pass (zero entering memory): returns dqs `[G, T, D]`, dk `[T, D]`,
/// dw `[T, M]`, d(log a) `[T, M]`, given the scores `s` and their gradient `ds`.
fn slot_scores_backward(x: &SlotInputs, s: &[f32], ds: &[f32], dims: SlotDims, chunk: usize) -> [Vec<f32>; 4] {
    let SlotDims { group, t, d, m } = dims;
    let mut states = Vec::new();
    let mut kslots = vec![0.0f32; m * d];
    for c0 in (0..t).step_by(chunk) {
        let l = chunk.min(t - c0);
        states.push(kslots.clone());
        let gc = chunk_cumsum(&x.log_a, c0, l, m);
        advance_state(&mut kslots, &x.w[c0 * m..(c0 + l) * m], &x.k[c0 * d..(c0 + l) * d], &gc, l, m, d);
    }
    let (mut dqs, mut dk, mut dw) = (vec![0.0f32; group * t * d], vec![0.0f32; t * d], vec![0.0f32; t * m]);
    let mut dmem = vec![0.0f32; m * d]; // gradient w.r.t. the memory leaving the chunk
    for (ci, c0) in (0..t).step_by(chunk).enumerate().rev() {
        let l = chunk.min(t - c0);
        let gc = chunk_cumsum(&x.log_a, c0, l, m);
        let last = gc[(l - 1) * m..l * m].to_vec();
        let kc = &x.k[c0 * d..(c0 + l) * d];
        let wc = &x.w[c0 * m..(c0 + l) * m];
        let dkc = &mut dk[c0 * d..(c0 + l) * d];
        let dwc = &mut dw[c0 * m..(c0 + l) * m];
        // Paths through later chunks.
        let mut kdm = vec![0.0f32; l * m];
        matmul(MatRef::new(kc, l, d), MatRef::new(&dmem, m, d).t(), &mut kdm, false);
        for j in 0..l {
            for i in 0..m {
                dwc[j * m + i] += kdm[j * m + i] * decay(last[i] - gc[j * m + i]);
            }
        }
        let what = scale_rows(wc, &gc, &last, 0..l, m, -1.0);
        matmul(MatRef::new(&what, l, m), MatRef::new(&dmem, m, d), dkc, true);
        for i in 0..m {
            let decay = decay(last[i]);
            dmem[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= decay);
        }
        for h in 0..group {
            let qh = &x.qs[(h * t + c0) * d..(h * t + c0 + l) * d];
            let dsh = &ds[(h * t + c0) * m..(h * t + c0 + l) * m];
            let dqh = &mut dqs[(h * t + c0) * d..(h * t + c0 + l) * d];
            let dsdec: Vec<f32> = dsh.iter().zip(&gc).map(|(a, &g)| a * decay(g)).collect();
            matmul(MatRef::new(&dsdec, l, m), MatRef::new(&states[ci], m, d), dqh, false);
            matmul(MatRef::new(&dsdec, l, m).t(), MatRef::new(qh, l, d), &mut dmem, true);
            // Inside the chunk: s_t = sum_{j<=t} B_tj w_j exp(G_t - G_j), B = q k^T.
            let db = gated_scores(dsh, wc, &gc, l, m);
            matmul(MatRef::new(&db, l, l), MatRef::new(kc, l, d), dqh, true);
            matmul(MatRef::new(&db, l, l).t(), MatRef::new(qh, l, d), dkc, true);
            let mut b = vec![0.0f32; l * l];
            matmul(MatRef::new(qh, l, d), MatRef::new(kc, l, d).t(), &mut b, false);
            gated_cols_acc(&b, dsh, &gc, l, m, dwc);
        }
    }
    // dG_t = sum_h ds_t * s_t - w_t * dw_t, then a reverse cumulative sum (G_t = sum g).
    let mut dla: Vec<f32> = x.w.iter().zip(&dw).map(|(w, dw)| -w * dw).collect();
    for h in 0..group {
        for i in 0..t * m {
            dla[i] += ds[h * t * m + i] * s[h * t * m + i];
        }
    }
    for r in (0..t.saturating_sub(1)).rev() {
        for i in 0..m {
            dla[r * m + i] += dla[(r + 1) * m + i];
        }
    }
    [dqs, dk, dw, dla]
}

fn softmax_rows(s: &[f32], m: usize) -> Vec<f32> {
    let mut p = vec![0.0; s.len()];
    s.chunks_exact(m).zip(p.chunks_exact_mut(m)).for_each(|(x, y)| softmax(x, y));
    p
}

/// Chunked forward; `state` holds `[Kslots | Vslots]` per key-value head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_forward(
    cfg: &MixerConfig,
    shape: HeadShape,
    t: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    state: &mut [f32],
    chunk: usize,
) -> Vec<f32> {
    let (d, group, m) = (shape.d, shape.group(), cfg.gsa_slots);
    let dims = SlotDims { group, t, d, m };
    let outs: Vec<Vec<f32>> = state
        .par_chunks_mut(2 * m * d)
        .enumerate()
        .map(|(kvh, st)| {
            let x = head_inputs(cfg, shape, t, q, k, v, kvh);
            let (kslots, vslots) = st.split_at_mut(m * d);
            let p = softmax_rows(&slot_scores_forward(&x, dims, chunk, kslots), m);
            let inputs = GatedInputs { qf: &p, kf: &x.w, g: &x.log_a, v: &x.v };
            gla::chunk_forward(&inputs, GatedDims { group, t, k: m, v: d }, chunk, vslots)
        })
        .collect();
    join_groups(&outs, t, shape)
}

/// One decoding step (shapes checked by the caller).
pub(crate) fn recurrent_step(
    cfg: &MixerConfig,
    shape: HeadShape,
    state: &mut [f32],
    q_t: &[f32],
    k_t: &[f32],
    v_t: &[f32],
    o_t: &mut [f32],
) {
    let (d, group, m) = (shape.d, shape.group(), cfg.gsa_slots);
    let scale = cfg.gsa_scale.factor(d);
    let (mut log_a, mut w, mut s) = (vec![0.0; m], vec![0.0; m], vec![0.0; m]);
    let mut p = vec![0.0; group * m];
    for (kvh, st) in state.chunks_exact_mut(2 * m * d).enumerate() {
        let kh = &k_t[kvh * d..(kvh + 1) * d];
        slot_gates(cfg, kh, &mut log_a, &mut w);
        let (kslots, vslots) = st.split_at_mut(m * d);
        for i in 0..m {
            let a = log_a[i].exp();
            for (x, &kd) in kslots[i * d..(i + 1) * d].iter_mut().zip(kh) {
                *x = a * *x + w[i] * kd;
            }
        }
        for (h, ph) in p.chunks_exact_mut(m).enumerate() {
            let qh = &q_t[(kvh * group + h) * d..(kvh * group + h + 1) * d];
            for (i, si) in s.iter_mut().enumerate() {
                *si = scale * kslots[i * d..(i + 1) * d].iter().zip(qh).map(|(a, b)| a * b).sum::<f32>();
            }
            softmax(&s, ph);
        }
        let oh = &mut o_t[kvh * group * d..(kvh + 1) * group * d];
        gla::recurrent_step(vslots, &p, &w, &log_a, &v_t[kvh * d..(kvh + 1) * d], oh, m, d);
    }
}

/// Backward from a zero state (see [`super::mixer::chunk_backward`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_backward(
    cfg: &MixerConfig,
    shape: HeadShape,
    t: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    chunk: usize,
) -> QkvGrads {
    let (d, group, m) = (shape.d, shape.group(), cfg.gsa_slots);
    let dims = SlotDims { group, t, d, m };
    let per_slot = d / m;
    let scale = cfg.gsa_scale.factor(d);
    let per_head: Vec<[Vec<f32>; 3]> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let x = head_inputs(cfg, shape, t, q, k, v, kvh);
            let s = slot_scores_forward(&x, dims, chunk, &mut vec![0.0; m * d]);
            let p = softmax_rows(&s, m);
            let doh = gather_heads(d_o, t, shape.hq, d, kvh * group, group);
            let inputs = GatedInputs { qf: &p, kf: &x.w, g: &x.log_a, v: &x.v };
            let value_pass = gla::chunk_backward(&inputs, &doh, GatedDims { group, t, k: m, v: d }, chunk);
            let mut ds = vec![0.0; group * t * m];
            for ((y, dy), dx) in p.chunks_exact(m).zip(value_pass.dqf.chunks_exact(m)).zip(ds.chunks_exact_mut(m)) {
                softmax_backward_acc(y, dy, dx);
            }
            let [mut dq, mut dk, dw_keys, dla_keys] = slot_scores_backward(&x, &s, &ds, dims, chunk);
            dq.iter_mut().for_each(|g| *g *= scale);
            // Gate path: w = 1 - exp(log a), log a = logsigmoid(pool(k)) / n.
            for r in 0..t {
                for i in 0..m {
                    let j = r * m + i;
                    let dw = dw_keys[j] + value_pass.dkf[j];
                    let dla = dla_keys[j] + value_pass.dg[j] - dw * x.log_a[j].exp();
                    let krow = &x.k[r * d + i * per_slot..r * d + (i + 1) * per_slot];
                    let pool = krow.iter().sum::<f32>() / per_slot as f32;
                    let dpool = dla * sigmoid(-pool) / cfg.gate_normalizer;
                    dk[r * d + i * per_slot..r * d + (i + 1) * per_slot]
                        .iter_mut()
                        .for_each(|g| *g += dpool / per_slot as f32);
                }
            }
            [dq, dk, value_pass.dv]
        })
        .collect();
    QkvGrads::from_kv_heads(shape, t, &per_head)
}
