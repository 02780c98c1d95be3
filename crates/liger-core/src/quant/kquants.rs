//! The K types: super-blocks of 256 values split into groups (16 groups of 16 values, or
//! 8 groups of 32), each group with its own quantized scale (and minimum).
//!
//! | type | bytes | layout                                                        | value             |
//! |------|-------|---------------------------------------------------------------|-------------------|
//! | Q2_K | 84    | scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16             | d*sc*q - dmin*m   |
//! | Q3_K | 110   | hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16       | d*(sc-32)*q       |
//! | Q4_K | 144   | d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]            | d*sc*q - dmin*m   |
//! | Q5_K | 176   | d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] | d*sc*q - dmin*m |
//! | Q6_K | 210   | ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16         | d*sc*(q-32)       |
//!
//! Each type below has one function that unpacks the integer codes and the f32 scale (and
//! minimum) of one group; dequantization and the dot product are both built on it, so the
//! bit layout is written down once.

use super::{f16_at, sum_lanes};

/// One group's f32 scale and minimum (`value = scale * code - min`), computed exactly as
/// GGML does: `d * sc` and `dmin * m` in f32.
struct Group {
    scale: f32,
    min: f32,
}

// ---- Q2_K: 16 groups of 16; 2-bit codes, 4-bit scale and minimum per group.

fn q2_k_group(b: &[u8], g: usize, codes: &mut [f32; 16]) -> Group {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let sc = b[g];
    // Group g = half * 8 + shift_index * 2 + part: 32 bytes per half, shifted by 2 bits each.
    let (half, shift, part) = (g / 8, 2 * ((g % 8) / 2), g % 2);
    let qs = &b[16 + half * 32 + part * 16..][..16];
    for (c, &q) in codes.iter_mut().zip(qs) {
        *c = ((q >> shift) & 3) as f32;
    }
    Group { scale: d * (sc & 0x0f) as f32, min: dmin * (sc >> 4) as f32 }
}

// ---- Q3_K: 16 groups of 16; 2 low bits in qs, the third bit in hmask (a cleared bit means
// "subtract 4"), 6-bit signed scales (offset 32) packed into 12 bytes.

/// The 6-bit scale of group `g` (0..16): low 4 bits from a nibble of bytes 0..8, high
/// 2 bits from bytes 8..12.
fn q3_k_scale(scales: &[u8], g: usize) -> i32 {
    let low = if g < 8 { scales[g] & 0x0f } else { scales[g - 8] >> 4 };
    let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

fn q3_k_group(b: &[u8], g: usize, codes: &mut [f32; 16]) -> Group {
    let d = f16_at(b, 108);
    let (half, j, part) = (g / 8, (g % 8) / 2, g % 2);
    let hmask = &b[part * 16..][..16];
    let qs = &b[32 + half * 32 + part * 16..][..16];
    let bit = half * 4 + j;
    for l in 0..16 {
        let low = ((qs[l] >> (2 * j)) & 3) as i32;
        let sub = if (hmask[l] >> bit) & 1 == 1 { 0 } else { 4 };
        codes[l] = (low - sub) as f32;
    }
    Group { scale: d * q3_k_scale(&b[96..108], g) as f32, min: 0.0 }
}

// ---- Q4_K and Q5_K: 8 groups of 32; 6-bit scales and minimums packed into 12 bytes.

/// The 6-bit scale and minimum of group `g` (0..8).
pub(super) fn k4_scale_min(scales: &[u8], g: usize) -> (u8, u8) {
    if g < 4 {
        (scales[g] & 63, scales[g + 4] & 63)
    } else {
        let sc = (scales[g + 4] & 0x0f) | ((scales[g - 4] >> 6) << 4);
        let m = (scales[g + 4] >> 4) | ((scales[g] >> 6) << 4);
        (sc, m)
    }
}

fn k4_group(b: &[u8], g: usize) -> Group {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, m) = k4_scale_min(&b[4..16], g);
    Group { scale: d * sc as f32, min: dmin * m as f32 }
}

fn q4_k_group(b: &[u8], g: usize, codes: &mut [f32; 32]) -> Group {
    // Groups 2c and 2c+1 share the 32 bytes of chunk c: low nibbles, then high nibbles.
    let qs = &b[16 + (g / 2) * 32..][..32];
    let shift = 4 * (g % 2);
    for (c, &q) in codes.iter_mut().zip(qs) {
        *c = ((q >> shift) & 0x0f) as f32;
    }
    k4_group(b, g)
}

fn q5_k_group(b: &[u8], g: usize, codes: &mut [f32; 32]) -> Group {
    let qh = &b[16..48];
    let qs = &b[48 + (g / 2) * 32..][..32];
    let shift = 4 * (g % 2);
    for l in 0..32 {
        let low = (qs[l] >> shift) & 0x0f;
        let high = (qh[l] >> g) & 1;
        codes[l] = (low | (high << 4)) as f32;
    }
    k4_group(b, g)
}

// ---- Q6_K: 16 groups of 16; 4 low bits in ql, 2 high bits in qh, signed 8-bit scales.

fn q6_k_group(b: &[u8], g: usize, codes: &mut [f32; 16]) -> Group {
    let d = f16_at(b, 208);
    let sc = b[192 + g] as i8;
    // Per half of 128 values: 64 bytes of ql, 32 of qh. Quarter k of the half takes the
    // low (k < 2) or high nibble of ql[l + 32 * (k % 2)] and bits 2k..2k+2 of qh[l].
    let (half, k, l0) = (g / 8, (g % 8) / 2, (g % 2) * 16);
    let ql = &b[half * 64 + (k % 2) * 32 + l0..][..16];
    let qh = &b[128 + half * 32 + l0..][..16];
    let nibble_shift = 4 * (k / 2);
    for l in 0..16 {
        let low = (ql[l] >> nibble_shift) & 0x0f;
        let high = (qh[l] >> (2 * k)) & 3;
        codes[l] = ((low | (high << 4)) as i32 - 32) as f32;
    }
    Group { scale: d * sc as f32, min: 0.0 }
}

