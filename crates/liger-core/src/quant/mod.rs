//! Block (de)quantization of the GGML storage types: turning stored rows into f32, dot
//! products of stored rows with f32 vectors (without dequantizing into a buffer first),
//! and reference quantizers for the simple 32-value block types.
//!
//! Block layouts follow GGML exactly. "Legacy" types (`Q4_0` .. `Q8_0`) hold 32 values per
//! block with one f16 scale (and for `_1` types an f16 minimum); the K types hold 256 values
//! per super-block with small per-sub-block scales that are themselves quantized.

mod kquants;
mod legacy;

use crate::error::{Error, ErrorCode, Result};
use crate::tensor::GgmlType;
use half::{bf16, f16};

use legacy::{quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1, quantize_q8_0};

/// Reads the little-endian f16 at `b[i..i + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn check_lengths(what: &str, ty: GgmlType, bytes: usize, values: usize) {
    // Callers get their lengths from a validated `QTensor`; a mismatch is a bug, not bad input.
    assert!(
        ty.bytes_for(values).ok() == Some(bytes),
        "{what}: {bytes} bytes of {} do not hold {values} values",
        ty.name()
    );
}

/// Dequantizes `bytes` (a whole number of blocks of `ty`) into `out`.
///
/// Panics if `bytes` does not hold exactly `out.len()` values of `ty` (a caller bug: the
/// shapes of tensors read from files are validated when they are read).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    check_lengths("dequantize", ty, bytes.len(), out.len());
    let bs = ty.block_size();
    let bb = ty.block_bytes();
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            let block_fn: fn(&[u8], &mut [f32]) = match ty {
                GgmlType::Q4_0 => legacy::dequantize_q4_0,
                GgmlType::Q4_1 => legacy::dequantize_q4_1,
                GgmlType::Q5_0 => legacy::dequantize_q5_0,
                GgmlType::Q5_1 => legacy::dequantize_q5_1,
                GgmlType::Q8_0 => legacy::dequantize_q8_0,
                GgmlType::Q2K => kquants::dequantize_q2_k,
                GgmlType::Q3K => kquants::dequantize_q3_k,
                GgmlType::Q4K => kquants::dequantize_q4_k,
                GgmlType::Q5K => kquants::dequantize_q5_k,
                GgmlType::Q6K => kquants::dequantize_q6_k,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("handled above"),
            };
            for (o, b) in out.chunks_exact_mut(bs).zip(bytes.chunks_exact(bb)) {
                block_fn(b, o);
            }
        }
    }
}

/// Dot product of one stored row with `x` (the row's length in values).
///
/// Panics if `row` does not hold exactly `x.len()` values of `ty` (a caller bug).
pub fn dot(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    check_lengths("dot", ty, row.len(), x.len());
    match ty {
        GgmlType::F32 => dot_elementwise(row, x, 4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        GgmlType::F16 => dot_elementwise(row, x, 2, |c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        GgmlType::BF16 => dot_elementwise(row, x, 2, |c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        GgmlType::Q4_0 => legacy::dot_q4_0(row, x),
        GgmlType::Q4_1 => legacy::dot_q4_1(row, x),
        GgmlType::Q5_0 => legacy::dot_q5_0(row, x),
        GgmlType::Q5_1 => legacy::dot_q5_1(row, x),
        GgmlType::Q8_0 => legacy::dot_q8_0(row, x),
        GgmlType::Q2K => kquants::dot_q2_k(row, x),
        GgmlType::Q3K => kquants::dot_q3_k(row, x),
        GgmlType::Q4K => kquants::dot_q4_k(row, x),
        GgmlType::Q5K => kquants::dot_q5_k(row, x),
        GgmlType::Q6K => kquants::dot_q6_k(row, x),
    }
}

/// Sums a lane array pairwise (keeps rounding error low and the order fixed).
#[inline(always)]
pub(crate) fn sum_lanes<const N: usize>(lanes: &[f32; N]) -> f32 {
    let mut v = *lanes;
    let mut n = N;
    while n > 1 {
        let h = n / 2;
        for i in 0..h {
            v[i] += v[i + h];
        }
        if n % 2 == 1 {
            v[0] += v[n - 1];
        }
        n = h;
    }
    v[0]
}

/// Dot product for the plain float types, eight lanes wide.
fn dot_elementwise(row: &[u8], x: &[f32], width: usize, read: impl Fn(&[u8]) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8 * width).zip(x.chunks_exact(8));
    for (bytes, xs) in &mut chunks {
        for l in 0..8 {
            lanes[l] += read(&bytes[l * width..(l + 1) * width]) * xs[l];
        }
    }
    let done = x.len() / 8 * 8;
    let mut tail = 0.0f32;
    for (i, &xv) in x.iter().enumerate().skip(done) {
        tail += read(&row[i * width..(i + 1) * width]) * xv;
    }
    sum_lanes(&lanes) + tail
}

/// Stores `values` as `ty`. Supported: F32, F16, BF16 (round to nearest even) and the
/// reference quantizers for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. `values.len()` must be a multiple
/// of the block size, and the values must be finite.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    ty.bytes_for(values.len())?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "cannot quantize to {}: value {i} is {} (the weights must be finite)",
            ty.name(),
            values[i]
        )));
    }
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q4_0 => quantize_q4_0(values),
        GgmlType::Q4_1 => quantize_q4_1(values),
        GgmlType::Q5_0 => quantize_q5_0(values),
        GgmlType::Q5_1 => quantize_q5_1(values),
        GgmlType::Q8_0 => quantize_q8_0(values),
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            return Err(Error::new(
                ErrorCode::UnsupportedTensorType,
                format!(
                    "quantizing to {} is not supported; use F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0",
                    ty.name()
                ),
            ))
        }
    })
}
