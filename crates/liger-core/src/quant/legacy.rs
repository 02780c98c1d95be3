//! The 32-value block types.
//!
//! | type | bytes | layout                                   | value                 |
//! |------|-------|------------------------------------------|-----------------------|
//! | Q4_0 | 18    | d: f16, qs: [u8; 16]                     | d * (q - 8)           |
//! | Q4_1 | 20    | d: f16, m: f16, qs: [u8; 16]             | d * q + m             |
//! | Q5_0 | 22    | d: f16, qh: u32, qs: [u8; 16]            | d * (q - 16)          |
//! | Q5_1 | 24    | d: f16, m: f16, qh: u32, qs: [u8; 16]    | d * q + m             |
//! | Q8_0 | 34    | d: f16, qs: [i8; 32]                     | d * q                 |
//!
//! In the 4- and 5-bit types, byte `qs[j]` holds value `j` in its low nibble and value
//! `j + 16` in its high nibble; for 5 bits, bit `i` of `qh` is the fifth bit of value `i`.

use super::{f16_at, sum_lanes};
use half::f16;

const QK: usize = 32;

/// The 4-bit codes of values `j` and `j + 16` (`j < 16`).
#[inline(always)]
fn nibbles(qs: &[u8], j: usize) -> (u8, u8) {
    (qs[j] & 0x0f, qs[j] >> 4)
}

/// The 5-bit codes of values `j` and `j + 16`.
#[inline(always)]
fn codes5(qh: u32, qs: &[u8], j: usize) -> (u8, u8) {
    let (lo, hi) = nibbles(qs, j);
    let b0 = ((qh >> j) & 1) as u8;
    let b1 = ((qh >> (j + 16)) & 1) as u8;
    (lo | (b0 << 4), hi | (b1 << 4))
}

fn qh_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

pub(super) fn dequantize_q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let (lo, hi) = nibbles(&b[2..], j);
        out[j] = d * (lo as i32 - 8) as f32;
        out[j + 16] = d * (hi as i32 - 8) as f32;
    }
}

pub(super) fn dequantize_q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let (lo, hi) = nibbles(&b[4..], j);
        out[j] = d * lo as f32 + m;
        out[j + 16] = d * hi as f32 + m;
    }
}

pub(super) fn dequantize_q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = qh_at(b, 2);
    for j in 0..16 {
        let (lo, hi) = codes5(qh, &b[6..], j);
        out[j] = d * (lo as i32 - 16) as f32;
        out[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

pub(super) fn dequantize_q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = qh_at(b, 4);
    for j in 0..16 {
        let (lo, hi) = codes5(qh, &b[8..], j);
        out[j] = d * lo as f32 + m;
        out[j + 16] = d * hi as f32 + m;
    }
}

pub(super) fn dequantize_q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

// Dot products. Each keeps 16 or 32 independent f32 lanes across blocks so the compiler can
// vectorize, and applies a block's scale to the block's integer-code products; for the `_1`
// types `sum(d*q*x + m*x)` is computed as `d*sum(q*x) + m*sum(x)` per lane.

pub(super) fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xs) in row.chunks_exact(18).zip(x.chunks_exact(QK)) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            let (lo, hi) = nibbles(qs, j);
            acc[j] += d * ((lo as i32 - 8) as f32 * xs[j] + (hi as i32 - 8) as f32 * xs[j + 16]);
        }
    }
    sum_lanes(&acc)
}

pub(super) fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qs = &b[4..20];
        for j in 0..16 {
            let (lo, hi) = nibbles(qs, j);
            let (x0, x1) = (xs[j], xs[j + 16]);
            acc[j] += d * (lo as f32 * x0 + hi as f32 * x1) + m * (x0 + x1);
        }
    }
    sum_lanes(&acc)
}

pub(super) fn dot_q5_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xs) in row.chunks_exact(22).zip(x.chunks_exact(QK)) {
        let d = f16_at(b, 0);
        let qh = qh_at(b, 2);
        for j in 0..16 {
            let (lo, hi) = codes5(qh, &b[6..22], j);
            acc[j] += d * ((lo as i32 - 16) as f32 * xs[j] + (hi as i32 - 16) as f32 * xs[j + 16]);
        }
    }
    sum_lanes(&acc)
}

