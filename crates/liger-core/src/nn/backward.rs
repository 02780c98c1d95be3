//! Backward passes of the decoder's elementwise and normalisation ops.

/// Backward of `y = x / rms(x) · g` per row. Adds into `dx`; accumulates `dg` when given
/// (the norms are frozen during LoRA training, so usually `None`).
pub fn rms_norm_backward(x: &[f32], g: &[f32], eps: f32, dy: &[f32], dx: &mut [f32], mut dg: Option<&mut [f32]>) {
    let n = g.len();
    for ((xr, dyr), dxr) in x.chunks_exact(n).zip(dy.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        // y_i = x_i · inv · g_i ; d inv / d x_j = -x_j · inv³ / n
        let dot: f32 = (0..n).map(|i| dyr[i] * g[i] * xr[i]).sum();
        let c = dot * inv * inv * inv / n as f32;
        for i in 0..n {
            dxr[i] += dyr[i] * g[i] * inv - xr[i] * c;
        }
        if let Some(dg) = dg.as_deref_mut() {
            for i in 0..n {
                dg[i] += dyr[i] * xr[i] * inv;
            }
        }
    }
}

/// Backward of `a = silu(g) · u`: writes `dg` and `du`.
pub fn swiglu_backward(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..g.len() {
        let s = 1.0 / (1.0 + (-g[i]).exp());
        let silu = g[i] * s;
        du[i] = da[i] * silu;
        dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
    }
}

/// Backward of RoPE: the rotation's transpose, i.e. RoPE at the negated angle, in place on the gradient.
pub fn rope_backward(dx: &mut [f32], heads: usize, head_dim: usize, pos0: usize, inv_freq: &[f32]) {
    let half = head_dim / 2;
    for (t, row) in dx.chunks_exact_mut(heads * head_dim).enumerate() {
        let pos = (pos0 + t) as f32;
        for (j, &f) in inv_freq.iter().enumerate() {
            let (sin, cos) = (pos * f).sin_cos();
            for h in 0..heads {
                let b = h * head_dim;
                let (da, db) = (row[b + j], row[b + j + half]);
                row[b + j] = da * cos + db * sin;
                row[b + j + half] = db * cos - da * sin;
            }
        }
    }
}
