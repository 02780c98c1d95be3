//! Block (de)quantization of the GGML storage types: turning stored rows into f32, dot
//! products of stored rows with f32 vectors (without dequantizing into a buffer first),
//! and reference quantizers for the simple 32-value block types.
//!
//! Block layouts follow GGML exactly. "Legacy" types (`Q4_0` .. `Q8_0`) hold 32 values per
//! block with one f16 scale (and for `_1` types an f16 minimum); the K types hold 256 values
//! per super-block with small per-sub-block scales that are themselves quantized.

mod int8_row;
mod kquants;
mod legacy;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd_wasm;
#[cfg(target_arch = "x86_64")]
mod simd_x86;
mod types;

use crate::error::{Error, ErrorCode, Result};
use half::{bf16, f16};
pub use types::GgmlType;

use legacy::{quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1, quantize_q8_0};

/// Reads the little-endian f16 at `b[i..i + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn check_lengths(what: &str, ty: GgmlType, bytes: usize, values: usize) {
    // Callers get their lengths from a validated `QTensor`; a mismatch is a bug, not bad input.
    let fits = match ty {
        // Whole rows, each with its scale: the row count follows from the two lengths.
        GgmlType::I8Row => int8_row::rows_in(bytes, values).is_some(),
        _ => ty.bytes_for(values).ok() == Some(bytes),
    };
    assert!(fits, "{what}: {bytes} bytes of {} do not hold {values} values", ty.name());
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
        GgmlType::I8Row => int8_row::dequantize(bytes, out),
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
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::I8Row => unreachable!("handled above"),
            };
            for (o, b) in out.chunks_exact_mut(bs).zip(bytes.chunks_exact(bb)) {
                block_fn(b, o);
            }
        }
    }
}

/// A dot product of one stored row with an f32 vector: `(row bytes, x) -> sum(w_i * x_i)`.
/// It reads `min(row values, x.len())` values (whole blocks), never out of bounds.
pub type DotFn = fn(&[u8], &[f32]) -> f32;

/// An implementation of the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotKernel {
    /// Plain Rust, written so the compiler can vectorize it; runs everywhere.
    Portable,
    /// x86-64 AVX2 + FMA + F16C, chosen at run time when the CPU has them.
    Avx2,
    /// wasm32 SIMD128, compiled in when the build enables `simd128`.
    Simd128,
}

impl DotKernel {
    /// The fastest kernel this machine runs (detected once, then cached).
    pub fn best() -> DotKernel {
        static BEST: std::sync::OnceLock<DotKernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            [DotKernel::Avx2, DotKernel::Simd128].into_iter().find(|k| k.is_available()).unwrap_or(DotKernel::Portable)
        })
    }

    /// Whether this machine (and this build) can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            DotKernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => simd_x86::available(),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            DotKernel::Simd128 => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The kernel's dot product for `ty`, or `None` when the kernel cannot run here. Types a
    /// SIMD kernel has no code of its own for (Q2_K, Q3_K, Q5_K) get the portable function.
    pub fn dot_fn(self, ty: GgmlType) -> Option<DotFn> {
        if !self.is_available() {
            return None;
        }
        let simd: Option<DotFn> = match self {
            DotKernel::Portable => None,
            #[cfg(target_arch = "x86_64")]
            DotKernel::Avx2 => simd_x86::kernel(ty),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            DotKernel::Simd128 => simd_wasm::kernel(ty),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        Some(simd.unwrap_or_else(|| portable_dot_fn(ty)))
    }
}

/// The fastest dot product for `ty` on this machine. Fetch it once per matrix, not per row.
pub fn dot_fn(ty: GgmlType) -> DotFn {
    DotKernel::best().dot_fn(ty).unwrap_or_else(|| portable_dot_fn(ty))
}

/// Dot product of one stored row with `x` (the row's length in values), with the fastest
/// kernel this machine runs.
///
/// Panics if `row` does not hold exactly `x.len()` values of `ty` (a caller bug).
pub fn dot(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    check_lengths("dot", ty, row.len(), x.len());
    dot_fn(ty)(row, x)
}

/// The plain-Rust dot product for `ty`.
fn portable_dot_fn(ty: GgmlType) -> DotFn {
    match ty {
        GgmlType::F32 => dot_f32,
        GgmlType::F16 => dot_f16,
        GgmlType::BF16 => dot_bf16,
        GgmlType::Q4_0 => legacy::dot_q4_0,
        GgmlType::Q4_1 => legacy::dot_q4_1,
        GgmlType::Q5_0 => legacy::dot_q5_0,
        GgmlType::Q5_1 => legacy::dot_q5_1,
        GgmlType::Q8_0 => legacy::dot_q8_0,
        GgmlType::Q2K => kquants::dot_q2_k,
        GgmlType::Q3K => kquants::dot_q3_k,
        GgmlType::Q4K => kquants::dot_q4_k,
        GgmlType::Q5K => kquants::dot_q5_k,
        GgmlType::Q6K => kquants::dot_q6_k,
        GgmlType::I8Row => int8_row::dot,
    }
}

fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    dot_elementwise(row, x, 4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}
fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    dot_elementwise(row, x, 2, |c| f16::from_le_bytes([c[0], c[1]]).to_f32())
}
fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    dot_elementwise(row, x, 2, |c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
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
    let n = x.len().min(row.len() / width);
    let done = n / 8 * 8;
    let mut tail = 0.0f32;
    for (i, &xv) in x[..n].iter().enumerate().skip(done) {
        tail += read(&row[i * width..(i + 1) * width]) * xv;
    }
    sum_lanes(&lanes) + tail
}

/// Stores `values` as `ty`. Supported: F32, F16, BF16 (round to nearest even), the
/// reference quantizers for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and I8_ROW (the values form one
/// row). `values.len()` must be a multiple of the block size, and the values must be finite.
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
        GgmlType::I8Row => int8_row::quantize_row(values),
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
