//! `matvec` (split into rayon tasks of whole rows) against an f64 reference, for matrices
//! from one row to more rows than one task takes.

use liger_core::linalg::{matmul_wt, matvec};
use liger_core::tensor::ByteView;
use liger_core::testing::random_quantized_row;
use liger_core::{GgmlType, QTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QTensor {
    let bytes = random_quantized_row(ty, rows * cols, seed);
    QTensor::new(ty, rows, cols, ByteView::from_vec(bytes)).unwrap()
}

/// Worst `|y_i - exact_i| / sum_j |w_ij x_j|` over the rows.
fn worst_row_error(w: &QTensor, x: &[f32], y: &[f32]) -> f64 {
    let mut row = vec![0.0f32; w.cols];
    let mut worst = 0.0f64;
    for (r, &got) in y.iter().enumerate() {
        w.dequantize_row(r, &mut row);
        let exact: f64 = row.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = row.iter().zip(x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        worst = worst.max((got as f64 - exact).abs() / scale);
    }
    worst
}

#[test]
fn matvec_matches_f64_reference_for_all_shapes() {
    let shapes = [(1, 256), (7, 512), (192, 768), (600, 512), (3000, 256)];
    for (s, &(rows, cols)) in shapes.iter().enumerate() {
        for (t, ty) in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q6K].into_iter().enumerate() {
            let seed = (s * 10 + t) as u64;
            let w = random_matrix(ty, rows, cols, seed);
            let mut rng = StdRng::seed_from_u64(seed + 100);
            let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut y = vec![f32::NAN; rows];
            matvec(&w, &x, &mut y);
            let worst = worst_row_error(&w, &x, &y);
            eprintln!("{:>5} {rows}x{cols}: max error / sum|w x| = {worst:.2e}", ty.name());
            assert!(worst < 1e-5, "{} {rows}x{cols}: error {worst:e}", ty.name());
            // One row vector through matmul_wt takes the same path.
            let mut y1 = vec![f32::NAN; rows];
            matmul_wt(&w, &x, 1, &mut y1);
            assert_eq!(y, y1);
        }
    }
}