pub(super) fn dot_q5_1(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xs) in row.chunks_exact(24).zip(x.chunks_exact(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qh = qh_at(b, 4);
        for j in 0..16 {
            let (lo, hi) = codes5(qh, &b[8..24], j);
            let (x0, x1) = (xs[j], xs[j + 16]);
            acc[j] += d * (lo as f32 * x0 + hi as f32 * x1) + m * (x0 + x1);
        }
    }
    sum_lanes(&acc)
}

pub(super) fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(QK)) {
        let d = f16_at(b, 0);
        let qs = &b[2..34];
        for j in 0..32 {
            acc[j] += d * ((qs[j] as i8) as f32 * xs[j]);
        }
    }
    sum_lanes(&acc)
}

// Reference quantizers (GGML's round-to-nearest schemes). `values.len()` is a multiple of 32
// and every value is finite (checked by `quantize`).

/// The value of largest magnitude, with its sign.
fn signed_absmax(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |best, &v| if v.abs() > best.abs() { v } else { best })
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q8_0: `d = max|x| / 127`, codes rounded to nearest.
pub(crate) fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * 34);
    for xs in values.chunks_exact(QK) {
        let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse(d);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(xs.iter().map(|&v| ((v * id).round() as i8) as u8));
    }
    out
}

/// Packs 32 codes of 4 bits (value `j` low nibble, `j + 16` high nibble of byte `j`).
fn pack_nibbles(out: &mut Vec<u8>, codes: &[u8; 32]) {
    out.extend((0..16).map(|j| (codes[j] & 0x0f) | ((codes[j + 16] & 0x0f) << 4)));
}

/// The fifth bits of 32 codes as GGML's `qh` word.
fn fifth_bits(codes: &[u8; 32]) -> [u8; 4] {
    let qh = codes.iter().enumerate().fold(0u32, |qh, (i, &c)| qh | (((c >> 4) & 1) as u32) << i);
    qh.to_le_bytes()
}

/// Symmetric codes `q = clamp(trunc(x / d + offset + 0.5), 0, top)` with `d = absmax / -offset`,
/// so the value of largest magnitude maps exactly to code 0.
fn symmetric_codes(xs: &[f32], offset: f32, top: u8) -> (f32, [u8; 32]) {
    let d = signed_absmax(xs) / -offset;
    let id = inverse(d);
    let mut codes = [0u8; 32];
    for (c, &v) in codes.iter_mut().zip(xs) {
        // `as u8` truncates toward zero and saturates; the argument is >= 0.5 here.
        *c = ((v * id + offset + 0.5) as u8).min(top);
    }
    (d, codes)
}

/// Asymmetric codes `q = clamp(round((x - min) / d), 0, top)` with `d = (max - min) / top`.
fn asymmetric_codes(xs: &[f32], top: u8) -> (f32, f32, [u8; 32]) {
    let min = xs.iter().fold(f32::INFINITY, |a, &v| a.min(v));
    let max = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let mut codes = [0u8; 32];
    for (c, &v) in codes.iter_mut().zip(xs) {
        *c = (((v - min) * id + 0.5) as u8).min(top);
    }
    (d, min, codes)
}

pub(crate) fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * 18);
    for xs in values.chunks_exact(QK) {
        let (d, codes) = symmetric_codes(xs, 8.0, 15);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        pack_nibbles(&mut out, &codes);
    }
    out
}

pub(crate) fn quantize_q4_1(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * 20);
    for xs in values.chunks_exact(QK) {
        let (d, m, codes) = asymmetric_codes(xs, 15);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        pack_nibbles(&mut out, &codes);
    }
    out
}

pub(crate) fn quantize_q5_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * 22);
    for xs in values.chunks_exact(QK) {
        let (d, codes) = symmetric_codes(xs, 16.0, 31);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&fifth_bits(&codes));
        pack_nibbles(&mut out, &codes);
    }
    out
}

pub(crate) fn quantize_q5_1(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * 24);
    for xs in values.chunks_exact(QK) {
        let (d, m, codes) = asymmetric_codes(xs, 31);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        out.extend_from_slice(&fifth_bits(&codes));
        pack_nibbles(&mut out, &codes);
    }
    out
}
