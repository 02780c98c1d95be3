//! The blocked product against a float64 reference over the dequantized weights, on fresh
//! random inputs, for every stored weight type and for shapes with ragged edges.

use super::{matmul_wt_blocked, panel_dot_2, PANEL_ROWS};
use crate::linalg::matvec;
use crate::tensor::{ByteView, GgmlType, QTensor};
use crate::testing::{max_rel_error, random_quantized_row};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seed from the clock (printed, so a failure can be replayed).
fn fresh_seed() -> u64 {
    let seed = std::env::var("LIGER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("seed {seed} (set LIGER_TEST_SEED to replay)");
    seed
}

fn random_tensor(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QTensor {
    let bytes: Vec<u8> = (0..rows).flat_map(|r| random_quantized_row(ty, cols, seed.wrapping_add(r as u64))).collect();
    QTensor::new(ty, rows, cols, ByteView::from_vec(bytes)).expect("shape matches")
}

/// `Y = X Wᵀ` in float64 over the dequantized rows of `w`.
fn reference(w: &QTensor, x: &[f32], n: usize) -> Vec<f64> {
    let wf = w.to_f32();
    let k = w.cols;
    let mut y = vec![0.0f64; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            y[t * w.rows + r] = (0..k).map(|i| wf[r * k + i] as f64 * x[t * k + i] as f64).sum();
        }
    }
    y
}

const ALL_TYPES: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::I8Row,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

#[test]
fn blocked_product_matches_float64_for_every_type() {
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for ty in ALL_TYPES {
        // Columns a whole number of blocks (256 covers the K types); for the float types and
        // I8_ROW also a count that is not a multiple of 4. Rows and tokens with ragged ends.
        let mut col_options = vec![256usize, 512];
        if ty.block_size() == 1 || ty == GgmlType::I8Row {
            col_options.push(37);
        }
        for cols in col_options {
            let rows = rng.random_range(1..3 * PANEL_ROWS + 2);
            let n = rng.random_range(2..12);
            let w = random_tensor(ty, rows, cols, rng.random());
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut y = vec![f32::NAN; n * rows];
            matmul_wt_blocked(&w, &x, n, &mut y);
            let err = max_rel_error(&y, &reference(&w, &x, n));
            println!("{} {rows}x{cols}, {n} tokens: max rel error {err:.2e}", ty.name());
            assert!(err < 1e-4, "{}: max rel error {err} ({rows}x{cols}, {n} tokens)", ty.name());
        }
    }
}

#[test]
fn blocked_product_spans_several_token_blocks() {
    // More tokens than one block holds (65536 / 4096 = 16 per block), an odd count.
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (rows, cols, n) = (6, 4096, 37);
    for ty in [GgmlType::I8Row, GgmlType::Q4_0, GgmlType::F32] {
        let w = random_tensor(ty, rows, cols, rng.random());
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![f32::NAN; n * rows];
        matmul_wt_blocked(&w, &x, n, &mut y);
        let err = max_rel_error(&y, &reference(&w, &x, n));
        println!("{} {rows}x{cols}, {n} tokens: max rel error {err:.2e}", ty.name());
        assert!(err < 1e-4, "{}: max rel error {err}", ty.name());
        // And token by token through the single-vector product, as decoding runs it.
        for t in 0..n {
            let mut yt = vec![0.0f32; rows];
            matvec(&w, &x[t * cols..(t + 1) * cols], &mut yt);
            let as_f64: Vec<f64> = yt.iter().map(|&v| v as f64).collect();
            let err = max_rel_error(&y[t * rows..(t + 1) * rows], &as_f64);
            assert!(err < 1e-4, "{}: token {t} differs from matvec by {err}", ty.name());
        }
    }
}

#[test]
fn panel_kernel_matches_float64() {
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for k in [1, 3, 4, 64, 577] {
        let panel: Vec<f32> = (0..PANEL_ROWS * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x0: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x1: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let got = panel_dot_2(&panel, &x0, &x1);
        for (j, xs) in [&x0, &x1].into_iter().enumerate() {
            let want: Vec<f64> =
                (0..PANEL_ROWS).map(|r| (0..k).map(|i| panel[r * k + i] as f64 * xs[i] as f64).sum()).collect();
            let err = max_rel_error(&got[j], &want);
            assert!(err < 1e-4, "k = {k}, input {j}: max rel error {err}");
        }
    }
}

#[test]
fn dot_form_product_matches_float64_with_any_strides() {
    use super::matmul_dot_form;
    use crate::linalg::MatRef;
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..20 {
        let (m, n, k) = (rng.random_range(1..9), rng.random_range(1..11), rng.random_range(1..70));
        let a_data: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let b_data: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        // Each operand stored either way round: row-major, or transposed and viewed back.
        let a = if rng.random() { MatRef::new(&a_data, m, k) } else { MatRef::new(&a_data, k, m).t() };
        let b = if rng.random() { MatRef::new(&b_data, k, n) } else { MatRef::new(&b_data, n, k).t() };
        let at = |i: usize, p: usize| a.data[i * a.row_stride + p * a.col_stride] as f64;
        let bt = |p: usize, j: usize| b.data[p * b.row_stride + j * b.col_stride] as f64;
        let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for accumulate in [false, true] {
            let want: Vec<f64> = (0..m * n)
                .map(|idx| {
                    let (i, j) = (idx / n, idx % n);
                    let base = if accumulate { c0[idx] as f64 } else { 0.0 };
                    base + (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>()
                })
                .collect();
            let mut c = c0.clone();
            matmul_dot_form(a, b, &mut c, accumulate);
            let err = max_rel_error(&c, &want);
            assert!(err < 1e-4, "{m}x{k} · {k}x{n}, accumulate {accumulate}: max rel error {err}");
        }
    }
}
