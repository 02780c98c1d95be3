//! Gated linear attention with a per-key-dimension decay, on one key-value head: the kernel
//! behind every mixer except GSA (a scalar decay is a vector of equal values; no decay is 0).
//!
//! ```text
//! S_t = diag(exp(g_t)) S_{t-1} + kf_t^T v_t        o_t = qf_t S_t
//! ```
//!
//! Inputs are head-major: `qf` is `[G, T, K]` for the G query heads that share this head's
//! state, `kf` and the log-gates `g` (all <= 0) are `[T, K]`, `v` is `[T, V]`, the state
//! `[K, V]`, the output `[G, T, V]`.
//!
//! Chunked form (chunks of C tokens): with `G_t` the cumulative log-gate inside the chunk,
//! `o_t = (qf_t * exp(G_t)) S_0 + sum_{j<=t} A_tj v_j` with
//! `A_tj = sum_d qf_t[d] kf_j[d] exp(G_t[d] - G_j[d])`.
//! Numerical care: the naive factorisation `(qf_t exp(G_t)) . (kf_j exp(-G_j))` overflows
//! f32 as soon as the decay inside a chunk passes exp(-88) (rwkv6's gate gets there in one
//! step). Instead the chunk is cut into sub-blocks of `SUB` rows; for a query sub-block
//! starting at row i0 and the keys before it we factor around the boundary p = i0 - 1:
//! `exp(G_t - G_j) = exp(G_t - G_p) * exp(G_p - G_j)` with j <= p <= t, so both factors are
//! <= 1 and nothing overflows (underflow only where the true weight is negligible). Those
//! blocks are matrix products; only the small diagonal sub-blocks take exact exponentials
//! element by element. Every exponent in this file is <= 0.

use crate::linalg::{matmul, MatRef};

/// Rows of the sub-blocks inside a chunk (see the module notes).
const SUB: usize = 16;

/// Sizes of one head's problem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GatedDims {
    pub group: usize,
    pub t: usize,
    pub k: usize,
    pub v: usize,
}

/// One key-value head's inputs.
pub(crate) struct GatedInputs<'a> {
    pub qf: &'a [f32],
    pub kf: &'a [f32],
    pub g: &'a [f32],
    pub v: &'a [f32],
}

/// Gradients of one key-value head (w.r.t. the features and log-gates).
pub(crate) struct GatedGrads {
    pub dqf: Vec<f32>,
    pub dkf: Vec<f32>,
    pub dg: Vec<f32>,
    pub dv: Vec<f32>,
}

/// `exp(x)` for an exponent computed in f64 (see [`chunk_cumsum`]).
pub(crate) fn decay(x: f64) -> f32 {
    (x as f32).exp()
}

/// Inclusive cumulative sum over the rows of `g[r0..r0+len, K]`, in f64: the kernels take
/// differences of these sums, and with strong gates (rwkv6: -exp(k)) the sums reach the
/// thousands, where f32 would leave only ~1e-4 of absolute precision in the differences.
pub(crate) fn chunk_cumsum(g: &[f32], r0: usize, len: usize, k: usize) -> Vec<f64> {
    let mut out: Vec<f64> = g[r0 * k..(r0 + len) * k].iter().map(|&x| x as f64).collect();
    for r in 1..len {
        for d in 0..k {
            out[r * k + d] += out[(r - 1) * k + d];
        }
    }
    out
}

/// `x * exp(sign * (gc - base))` for the rows `rows` of `x` and `gc` (`[_, K]`), where `base`
/// is one row of K values. Callers pick rows, base and sign so that the exponent is <= 0.
pub(crate) fn scale_rows(
    x: &[f32],
    gc: &[f64],
    base: &[f64],
    rows: std::ops::Range<usize>,
    k: usize,
    sign: f64,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * k);
    for r in rows {
        for d in 0..k {
            out.push(x[r * k + d] * decay(sign * (gc[r * k + d] - base[d])));
        }
    }
    out
}

