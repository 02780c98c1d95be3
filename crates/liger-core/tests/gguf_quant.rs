//! Dequantization against gguf-py, fused dot products against f64, quantizer round trips.

mod gguf_common;

use gguf_common::{open_fixture, random_values};
use liger_core::quant::{dequantize, dot, quantize};
use liger_core::{ErrorCode, GgmlType};

const ALL_TYPES: [GgmlType; 13] = GgmlType::GGML_TYPES;

/// Exact equality: gguf-py computes each value with the same single-rounding f32 operations
/// in the same order as we do (`d * q + m`, `(d * sc) * q - dmin * m`, ...), and neither side
/// fuses multiply-adds, so the results must be bit-identical (0 ulp).
#[test]
fn dequantize_matches_gguf_py_exactly() {
    let f = open_fixture("quant-oracle-v1.gguf");
    for ty in ALL_TYPES {
        let raw = f.tensor(&format!("{}.raw", ty.name())).unwrap();
        assert_eq!(raw.ty, ty, "fixture tensor {}.raw has the wrong type", ty.name());
        let expected = f.tensor_f32(&format!("{}.expected", ty.name())).unwrap();
        let mut got = vec![f32::NAN; raw.numel()];
        dequantize(ty, raw.data.as_slice(), &mut got);
        assert_eq!(got.len(), expected.len());
        let mismatches: Vec<usize> = (0..got.len()).filter(|&i| got[i] != expected[i]).collect();
        assert!(
            mismatches.is_empty(),
            "{}: {} of {} values differ, first at {}: got {} expected {}",
            ty.name(),
            mismatches.len(),
            got.len(),
            mismatches[0],
            got[mismatches[0]],
            expected[mismatches[0]]
        );
        // Row by row through QTensor gives the same values.
        let mut row = vec![0.0f32; raw.cols];
        raw.dequantize_row(1, &mut row);
        assert_eq!(row, expected[raw.cols..2 * raw.cols]);
        eprintln!("{:>5}: {} values identical to gguf-py", ty.name(), got.len());
    }
}

/// The fused dot product against an f64 dot of the dequantized row. The error is measured
/// relative to `sum |w_i x_i|`, the scale f32 rounding errors are proportional to (relative
/// to the result itself, cancellation could make any bound meaningless).
#[test]
fn dot_matches_f64_reference() {
    let f = open_fixture("quant-oracle-v1.gguf");
    for (seed, ty) in ALL_TYPES.into_iter().enumerate() {
        let raw = f.tensor(&format!("{}.raw", ty.name())).unwrap();
        let mut worst = 0.0f64;
        for r in 0..raw.rows {
            let x = random_values(seed as u64 * 100 + r as u64, raw.cols, 1.0);
            let mut w = vec![0.0f32; raw.cols];
            raw.dequantize_row(r, &mut w);
            let reference: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let scale: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let got = dot(ty, raw.row(r), &x) as f64;
            assert!(scale > 0.0, "{}: row {r} is all zeros; the fixture should be random", ty.name());
            worst = worst.max((got - reference).abs() / scale);
        }
        eprintln!("{:>5}: dot max relative error {worst:.2e}", ty.name());
        assert!(worst < 1e-5, "{}: dot relative error {worst:e}", ty.name());
    }
}

/// Longer rows (4096 values) of random blocks, for accumulation error over many blocks.
#[test]
fn dot_on_long_rows() {
    for (seed, ty) in ALL_TYPES.into_iter().enumerate() {
        let n = 4096;
        let bytes = ty.bytes_for(n).unwrap();
        let row = random_row(ty, n, seed as u64);
        assert_eq!(row.len(), bytes);
        let x = random_values(1000 + seed as u64, n, 1.0);
        let mut w = vec![0.0f32; n];
        dequantize(ty, &row, &mut w);
        let reference: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        let err = (dot(ty, &row, &x) as f64 - reference).abs() / scale;
        eprintln!("{:>5}: 4096-value dot relative error {err:.2e}", ty.name());
        assert!(err < 1e-5, "{}: relative error {err:e}", ty.name());
    }
}

