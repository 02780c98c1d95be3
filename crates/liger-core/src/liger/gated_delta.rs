//! The gated delta rule (Gated DeltaNet) as a Liger mixer: the `[D, D]` state of the gated
//! mixers, one per key-value head, written by a delta rule instead of a plain sum.
//!
//! ```text
//! qn_t = q_t / |q_t|        kn_t = k_t / |k_t|         |x| = sqrt(x.x + 1e-6), per head
//! log a_t = logsigmoid(mean(k_t[..D/2])) / normalizer          b_t = sigmoid(mean(k_t[D/2..]))
//! S_t = a_t (I - b_t kn_t kn_t^T) S_{t-1} + b_t kn_t v_t^T          o_t = S_t^T qn_t
//! ```
//!
//! The state is `[K, V]` (row = key dim) like the other mixers', so this is the transpose of
//! the usual `S_t = a_t S_{t-1} (I - b_t k k^T) + b_t v k^T`, `o_t = S_t q_t`. Queries read it
//! with scale 1, like every other Liger mixer.
//!
//! Gates without new weights. The Liger paper builds every gate from the key projection
//! (Table 1); Gated DeltaNet has one decay and one write strength per head and token, so
//! both are scalars pooled from the raw key, as the paper's scalar-gate variants
//! (retention, mamba2) pool with a mean. The decay is the Liger GLA gate,
//! `logsigmoid(.) / 16`, on that pooled value; the write strength is a sigmoid. They pool the
//! two halves of the key dims, so that they vary independently: pooling the whole key for
//! both would tie a weak decay to a strong write. Pretrained keys have small means, so a
//! converted model starts near a = sigmoid(0)^(1/16) = 0.958 (the GLA gate's value at 0) and
//! b = 1/2. With |kn| = 1 and 0 < b < 1 the matrix `I - b kn kn^T` has eigenvalues in
//! [1 - b, 1], so the state stays bounded by what the writes put in.
//!
//! Chunked form (the UT transform of DeltaNet's WY representation). Write the update as
//! `S_t = a_t S_{t-1} + kn_t u_t^T` with pseudo-values `u_t = b_t (v_t - a_t S_{t-1}^T kn_t)`.
//! Inside a chunk entered with state `S_0`, with `Gam_t` the product of the decays up to t:
//!
//! ```text
//! u_t + sum_{j<t} b_t (Gam_t / Gam_j) (kn_t . kn_j) u_j = b_t (v_t - Gam_t S_0^T kn_t)
//! o_t = Gam_t S_0^T qn_t + sum_{j<=t} (Gam_t / Gam_j) (qn_t . kn_j) u_j
//! S_C = Gam_C S_0 + sum_j (Gam_C / Gam_j) kn_j u_j^T
//! ```
//!
//! The first line is a unit lower-triangular system `(I + A) U = R`, solved by forward
//! substitution. (GPU kernels split R into a part without S_0 so that every chunk's solve can
//! run in parallel; chunks run in sequence here, so R takes S_0 directly.) Every ratio of
//! decays is `exp` of a difference of cumulative log-decays with j <= t: exponents are <= 0.
//!
//! Backward: by recomputation, exactly. The states entering each chunk come from the chunked
//! form, the states inside a chunk from the recurrent update, then the gradient runs back token
//! by token through the recurrence, L2 norms and gates included: O(T D^2) like the forward.

use super::config::{HeadShape, MixerConfig};
use super::feature::{log_sigmoid, sigmoid};
use super::gla::decay;
use super::heads::{gather_heads, join_groups, QkvGrads};
use crate::linalg::{matmul, MatRef};
use rayon::prelude::*;

/// Added to `x.x` under the square root of the L2 norm: a zero vector stays finite.
const L2_EPS: f32 = 1e-6;

/// `x / sqrt(x.x + eps)` for one head.
fn l2_normalize(x: &[f32], out: &mut [f32]) {
    let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() + L2_EPS).sqrt();
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = v * inv);
}

/// Given `y = l2_normalize(x)` and `dy`, adds `(dy - y (y.dy)) / |x|` to `dx`.
fn l2_normalize_backward_acc(x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() + L2_EPS).sqrt();
    let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    for ((dxi, &yi), &dyi) in dx.iter_mut().zip(y).zip(dy) {
        *dxi += (dyi - yi * dot) * inv;
    }
}