/// `A_tj = sum_d x_t[d] y_j[d] exp(gc_t[d] - gc_j[d])` for j <= t, zero above the diagonal.
/// `x`, `y`, `gc` are `[L, K]`; returns `[L, L]`.
pub(crate) fn gated_scores(x: &[f32], y: &[f32], gc: &[f64], l: usize, k: usize) -> Vec<f32> {
    let mut a = vec![0.0f32; l * l];
    for i0 in (0..l).step_by(SUB) {
        let i1 = (i0 + SUB).min(l);
        for t in i0..i1 {
            for j in i0..=t {
                let mut s = 0.0;
                for d in 0..k {
                    s += x[t * k + d] * y[j * k + d] * decay(gc[t * k + d] - gc[j * k + d]);
                }
                a[t * l + j] = s;
            }
        }
        if i0 > 0 {
            let p = &gc[(i0 - 1) * k..i0 * k];
            let xs = scale_rows(x, gc, p, i0..i1, k, 1.0);
            let ys = scale_rows(y, gc, p, 0..i0, k, -1.0);
            let mut block = vec![0.0f32; (i1 - i0) * i0];
            matmul(MatRef::new(&xs, i1 - i0, k), MatRef::new(&ys, i0, k).t(), &mut block, false);
            for (r, row) in block.chunks_exact(i0).enumerate() {
                a[(i0 + r) * l..(i0 + r) * l + i0].copy_from_slice(row);
            }
        }
    }
    a
}

/// `R_t += sum_{j<=t} W_tj y_j * exp(gc_t - gc_j)`; `w` is `[L, L]` (only j <= t is read).
pub(crate) fn gated_rows_acc(w: &[f32], y: &[f32], gc: &[f64], l: usize, k: usize, r: &mut [f32]) {
    for i0 in (0..l).step_by(SUB) {
        let i1 = (i0 + SUB).min(l);
        for t in i0..i1 {
            for j in i0..=t {
                let wtj = w[t * l + j];
                for d in 0..k {
                    r[t * k + d] += wtj * y[j * k + d] * decay(gc[t * k + d] - gc[j * k + d]);
                }
            }
        }
        if i0 > 0 {
            let p = &gc[(i0 - 1) * k..i0 * k];
            let ys = scale_rows(y, gc, p, 0..i0, k, -1.0);
            let mut block = vec![0.0f32; (i1 - i0) * k];
            let wb = MatRef { data: &w[i0 * l..], rows: i1 - i0, cols: i0, row_stride: l, col_stride: 1 };
            matmul(wb, MatRef::new(&ys, i0, k), &mut block, false);
            for t in i0..i1 {
                for d in 0..k {
                    r[t * k + d] += block[(t - i0) * k + d] * decay(gc[t * k + d] - p[d]);
                }
            }
        }
    }
}

/// `C_j += sum_{t>=j} W_tj x_t * exp(gc_t - gc_j)`; `w` is `[L, L]` (only j <= t is read).
pub(crate) fn gated_cols_acc(w: &[f32], x: &[f32], gc: &[f64], l: usize, k: usize, c: &mut [f32]) {
    for j0 in (0..l).step_by(SUB) {
        let j1 = (j0 + SUB).min(l);
        for j in j0..j1 {
            for t in j..j1 {
                let wtj = w[t * l + j];
                for d in 0..k {
                    c[j * k + d] += wtj * x[t * k + d] * decay(gc[t * k + d] - gc[j * k + d]);
                }
            }
        }
        if j1 < l {
            // Queries after this key block: factor around its last row p = j1 - 1.
            let p = &gc[(j1 - 1) * k..j1 * k];
            let xs = scale_rows(x, gc, p, j1..l, k, 1.0);
            let mut block = vec![0.0f32; (j1 - j0) * k];
            let wb = MatRef { data: &w[j1 * l + j0..], rows: l - j1, cols: j1 - j0, row_stride: l, col_stride: 1 };
            matmul(wb.t(), MatRef::new(&xs, l - j1, k), &mut block, false);
            for j in j0..j1 {
                for d in 0..k {
                    c[j * k + d] += block[(j - j0) * k + d] * decay(p[d] - gc[j * k + d]);
                }
            }
        }
    }
}