// ---- Dequantization and dot products built on the group unpackers.

type Unpack<const N: usize> = fn(&[u8], usize, &mut [f32; N]) -> Group;

#[inline(always)]
fn dequantize_groups<const N: usize>(b: &[u8], out: &mut [f32], unpack: Unpack<N>, has_min: bool) {
    let mut codes = [0.0f32; N];
    for (g, o) in out.chunks_exact_mut(N).enumerate() {
        let Group { scale, min } = unpack(b, g, &mut codes);
        if has_min {
            for (v, &c) in o.iter_mut().zip(&codes) {
                *v = scale * c - min;
            }
        } else {
            for (v, &c) in o.iter_mut().zip(&codes) {
                *v = scale * c;
            }
        }
    }
}

/// `sum(scale * code * x - min * x)` over all groups, in `N` independent lanes.
#[inline(always)]
fn dot_groups<const N: usize>(row: &[u8], block_bytes: usize, x: &[f32], unpack: Unpack<N>, has_min: bool) -> f32 {
    let mut acc = [0.0f32; N];
    let mut codes = [0.0f32; N];
    for (b, xb) in row.chunks_exact(block_bytes).zip(x.chunks_exact(256)) {
        for (g, xs) in xb.chunks_exact(N).enumerate() {
            let Group { scale, min } = unpack(b, g, &mut codes);
            if has_min {
                for l in 0..N {
                    acc[l] += scale * (codes[l] * xs[l]) - min * xs[l];
                }
            } else {
                for l in 0..N {
                    acc[l] += scale * (codes[l] * xs[l]);
                }
            }
        }
    }
    sum_lanes(&acc)
}

pub(super) fn dequantize_q2_k(b: &[u8], out: &mut [f32]) {
    dequantize_groups(b, out, q2_k_group, true);
}
pub(super) fn dequantize_q3_k(b: &[u8], out: &mut [f32]) {
    dequantize_groups(b, out, q3_k_group, false);
}
pub(super) fn dequantize_q4_k(b: &[u8], out: &mut [f32]) {
    dequantize_groups(b, out, q4_k_group, true);
}
pub(super) fn dequantize_q5_k(b: &[u8], out: &mut [f32]) {
    dequantize_groups(b, out, q5_k_group, true);
}
pub(super) fn dequantize_q6_k(b: &[u8], out: &mut [f32]) {
    dequantize_groups(b, out, q6_k_group, false);
}

pub(super) fn dot_q2_k(row: &[u8], x: &[f32]) -> f32 {
    dot_groups(row, 84, x, q2_k_group, true)
}
pub(super) fn dot_q3_k(row: &[u8], x: &[f32]) -> f32 {
    dot_groups(row, 110, x, q3_k_group, false)
}
/// Q4_K is on the decode hot path: a chunk of 64 values is 32 bytes whose low nibbles are
/// one group and high nibbles the next, so both groups are done in one pass over the bytes.
pub(super) fn dot_q4_k(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    for (b, xb) in row.chunks_exact(144).zip(x.chunks_exact(256)) {
        for c in 0..4 {
            let (lo, hi) = (k4_group(b, 2 * c), k4_group(b, 2 * c + 1));
            let qs = &b[16 + c * 32..][..32];
            let xs = &xb[c * 64..][..64];
            for l in 0..32 {
                let (x0, x1) = (xs[l], xs[l + 32]);
                let (q0, q1) = ((qs[l] & 0x0f) as f32, (qs[l] >> 4) as f32);
                acc[l] += lo.scale * (q0 * x0) - lo.min * x0 + (hi.scale * (q1 * x1) - hi.min * x1);
            }
        }
    }
    sum_lanes(&acc)
}
pub(super) fn dot_q5_k(row: &[u8], x: &[f32]) -> f32 {
    dot_groups(row, 176, x, q5_k_group, true)
}
/// Q6_K is on the decode hot path: per half of 128 values, byte `l` of ql/qh feeds four
/// values (`l`, `l + 32`, `l + 64`, `l + 96`), so all four quarters are done in one pass.
pub(super) fn dot_q6_k(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xb) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[half * 64..][..64];
            let qh = &b[128 + half * 32..][..32];
            let xs = &xb[half * 128..][..128];
            for part in 0..2 {
                // Scales of quarters 0..4 for values l0..l0+16 of each quarter.
                let s = |k: usize| d * (b[192 + half * 8 + 2 * k + part] as i8) as f32;
                let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
                let l0 = part * 16;
                for (l, lane) in acc.iter_mut().enumerate() {
                    let i = l0 + l;
                    let (a, c, h) = (ql[i], ql[i + 32], qh[i]);
                    let q0 = ((a & 0x0f) | ((h & 3) << 4)) as i32 - 32;
                    let q1 = ((c & 0x0f) | (((h >> 2) & 3) << 4)) as i32 - 32;
                    let q2 = ((a >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
                    let q3 = ((c >> 4) | ((h >> 6) << 4)) as i32 - 32;
                    *lane += s0 * (q0 as f32 * xs[i])
                        + s1 * (q1 as f32 * xs[i + 32])
                        + (s2 * (q2 as f32 * xs[i + 64]) + s3 * (q3 as f32 * xs[i + 96]));
                }
            }
        }
    }
    sum_lanes(&acc)
}
