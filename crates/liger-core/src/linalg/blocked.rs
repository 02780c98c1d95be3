//! `Y = X Wᵀ` over a block of tokens without the `gemm` crate (the wasm build's product).
//!
//! The tokens are taken in blocks whose inputs stay in the L2 cache. Within a block, every
//! stored weight row is dequantized once into a small f32 panel of [`PANEL_ROWS`] rows, and
//! each pair of tokens is multiplied with the whole panel at once: each weight load then
//! serves two tokens and each input load four rows, instead of one dot product (with its
//! dequantization and final sum) per row and token.

use super::MatRef;
use crate::tensor::QTensor;

/// Weight rows per panel (the micro-kernel's rows).
pub const PANEL_ROWS: usize = 4;
/// Input values per token block: 256 KiB of f32, well inside a core's L2 cache.
const BLOCK_VALUES: usize = 1 << 16;

/// `Y = X Wᵀ` for `n` row vectors: `x` is `n x w.cols`, `y` is `n x w.rows`, both row-major.
pub fn matmul_wt_blocked(w: &QTensor, x: &[f32], n: usize, y: &mut [f32]) {
    let (k, rows) = (w.cols, w.rows);
    assert_eq!(x.len(), n * k, "matmul_wt_blocked: input has {} values, needs {n}x{k}", x.len());
    assert_eq!(y.len(), n * rows, "matmul_wt_blocked: output has {} values, needs {n}x{rows}", y.len());
    if k == 0 {
        y.fill(0.0);
        return;
    }
    if n == 0 || rows == 0 {
        return;
    }
    let block = (BLOCK_VALUES / k.max(1)).max(8);
    // Rows past the end of W stay zero in the last panel; their results are dropped.
    let mut panel = vec![0.0f32; PANEL_ROWS * k];
    for t0 in (0..n).step_by(block) {
        let tn = block.min(n - t0);
        for r0 in (0..rows).step_by(PANEL_ROWS) {
            let rn = PANEL_ROWS.min(rows - r0);
            for (r, out) in panel.chunks_exact_mut(k).enumerate().take(rn) {
                w.dequantize_row(r0 + r, out);
            }
            if rn < PANEL_ROWS {
                panel[rn * k..].fill(0.0);
            }
            for t in (t0..t0 + tn).step_by(2) {
                // An odd last token is paired with itself; the copy is not stored.
                let pair = if t + 1 < t0 + tn { 2 } else { 1 };
                let x0 = &x[t * k..(t + 1) * k];
                let x1 = &x[(t + pair - 1) * k..(t + pair) * k];
                let sums = panel_dot_2(&panel, x0, x1);
                for (j, s) in sums.iter().enumerate().take(pair) {
                    y[(t + j) * rows + r0..][..rn].copy_from_slice(&s[..rn]);
                }
            }
        }
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`), `c` row-major `a.rows x b.cols`: the rows
/// of `a` and the columns of `b` are copied into contiguous rows first (the operands of the
/// mixers' chunk products are small), then multiplied with the panel kernel. The caller has
/// checked the shapes and strides.
pub fn matmul_dot_form(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let mut rows_a = vec![0.0f32; m * k];
    for (i, row) in rows_a.chunks_exact_mut(k).enumerate() {
        row.iter_mut().enumerate().for_each(|(p, v)| *v = a.data[i * a.row_stride + p * a.col_stride]);
    }
    // Columns of b past n stay zero in the last panel; their results are dropped.
    let mut cols_b = vec![0.0f32; n.div_ceil(PANEL_ROWS) * PANEL_ROWS * k];
    for (j, col) in cols_b.chunks_exact_mut(k).take(n).enumerate() {
        col.iter_mut().enumerate().for_each(|(p, v)| *v = b.data[p * b.row_stride + j * b.col_stride]);
    }
    for (panel_index, panel) in cols_b.chunks_exact(PANEL_ROWS * k).enumerate() {
        let j0 = panel_index * PANEL_ROWS;
        let jn = PANEL_ROWS.min(n - j0);
        for i in (0..m).step_by(2) {
            let pair = if i + 1 < m { 2 } else { 1 };
            let sums = panel_dot_2(panel, &rows_a[i * k..(i + 1) * k], &rows_a[(i + pair - 1) * k..(i + pair) * k]);
            for (r, s) in sums.iter().enumerate().take(pair) {
                let out = &mut c[(i + r) * n + j0..][..jn];
                if accumulate {
                    out.iter_mut().zip(s).for_each(|(o, v)| *o += v);
                } else {
                    out.copy_from_slice(&s[..jn]);
                }
            }
        }
    }
}

/// The dot products of the [`PANEL_ROWS`] rows of `panel` (each `x0.len()` values) with
/// `x0` and with `x1`: `[row sums for x0, row sums for x1]`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub fn panel_dot_2(panel: &[f32], x0: &[f32], x1: &[f32]) -> [[f32; PANEL_ROWS]; 2] {
    use std::arch::wasm32::*;
    let k = x0.len();
    assert!(x1.len() == k && panel.len() == PANEL_ROWS * k, "panel_dot_2: lengths differ");
    let (p, a, b) = (panel.as_ptr(), x0.as_ptr(), x1.as_ptr());
    let mut acc = [[f32x4_splat(0.0); PANEL_ROWS]; 2];
    let whole = k / 4 * 4;
    let mut i = 0;
    while i < whole {
        // SAFETY: i + 4 <= k, and the panel holds PANEL_ROWS rows of k values.
        unsafe {
            let xa = v128_load(a.add(i) as *const v128);
            let xb = v128_load(b.add(i) as *const v128);
            for r in 0..PANEL_ROWS {
                let wv = v128_load(p.add(r * k + i) as *const v128);
                acc[0][r] = f32x4_add(acc[0][r], f32x4_mul(wv, xa));
                acc[1][r] = f32x4_add(acc[1][r], f32x4_mul(wv, xb));
            }
        }
        i += 4;
    }
    let hsum = |v: v128| {
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<2>(v))
            + (f32x4_extract_lane::<1>(v) + f32x4_extract_lane::<3>(v))
    };
    let mut out = [[0.0f32; PANEL_ROWS]; 2];
    for r in 0..PANEL_ROWS {
        let row = &panel[r * k..(r + 1) * k];
        out[0][r] = hsum(acc[0][r]) + tail_dot(&row[whole..], &x0[whole..]);
        out[1][r] = hsum(acc[1][r]) + tail_dot(&row[whole..], &x1[whole..]);
    }
    out
}

/// As the SIMD128 version, in plain Rust with the same four-lane order of sums.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
pub fn panel_dot_2(panel: &[f32], x0: &[f32], x1: &[f32]) -> [[f32; PANEL_ROWS]; 2] {
    let k = x0.len();
    assert!(x1.len() == k && panel.len() == PANEL_ROWS * k, "panel_dot_2: lengths differ");
    let whole = k / 4 * 4;
    let mut out = [[0.0f32; PANEL_ROWS]; 2];
    for r in 0..PANEL_ROWS {
        let row = &panel[r * k..(r + 1) * k];
        for (o, xs) in out.iter_mut().zip([x0, x1]) {
            let mut lanes = [0.0f32; 4];
            for (wc, xc) in row[..whole].chunks_exact(4).zip(xs[..whole].chunks_exact(4)) {
                for l in 0..4 {
                    lanes[l] += wc[l] * xc[l];
                }
            }
            o[r] = ((lanes[0] + lanes[2]) + (lanes[1] + lanes[3])) + tail_dot(&row[whole..], &xs[whole..]);
        }
    }
    out
}

/// The last `k % 4` products of a dot product.
fn tail_dot(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests;
