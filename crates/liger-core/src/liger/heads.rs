//! Per-head layout helpers shared by every mixer: moving heads between the token-major layout
//! of q/k/v (`[T, H, D]`) and the head-major one the kernels of one head use (`[H, T, D]`), and
//! the q/k/v gradients assembled from per-head parts.

use super::config::HeadShape;

/// Gradients of one sequence, in the layouts of q, k, v.
#[derive(Debug, Clone)]
pub struct QkvGrads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

impl QkvGrads {
    /// The gradients of T tokens from per-key-value-head parts: `[dq, dk, dv]` of head kvh,
    /// head-major (`[group, T, D]` for dq of its query heads, `[T, D]` for dk and dv).
    pub(crate) fn from_kv_heads(shape: HeadShape, t: usize, per_head: &[[Vec<f32>; 3]]) -> QkvGrads {
        let (d, group) = (shape.d, shape.group());
        let mut grads = QkvGrads {
            dq: vec![0.0; t * shape.hq * d],
            dk: vec![0.0; t * shape.hkv * d],
            dv: vec![0.0; t * shape.hkv * d],
        };
        for (kvh, [dq, dk, dv]) in per_head.iter().enumerate() {
            scatter_heads(dq, t, shape.hq, d, kvh * group, &mut grads.dq);
            scatter_heads(dk, t, shape.hkv, d, kvh, &mut grads.dk);
            scatter_heads(dv, t, shape.hkv, d, kvh, &mut grads.dv);
        }
        grads
    }
}

/// Copies heads `first..first+count` of a `[T, H, D]` tensor into head-major `[count, T, D]`.
pub(crate) fn gather_heads(x: &[f32], t: usize, h: usize, d: usize, first: usize, count: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(count * t * d);
    for head in first..first + count {
        for r in 0..t {
            out.extend_from_slice(&x[(r * h + head) * d..(r * h + head + 1) * d]);
        }
    }
    out
}

/// Writes head-major `[count, T, D]` into heads `first..first+count` of a `[T, H, D]` tensor.
pub(crate) fn scatter_heads(src: &[f32], t: usize, h: usize, d: usize, first: usize, out: &mut [f32]) {
    if t == 0 {
        return;
    }
    for (i, head) in src.chunks_exact(t * d).enumerate() {
        for r in 0..t {
            out[(r * h + first + i) * d..(r * h + first + i + 1) * d].copy_from_slice(&head[r * d..(r + 1) * d]);
        }
    }
}

/// The query-head outputs of every key-value head's group (`outs[kvh]`, head-major
/// `[group, T, D]` each) joined into one `[T, hq, D]` tensor.
pub(crate) fn join_groups(outs: &[Vec<f32>], t: usize, shape: super::config::HeadShape) -> Vec<f32> {
    let (d, group) = (shape.d, shape.group());
    let mut o = vec![0.0; t * shape.hq * d];
    for (kvh, oh) in outs.iter().enumerate() {
        scatter_heads(oh, t, shape.hq, d, kvh * group, &mut o);
    }
    o
}
