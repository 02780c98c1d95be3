//! Gated linear attention in chunked form (chunks of C tokens; training and prefill) and its
//! backward. With `G_t` the cumulative log-gate inside the chunk,
//! `o_t = (qf_t * exp(G_t)) S_0 + sum_{j<=t} A_tj v_j` with
//! `A_tj = sum_d qf_t[d] kf_j[d] exp(G_t[d] - G_j[d])`.
//! Numerical care: the naive factorisation `(qf_t exp(G_t)) . (kf_j exp(-G_j))` overflows
//! f32 as soon as the decay inside a chunk passes exp(-88) (rwkv6's gate gets there in one
//! step). Instead the chunk is cut into sub-blocks of `SUB` rows; for a query sub-block
//! starting at row i0 and the keys before it we factor around the boundary p = i0 - 1:
//! `exp(G_t - G_j) = exp(G_t - G_p) * exp(G_p - G_j)` with j <= p <= t, so both factors are
//! <= 1 and nothing overflows (underflow only where the true weight is negligible). Those
//! blocks are matrix products; only the small diagonal sub-blocks take exact exponentials
//! element by element. Every exponent here is <= 0.

use super::{
    advance_state, chunk_cumsum, decay, gated_cols_acc, gated_rows_acc, gated_scores, scale_rows, GatedDims,
    GatedGrads, GatedInputs,
};
use crate::linalg::{matmul, MatRef};

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
