//! A check the host can run on the real module: each dot-product kernel this build uses
//! (SIMD128 where compiled in) against float64 over the dequantized values, on fresh random
//! rows. Tests call it to cover the wasm-only code paths.

use crate::abi::{set_result, status};
use liger_core::quant::{dequantize, DotKernel};
use liger_core::tensor::GgmlType;
use liger_core::testing::random_quantized_row;

const TYPES: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
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
    GgmlType::I8Row,
];

/// Result: `{"kernel": name, "errors": {type: max relative error}}` over 16 rows of 512
/// values each, seeded by `seed`.
#[no_mangle]
pub extern "C" fn liger_self_test(seed: u32) -> i32 {
    status(|| {
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
                let x: Vec<f32> = random_quantized_row(GgmlType::F32, n, s + 50).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                let mut w = vec![0.0f32; n];
                dequantize(ty, &row, &mut w);
                let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let magnitude: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                worst = worst.max((dot(&row, &x) as f64 - want).abs() / magnitude.max(1e-30));
            }
            errors.insert(ty.name().to_string(), serde_json::json!(worst));
        }
        let result = serde_json::json!({ "kernel": format!("{kernel:?}"), "errors": errors });
        set_result(result.to_string().into_bytes());
        Ok(0)
    })
}