/// `S = diag(exp(last)) S + (kf * exp(last - gc))^T v` for one chunk of L rows.
pub(crate) fn advance_state(state: &mut [f32], kc: &[f32], vc: &[f32], gc: &[f64], l: usize, k: usize, v: usize) {
    let last = &gc[(l - 1) * k..l * k];
    for d in 0..k {
        let decay = decay(last[d]);
        state[d * v..(d + 1) * v].iter_mut().for_each(|s| *s *= decay);
    }
    let khat = scale_rows(kc, gc, last, 0..l, k, -1.0);
    matmul(MatRef::new(&khat, l, k).t(), MatRef::new(vc, l, v), state, true);
}

/// Chunked forward of one key-value head. `state` holds the initial state and receives the
/// final one. Returns `o` as `[G, T, V]`.
pub(crate) fn chunk_forward(x: &GatedInputs, dims: GatedDims, chunk: usize, state: &mut [f32]) -> Vec<f32> {
    let GatedDims { group, t, k, v } = dims;
    let mut o = vec![0.0f32; group * t * v];
    for c0 in (0..t).step_by(chunk) {
        let l = chunk.min(t - c0);
        let gc = chunk_cumsum(x.g, c0, l, k);
        let kc = &x.kf[c0 * k..(c0 + l) * k];
        let vc = &x.v[c0 * v..(c0 + l) * v];
        for h in 0..group {
            let qh = &x.qf[(h * t + c0) * k..(h * t + c0 + l) * k];
            let oh = &mut o[(h * t + c0) * v..(h * t + c0 + l) * v];
            // Contribution of the state entering the chunk.
            let qdec: Vec<f32> = qh.iter().zip(&gc).map(|(q, &g)| q * decay(g)).collect();
            matmul(MatRef::new(&qdec, l, k), MatRef::new(state, k, v), oh, false);
            // Contribution of the chunk's own tokens.
            let a = gated_scores(qh, kc, &gc, l, k);
            matmul(MatRef::new(&a, l, l), MatRef::new(vc, l, v), oh, true);
        }
        advance_state(state, kc, vc, &gc, l, k, v);
    }
    o
}

/// One decoding step of one key-value head: `qf` is `[G, K]`, `kf` and `g` `[K]`, `v` `[V]`;
/// writes `o` `[G, V]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrent_step(
    state: &mut [f32],
    qf: &[f32],
    kf: &[f32],
    g: &[f32],
    v: &[f32],
    o: &mut [f32],
    k: usize,
    vd: usize,
) {
    for d in 0..k {
        let decay = g[d].exp();
        let kd = kf[d];
        for (s, &vn) in state[d * vd..(d + 1) * vd].iter_mut().zip(v) {
            *s = decay * *s + kd * vn;
        }
    }
    for (qh, oh) in qf.chunks_exact(k).zip(o.chunks_exact_mut(vd)) {
        oh.fill(0.0);
        for d in 0..k {
            let qd = qh[d];
            for (on, &s) in oh.iter_mut().zip(&state[d * vd..(d + 1) * vd]) {
                *on += qd * s;
            }
        }
    }
}