/// A row of random blocks whose f16 scales are sane (random bytes elsewhere).
fn random_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut row: Vec<u8> = (0..ty.bytes_for(n).unwrap()).map(|_| rng.random()).collect();
    let f16_fields: &[usize] = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::I8Row => {
            let values = random_values(seed, n, 2.0);
            return quantize(ty, &values).unwrap();
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
    };
    for block in row.chunks_exact_mut(ty.block_bytes()) {
        for &off in f16_fields {
            let v = (rng.random::<f32>() * 0.1 + 1e-3) * if rng.random::<bool>() { 1.0 } else { -1.0 };
            block[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    row
}

/// Quantize -> dequantize stays within half a step (a full step for the symmetric types,
/// whose top code is clamped: GGML maps the largest magnitude to code 0, so values of the
/// other sign near that magnitude round one step short), plus the f16 rounding of the scale
/// (times the largest code) and of the minimum. f16 rounding is relative 2^-11 for normal
/// numbers but absolute 2^-25 for subnormals (scales of tiny weights are subnormal).
#[test]
fn quantizers_round_trip_within_bounds() {
    let cases = [
        (GgmlType::Q8_0, 0.5f32, 127.0f32, 0usize),
        (GgmlType::Q4_0, 1.0, 8.0, 0),
        (GgmlType::Q4_1, 0.5, 15.0, 2),
        (GgmlType::Q5_0, 1.0, 16.0, 0),
        (GgmlType::Q5_1, 0.5, 31.0, 2),
    ];
    for (seed, &(ty, steps, max_code, m_at)) in cases.iter().enumerate() {
        for scale in [1e-3f32, 1.0, 300.0] {
            let mut values = random_values(seed as u64 * 7 + scale as u64, 64 * 32, scale);
            values[5] = 0.0; // exact zeros and a constant block are edge cases
            values[32..64].fill(0.25 * scale);
            let bytes = quantize(ty, &values).unwrap();
            let mut back = vec![0.0f32; values.len()];
            dequantize(ty, &bytes, &mut back);
            let mut worst_ratio = 0.0f32;
            let mut sum_sq_err = 0.0f64;
            for (b, block) in bytes.chunks_exact(ty.block_bytes()).enumerate() {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32().abs();
                let m = if m_at > 0 {
                    half::f16::from_le_bytes([block[m_at], block[m_at + 1]]).to_f32().abs()
                } else {
                    0.0
                };
                let f16_err = |v: f32| (v * 2f32.powi(-11)).max(2f32.powi(-25));
                let bound = d * steps + max_code * f16_err(d) + f16_err(m);
                for i in b * 32..(b + 1) * 32 {
                    let err = (values[i] - back[i]).abs();
                    sum_sq_err += (err as f64).powi(2);
                    worst_ratio = worst_ratio.max(err / bound);
                    assert!(
                        err <= bound,
                        "{} scale {scale}: value {i} = {} came back as {} (bound {bound})",
                        ty.name(),
                        values[i],
                        back[i]
                    );
                }
            }
            let rms_signal = (values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
            let rel_rms = (sum_sq_err / values.len() as f64).sqrt() / rms_signal;
            eprintln!(
                "{:>5} scale {scale:>6}: worst error / bound {worst_ratio:.3}, relative RMS error {rel_rms:.2e}",
                ty.name()
            );
        }
    }
}

#[test]
fn float_types_quantize_by_rounding_to_nearest() {
    let values = random_values(42, 96, 3.0);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let bytes = quantize(ty, &values).unwrap();
        let mut back = vec![0.0f32; values.len()];
        dequantize(ty, &bytes, &mut back);
        let tolerance = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 2f32.powi(-11),
            _ => 2f32.powi(-8),
        };
        for (v, b) in values.iter().zip(&back) {
            assert!((v - b).abs() <= v.abs() * tolerance, "{}: {v} came back as {b}", ty.name());
        }
    }
}

#[test]
fn quantize_rejects_bad_input() {
    assert_eq!(quantize(GgmlType::Q8_0, &[1.0; 33]).unwrap_err().code, ErrorCode::ShapeMismatch);
    let mut values = vec![1.0f32; 32];
    values[7] = f32::NAN;
    let e = quantize(GgmlType::Q4_0, &values).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("value 7"), "{e}");
    values[7] = f32::INFINITY;
    assert_eq!(quantize(GgmlType::F16, &values).unwrap_err().code, ErrorCode::InvalidArgument);
    let e = quantize(GgmlType::Q4K, &[0.5; 256]).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedTensorType);
    assert!(e.message.contains("Q4_K"), "{e}");
}

#[test]
fn unknown_type_ids_are_typed_errors() {
    for id in [4u32, 5, 9, 15, 16, 29, 31, 1000] {
        let e = GgmlType::from_id(id).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedTensorType);
        assert!(e.message.contains(&id.to_string()));
    }
    for ty in ALL_TYPES {
        assert_eq!(GgmlType::from_id(ty.id()).unwrap(), ty);
    }
}
