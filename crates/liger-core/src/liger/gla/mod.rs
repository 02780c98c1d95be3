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
//! Files: `chunk.rs` the chunked form (training, prefill) and its backward, `step.rs` the
//! single decoding step; the float64 reference is `liger::naive::mixer_forward`. This module
//! holds the building blocks they share (and that GSA's slot passes reuse).

mod chunk;
mod step;

pub(crate) use chunk::{chunk_backward, chunk_forward};
pub(crate) use step::recurrent_step;

use crate::linalg::{matmul, MatRef};

/// Rows of the sub-blocks inside a chunk (see `chunk.rs`).
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