/// The means of the two halves of a raw key: the decay's and the write strength's pools.
fn pooled(k: &[f32]) -> (f32, f32) {
    let (lo, hi) = k.split_at(k.len() / 2);
    (lo.iter().sum::<f32>() / lo.len() as f32, hi.iter().sum::<f32>() / hi.len() as f32)
}

/// The log-decay and write strength of one raw key (one head).
fn gates(cfg: &MixerConfig, k: &[f32]) -> (f32, f32) {
    let (pa, pb) = pooled(k);
    (log_sigmoid(pa) / cfg.gate_normalizer, sigmoid(pb))
}

/// Adds to `dk` the gradient through [`gates`], given those of the log-decay and of b.
fn gates_backward_acc(cfg: &MixerConfig, k: &[f32], dlog_a: f32, db: f32, dk: &mut [f32]) {
    let (pa, pb) = pooled(k);
    let half = k.len() / 2;
    // d logsigmoid(x)/dx = sigmoid(-x); d sigmoid(x)/dx = b (1 - b); a mean spreads evenly.
    let per_lo = dlog_a * sigmoid(-pa) / cfg.gate_normalizer / half as f32;
    let b = sigmoid(pb);
    let per_hi = db * b * (1.0 - b) / (k.len() - half) as f32;
    let (lo, hi) = dk.split_at_mut(half);
    lo.iter_mut().for_each(|x| *x += per_lo);
    hi.iter_mut().for_each(|x| *x += per_hi);
}

/// One key-value head's features: `qn` `[G, T, D]`, `kn` and `v` `[T, D]`, the log-decays
/// `g` and write strengths `b` `[T]`.
struct DeltaInputs {
    qn: Vec<f32>,
    kn: Vec<f32>,
    g: Vec<f32>,
    b: Vec<f32>,
    v: Vec<f32>,
}

/// The raw queries `[G, T, D]` and keys `[T, D]` of key-value head `kvh`.
fn raw_heads(shape: HeadShape, t: usize, q: &[f32], k: &[f32], kvh: usize) -> (Vec<f32>, Vec<f32>) {
    let (d, group) = (shape.d, shape.group());
    (gather_heads(q, t, shape.hq, d, kvh * group, group), gather_heads(k, t, shape.hkv, d, kvh, 1))
}

fn head_inputs(cfg: &MixerConfig, shape: HeadShape, qraw: &[f32], kraw: &[f32], v: Vec<f32>) -> DeltaInputs {
    let d = shape.d;
    let mut qn = vec![0.0; qraw.len()];
    qraw.chunks_exact(d).zip(qn.chunks_exact_mut(d)).for_each(|(x, y)| l2_normalize(x, y));
    let mut kn = vec![0.0; kraw.len()];
    let (mut g, mut b) = (Vec::new(), Vec::new());
    for (x, y) in kraw.chunks_exact(d).zip(kn.chunks_exact_mut(d)) {
        l2_normalize(x, y);
        let (la, bt) = gates(cfg, x);
        g.push(la);
        b.push(bt);
    }
    DeltaInputs { qn, kn, g, b, v }
}

/// The pseudo-values `U` `[L, D]` of the chunk at rows `c0..c0+l` entered with state `s0`,
/// and the chunk's cumulative log-decays (f64, as the gated kernel keeps them).
fn chunk_pseudo_values(x: &DeltaInputs, c0: usize, l: usize, d: usize, s0: &[f32]) -> (Vec<f64>, Vec<f32>) {
    let gc: Vec<f64> = x.g[c0..c0 + l]
        .iter()
        .scan(0.0f64, |acc, &g| {
            *acc += g as f64;
            Some(*acc)
        })
        .collect();
    let kc = MatRef::new(&x.kn[c0 * d..(c0 + l) * d], l, d);
    let vc = &x.v[c0 * d..(c0 + l) * d];
    // R = diag(b) (V - diag(Gam) K S_0)
    let mut u = vec![0.0f32; l * d];
    matmul(kc, MatRef::new(s0, d, d), &mut u, false);
    for i in 0..l {
        let (bi, gi) = (x.b[c0 + i], decay(gc[i]));
        for (uij, &vij) in u[i * d..(i + 1) * d].iter_mut().zip(&vc[i * d..(i + 1) * d]) {
            *uij = bi * (vij - gi * *uij);
        }
    }
    // (I + A) U = R, A_ij = b_i (Gam_i / Gam_j) (kn_i . kn_j) for j < i: forward substitution.
    let mut kk = vec![0.0f32; l * l];
    matmul(kc, kc.t(), &mut kk, false);
    for i in 1..l {
        let bi = x.b[c0 + i];
        let (done, rest) = u.split_at_mut(i * d);
        let ui = &mut rest[..d];
        for j in 0..i {
            let aij = bi * kk[i * l + j] * decay(gc[i] - gc[j]);
            ui.iter_mut().zip(&done[j * d..(j + 1) * d]).for_each(|(y, &uj)| *y -= aij * uj);
        }
    }
    (gc, u)
}

