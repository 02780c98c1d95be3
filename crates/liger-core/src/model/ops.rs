//! Small per-token operations of the decoder: RMSNorm, RoPE, SwiGLU, softmax.

/// `out = x / rms(x) * weight`, for each row of `x` (`rows x weight.len()`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// RMSNorm of each row of `x` in place.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for xr in x.chunks_exact_mut(n) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        xr.iter_mut().zip(weight).for_each(|(v, w)| *v *= inv * w);
    }
}

/// Rotary position embedding in the Hugging Face "rotate_half" convention: within each head
/// of `head_dim` values, element `j` pairs with `j + head_dim/2`.
/// `x` is `T x (heads * head_dim)`; token `t` sits at position `pos0 + t`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos0: usize, inv_freq: &[f32]) {
    let half = head_dim / 2;
    let row = heads * head_dim;
    for (t, xr) in x.chunks_exact_mut(row).enumerate() {
        let pos = (pos0 + t) as f32;
        for (j, &f) in inv_freq.iter().enumerate() {
            let (sin, cos) = (pos * f).sin_cos();
            for h in 0..heads {
                let base = h * head_dim;
                let (a, b) = (xr[base + j], xr[base + j + half]);
                xr[base + j] = a * cos - b * sin;
                xr[base + j + half] = b * cos + a * sin;
            }
        }
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`, elementwise.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Softmax of `x` in place; stable for large values.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}
