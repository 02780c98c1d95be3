//! The SwiGLU activation of the MLP, `a = silu(gate) * up`, forward and backward.

/// `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`, elementwise.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
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
