//! A check the host can run on the real module: each dot-product kernel this build uses
//! (SIMD128 where compiled in) against float64 over the dequantized values, on fresh random
//! rows. Tests call it to cover the wasm-only code paths.

use liger_core::linalg::matmul_wt;
use liger_core::quant::{dequantize, DotKernel};
use liger_core::tensor::{ByteView, GgmlType, QTensor};
use liger_core::testing::random_quantized_row;
use wasm_bindgen::prelude::*;

const TYPES: [GgmlType; 14] = GgmlType::ALL;

/// `{"kernel": name, "errors": {type: max relative error}}` as JSON, over 16 rows of 512
/// values each, seeded by `seed`.
#[wasm_bindgen(js_name = selfTest)]
pub fn self_test(seed: u32) -> String {
    let kernel = DotKernel::best();
    let mut errors = serde_json::Map::new();
    for (t, ty) in TYPES.into_iter().enumerate() {
        let n = 512;
        let dot = kernel.dot_fn(ty).expect("the best kernel is available");
        // Error relative to sum |w_i x_i|: the scale rounding in f32 accumulation is judged by.
        let mut worst = 0.0f64;
        for r in 0..16u64 {
            let s = seed as u64 * 1000 + t as u64 * 100 + r;
            let row = random_quantized_row(ty, n, s);
            let x: Vec<f32> = random_quantized_row(GgmlType::F32, n, s + 50)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut w = vec![0.0f32; n];
            dequantize(ty, &row, &mut w);
            let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let magnitude: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            worst = worst.max((dot(&row, &x) as f64 - want).abs() / magnitude.max(1e-30));
        }
        errors.insert(ty.name().to_string(), serde_json::json!(worst));
    }
    errors.insert("matmul_wt".into(), serde_json::json!(matmul_error(seed as u64)));
    serde_json::json!({ "kernel": format!("{kernel:?}"), "errors": errors }).to_string()
}

/// `Y = X Wᵀ` (the prefill's matrix product) for int8 and 4-bit weights against float64:
/// the largest error relative to the largest |y|.
fn matmul_error(seed: u64) -> f64 {
    let (rows, cols, n) = (48, 512, 5);
    let mut worst = 0.0f64;
    for (i, ty) in [GgmlType::I8Row, GgmlType::Q4_0, GgmlType::F32].into_iter().enumerate() {
        let bytes: Vec<u8> =
            (0..rows).flat_map(|r| random_quantized_row(ty, cols, seed * 7919 + (i * rows + r) as u64)).collect();
        let w = QTensor::new(ty, rows, cols, ByteView::from_vec(bytes)).expect("valid shape");
        let x: Vec<f32> = random_quantized_row(GgmlType::F32, n * cols, seed + 17)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut y = vec![f32::NAN; n * rows];
        matmul_wt(&w, &x, n, &mut y);
        let wf = w.to_f32();
        let want: Vec<f64> = (0..n * rows)
            .map(|k| {
                let (t, r) = (k / rows, k % rows);
                (0..cols).map(|j| wf[r * cols + j] as f64 * x[t * cols + j] as f64).sum()
            })
            .collect();
        let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        // A NaN left in y (an output never written) counts as an infinite error.
        let err = y
            .iter()
            .zip(&want)
            .map(|(&a, &b)| if a.is_nan() { f64::INFINITY } else { (a as f64 - b).abs() })
            .fold(0.0, f64::max);
        worst = worst.max(err / scale);
    }
    worst
}