/// `S = Gam_L S + sum_j (Gam_L / Gam_j) kn_j u_j^T`: the state leaving a chunk of L rows.
fn advance_state(state: &mut [f32], kc: &[f32], u: &[f32], gc: &[f64], l: usize, d: usize) {
    let last = gc[l - 1];
    let whole = decay(last);
    state.iter_mut().for_each(|s| *s *= whole);
    let mut khat = kc.to_vec();
    for (i, row) in khat.chunks_exact_mut(d).enumerate() {
        let w = decay(last - gc[i]);
        row.iter_mut().for_each(|x| *x *= w);
    }
    matmul(MatRef::new(&khat, l, d).t(), MatRef::new(u, l, d), state, true);
}

/// Chunked forward of one key-value head; `state` holds the initial state and receives the
/// final one. Returns `o` as `[G, T, D]`.
fn head_chunk_forward(x: &DeltaInputs, group: usize, t: usize, d: usize, chunk: usize, state: &mut [f32]) -> Vec<f32> {
    let mut o = vec![0.0f32; group * t * d];
    for c0 in (0..t).step_by(chunk) {
        let l = chunk.min(t - c0);
        let (gc, u) = chunk_pseudo_values(x, c0, l, d, state);
        let kc = &x.kn[c0 * d..(c0 + l) * d];
        for h in 0..group {
            let rows = (h * t + c0) * d..(h * t + c0 + l) * d;
            let qh = MatRef::new(&x.qn[rows.clone()], l, d);
            let oh = &mut o[rows];
            // The state entering the chunk, decayed to each row.
            matmul(qh, MatRef::new(state, d, d), oh, false);
            for (i, row) in oh.chunks_exact_mut(d).enumerate() {
                let w = decay(gc[i]);
                row.iter_mut().for_each(|y| *y *= w);
            }
            // The chunk's own pseudo-values.
            let mut p = vec![0.0f32; l * l];
            matmul(qh, MatRef::new(kc, l, d).t(), &mut p, false);
            for i in 0..l {
                for j in 0..l {
                    p[i * l + j] = if j <= i { p[i * l + j] * decay(gc[i] - gc[j]) } else { 0.0 };
                }
            }
            matmul(MatRef::new(&p, l, l), MatRef::new(&u, l, d), oh, true);
        }
        advance_state(state, kc, &u, &gc, l, d);
    }
    o
}

/// The delta-rule update of one head's state `[D, D]` by one token.
fn update_state(state: &mut [f32], kn: &[f32], log_a: f32, b: f32, v: &[f32]) {
    let d = kn.len();
    let a = log_a.exp();
    state.iter_mut().for_each(|s| *s *= a);
    // u = b (v - S^T kn) on the decayed state, then S += kn u^T.
    let mut u = v.to_vec();
    for (&ki, row) in kn.iter().zip(state.chunks_exact(d)) {
        u.iter_mut().zip(row).for_each(|(uj, &s)| *uj -= ki * s);
    }
    u.iter_mut().for_each(|uj| *uj *= b);
    for (&ki, row) in kn.iter().zip(state.chunks_exact_mut(d)) {
        row.iter_mut().zip(&u).for_each(|(s, &uj)| *s += ki * uj);
    }
}