/// Backward of [`chunk_forward`] from a zero initial state: gradients w.r.t. qf, kf, the
/// log-gates g and v, given `d_o` (`[G, T, V]`).
///
/// Besides dqf, dkf, dv (computed chunk by chunk like the forward, with the state gradient
/// carried backwards), the log-gate gradient uses the identity
/// `dG_t = sum_h qf_t * dqf_t - kf_t * dkf_t` for the gradient w.r.t. the cumulative
/// log-gate G_t (every term of o depends on G only through exp(G_t - G_j)), followed by a
/// reverse cumulative sum, since G_t = sum_{l<=t} g_l.
pub(crate) fn chunk_backward(x: &GatedInputs, d_o: &[f32], dims: GatedDims, chunk: usize) -> GatedGrads {
    let GatedDims { group, t, k, v } = dims;
    // States entering each chunk, recomputed.
    let mut states = Vec::new();
    let mut state = vec![0.0f32; k * v];
    for c0 in (0..t).step_by(chunk) {
        let l = chunk.min(t - c0);
        states.push(state.clone());
        let gc = chunk_cumsum(x.g, c0, l, k);
        advance_state(&mut state, &x.kf[c0 * k..(c0 + l) * k], &x.v[c0 * v..(c0 + l) * v], &gc, l, k, v);
    }

    let mut dqf = vec![0.0f32; group * t * k];
    let mut dkf = vec![0.0f32; t * k];
    let mut dv = vec![0.0f32; t * v];
    // Gradient w.r.t. the state leaving the current chunk.
    let mut ds = vec![0.0f32; k * v];
    for (ci, c0) in (0..t).step_by(chunk).enumerate().rev() {
        let l = chunk.min(t - c0);
        let gc = chunk_cumsum(x.g, c0, l, k);
        let last = gc[(l - 1) * k..l * k].to_vec();
        let kc = &x.kf[c0 * k..(c0 + l) * k];
        let vc = &x.v[c0 * v..(c0 + l) * v];
        let s0 = &states[ci];
        let dkc = &mut dkf[c0 * k..(c0 + l) * k];
        let dvc = &mut dv[c0 * v..(c0 + l) * v];

        // Paths through later chunks (the state leaving this one).
        let mut vds = vec![0.0f32; l * k];
        matmul(MatRef::new(vc, l, v), MatRef::new(&ds, k, v).t(), &mut vds, false);
        for j in 0..l {
            for d in 0..k {
                dkc[j * k + d] += vds[j * k + d] * decay(last[d] - gc[j * k + d]);
            }
        }
        let khat = scale_rows(kc, &gc, &last, 0..l, k, -1.0);
        matmul(MatRef::new(&khat, l, k), MatRef::new(&ds, k, v), dvc, true);
        for d in 0..k {
            let decay = decay(last[d]);
            ds[d * v..(d + 1) * v].iter_mut().for_each(|s| *s *= decay);
        }

        for h in 0..group {
            let qh = &x.qf[(h * t + c0) * k..(h * t + c0 + l) * k];
            let doh = &d_o[(h * t + c0) * v..(h * t + c0 + l) * v];
            let dqh = &mut dqf[(h * t + c0) * k..(h * t + c0 + l) * k];
            // dA_tj = do_t . v_j (only j <= t is used).
            let mut da = vec![0.0f32; l * l];
            matmul(MatRef::new(doh, l, v), MatRef::new(vc, l, v).t(), &mut da, false);
            // dqf: through the entering state, then through the chunk's own keys.
            matmul(MatRef::new(doh, l, v), MatRef::new(s0, k, v).t(), dqh, false);
            dqh.iter_mut().zip(&gc).for_each(|(dq, &g)| *dq *= decay(g));
            gated_rows_acc(&da, kc, &gc, l, k, dqh);
            // dkf and dv through the chunk's own queries.
            gated_cols_acc(&da, qh, &gc, l, k, dkc);
            let a = gated_scores(qh, kc, &gc, l, k);
            matmul(MatRef::new(&a, l, l).t(), MatRef::new(doh, l, v), dvc, true);
            // The entering state's gradient collects this chunk's queries.
            let qdec: Vec<f32> = qh.iter().zip(&gc).map(|(q, &g)| q * decay(g)).collect();
            matmul(MatRef::new(&qdec, l, k).t(), MatRef::new(doh, l, v), &mut ds, true);
        }
    }

    // Log-gate gradient: dG then a reverse cumulative sum over the whole sequence.
    let mut dg = vec![0.0f32; t * k];
    for i in 0..t * k {
        dg[i] = -x.kf[i] * dkf[i];
    }
    for h in 0..group {
        for i in 0..t * k {
            dg[i] += x.qf[h * t * k + i] * dqf[h * t * k + i];
        }
    }
    for r in (0..t.saturating_sub(1)).rev() {
        for d in 0..k {
            dg[r * k + d] += dg[(r + 1) * k + d];
        }
    }
    GatedGrads { dqf, dkf, dg, dv }
}
