//! RMSNorm, `y = x / rms(x) * weight` per row, forward and backward.

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