/// `o_h = S^T qn_h` for the `[G, D]` queries of a group.
fn read_state(state: &[f32], qn: &[f32], o: &mut [f32], d: usize) {
    for (qh, oh) in qn.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
        oh.fill(0.0);
        for (&qi, row) in qh.iter().zip(state.chunks_exact(d)) {
            oh.iter_mut().zip(row).for_each(|(y, &s)| *y += qi * s);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Backward of one key-value head from a zero initial state, given `d_o` `[G, T, D]`.
/// Returns `[dq, dk, dv]` head-major (`[G, T, D]`, `[T, D]`, `[T, D]`).
#[allow(clippy::too_many_arguments)]
fn head_backward(
    cfg: &MixerConfig,
    x: &DeltaInputs,
    qraw: &[f32],
    kraw: &[f32],
    d_o: &[f32],
    group: usize,
    t: usize,
    d: usize,
    chunk: usize,
) -> [Vec<f32>; 3] {
    // The states entering each chunk, from the chunked form.
    let mut starts = Vec::new();
    let mut s = vec![0.0f32; d * d];
    for c0 in (0..t).step_by(chunk) {
        let l = chunk.min(t - c0);
        starts.push(s.clone());
        let (gc, u) = chunk_pseudo_values(x, c0, l, d, &s);
        advance_state(&mut s, &x.kn[c0 * d..(c0 + l) * d], &u, &gc, l, d);
    }

    let mut dqn = vec![0.0f32; group * t * d];
    let mut dkn = vec![0.0f32; t * d];
    let mut dv = vec![0.0f32; t * d];
    let (mut dlog_a, mut db) = (vec![0.0f32; t], vec![0.0f32; t]);
    // Gradient w.r.t. the state after the current token.
    let mut ds = vec![0.0f32; d * d];
    let (mut pred, mut u, mut du, mut dpred) = (vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; d]);
    for (ci, c0) in (0..t).step_by(chunk).enumerate().rev() {
        let l = chunk.min(t - c0);
        // states[i] is the state before token c0 + i.
        let mut states = vec![starts[ci].clone()];
        for r in c0..c0 + l {
            let mut next = states.last().expect("one state at least").clone();
            update_state(&mut next, &x.kn[r * d..(r + 1) * d], x.g[r], x.b[r], &x.v[r * d..(r + 1) * d]);
            states.push(next);
        }
        for i in (0..l).rev() {
            let r = c0 + i;
            let (before, after) = (&states[i], &states[i + 1]);
            // o_h = S^T qn_h: dqn_h = S do_h, dS += qn_h do_h^T.
            for h in 0..group {
                let row = (h * t + r) * d..(h * t + r + 1) * d;
                let (qn, dor) = (&x.qn[row.clone()], &d_o[row.clone()]);
                for (n, (srow, dsrow)) in after.chunks_exact(d).zip(ds.chunks_exact_mut(d)).enumerate() {
                    dqn[row.start + n] = dot(srow, dor);
                    dsrow.iter_mut().zip(dor).for_each(|(g, &y)| *g += qn[n] * y);
                }
            }
            let (kn, vr) = (&x.kn[r * d..(r + 1) * d], &x.v[r * d..(r + 1) * d]);
            let (a, b) = (x.g[r].exp(), x.b[r]);
            // Recompute pred = a S_before^T kn and u = b (v - pred).
            pred.fill(0.0);
            for (&ki, srow) in kn.iter().zip(before.chunks_exact(d)) {
                pred.iter_mut().zip(srow).for_each(|(p, &s)| *p += ki * s);
            }
            pred.iter_mut().for_each(|p| *p *= a);
            u.iter_mut().zip(vr.iter().zip(&pred)).for_each(|(y, (&vj, &pj))| *y = b * (vj - pj));
            // S = Sa + kn u^T: du = dS^T kn, dkn += dS u.
            du.fill(0.0);
            let dknr = &mut dkn[r * d..(r + 1) * d];
            for ((&ki, dsrow), dk) in kn.iter().zip(ds.chunks_exact(d)).zip(dknr.iter_mut()) {
                *dk += dot(dsrow, &u);
                du.iter_mut().zip(dsrow).for_each(|(y, &g)| *y += ki * g);
            }
            // u = b (v - pred).
            dv[r * d..(r + 1) * d].iter_mut().zip(&du).for_each(|(y, &g)| *y = b * g);
            db[r] = du.iter().zip(vr.iter().zip(&pred)).map(|(&g, (&vj, &pj))| g * (vj - pj)).sum();
            dpred.iter_mut().zip(&du).for_each(|(y, &g)| *y = -b * g);
            // pred = Sa^T kn with Sa = a S_before: dkn += Sa dpred, dSa = dS + kn dpred^T.
            for ((&ki, (srow, dsrow)), dk) in
                kn.iter().zip(before.chunks_exact(d).zip(ds.chunks_exact_mut(d))).zip(dknr)
            {
                *dk += a * dot(srow, &dpred);
                dsrow.iter_mut().zip(&dpred).for_each(|(g, &p)| *g += ki * p);
            }
            // Sa = a S_before.
            dlog_a[r] = a * dot(&ds, before);
            ds.iter_mut().for_each(|g| *g *= a);
        }
    }

    let mut dq = vec![0.0f32; group * t * d];
    for (((x, y), dy), dx) in
        qraw.chunks_exact(d).zip(x.qn.chunks_exact(d)).zip(dqn.chunks_exact(d)).zip(dq.chunks_exact_mut(d))
    {
        l2_normalize_backward_acc(x, y, dy, dx);
    }
    let mut dk = vec![0.0f32; t * d];
    for (r, dkr) in dk.chunks_exact_mut(d).enumerate() {
        let (kr, row) = (&kraw[r * d..(r + 1) * d], r * d..(r + 1) * d);
        l2_normalize_backward_acc(kr, &x.kn[row.clone()], &dkn[row], dkr);
        gates_backward_acc(cfg, kr, dlog_a[r], db[r], dkr);
    }
    [dq, dk, dv]
}

/// Chunked forward over one sequence; `state` (hkv blocks of `[D, D]`) holds the initial
/// state and receives the final one. Returns `o` `[T, hq, D]`. Shapes are checked by the caller.
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
    let (d, group) = (shape.d, shape.group());
    let outs: Vec<Vec<f32>> = state
        .par_chunks_mut(d * d)
        .enumerate()
        .map(|(kvh, s)| {
            let (qraw, kraw) = raw_heads(shape, t, q, k, kvh);
            let x = head_inputs(cfg, shape, &qraw, &kraw, gather_heads(v, t, shape.hkv, d, kvh, 1));
            head_chunk_forward(&x, group, t, d, chunk, s)
        })
        .collect();
    join_groups(&outs, t, shape)
}

