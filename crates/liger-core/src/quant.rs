//! Block (de)quantization of the GGML storage types: turning stored rows into f32 and
//! dot products of stored rows with f32 vectors.

use crate::tensor::GgmlType;
use half::{bf16, f16};

/// Dequantizes `bytes` (a whole number of blocks of `ty`) into `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(ty.bytes_for(out.len()).ok(), Some(bytes.len()));
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
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for (v, &q) in o.iter_mut().zip(&b[2..34]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = d * (q & 0x0f) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
        other => panic!("dequantize: {} is not implemented", other.name()),
    }
}

/// Dot product of one stored row with `x` (same length as the row).
pub fn dot(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    // Dequantize block-sized pieces into a small stack buffer, then multiply.
    let block = ty.block_size().max(32);
    let block_bytes = ty.bytes_for(block).unwrap_or(0);
    let mut buf = [0.0f32; 256];
    let mut acc = 0.0f32;
    for (xs, bs) in x.chunks(block).zip(row.chunks(block_bytes)) {
        let n = xs.len();
        dequantize(ty, bs, &mut buf[..n]);
        acc += buf[..n].iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
    }
    acc
}
