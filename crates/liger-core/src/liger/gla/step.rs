//! The single decoding step of gated linear attention: one token's update of the state and
//! its read-out, token by token (the chunked form's `S_t` and `o_t` at one t).

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