/// One decoding step: `q_t` `[hq, D]`, `k_t`, `v_t` `[hkv, D]`; writes `o_t` `[hq, D]` and
/// advances `state`.
pub(crate) fn recurrent_step(
    cfg: &MixerConfig,
    shape: HeadShape,
    state: &mut [f32],
    q_t: &[f32],
    k_t: &[f32],
    v_t: &[f32],
    o_t: &mut [f32],
) {
    let (d, group) = (shape.d, shape.group());
    let (mut qn, mut kn) = (vec![0.0; group * d], vec![0.0; d]);
    for (kvh, s) in state.chunks_exact_mut(d * d).enumerate() {
        let qh = &q_t[kvh * group * d..(kvh + 1) * group * d];
        qh.chunks_exact(d).zip(qn.chunks_exact_mut(d)).for_each(|(x, y)| l2_normalize(x, y));
        let kh = &k_t[kvh * d..(kvh + 1) * d];
        l2_normalize(kh, &mut kn);
        let (log_a, b) = gates(cfg, kh);
        update_state(s, &kn, log_a, b, &v_t[kvh * d..(kvh + 1) * d]);
        read_state(s, &qn, &mut o_t[kvh * group * d..(kvh + 1) * group * d], d);
    }
}

/// Gradients of `sum(d_o * chunk_forward(q, k, v))` from a zero state w.r.t. q, k, v, through
/// the L2 norms and the gates. Shapes are checked by the caller.
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
    let (d, group) = (shape.d, shape.group());
    let per_head: Vec<[Vec<f32>; 3]> = (0..shape.hkv)
        .into_par_iter()
        .map(|kvh| {
            let (qraw, kraw) = raw_heads(shape, t, q, k, kvh);
            let x = head_inputs(cfg, shape, &qraw, &kraw, gather_heads(v, t, shape.hkv, d, kvh, 1));
            let doh = gather_heads(d_o, t, shape.hq, d, kvh * group, group);
            head_backward(cfg, &x, &qraw, &kraw, &doh, group, t, d, chunk)
        })
        .collect();
    QkvGrads::from_kv_heads(shape, t, &per_head)
}
