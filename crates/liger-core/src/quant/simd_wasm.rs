//! wasm32 SIMD128 dot products of stored rows with f32 vectors (compiled in only when the
//! build enables `simd128`). The same arithmetic as the AVX2 kernels, four lanes wide and
//! with separate multiply and add (SIMD128 has no fused multiply-add).
//!
//! Every kernel walks the row and `x` with `chunks_exact`, so all pointer reads below stay
//! inside a chunk whose length the iterator guarantees.

use super::kquants::k4_scale_min;
use super::GgmlType;
use super::{f16_at, DotFn};
use half::{bf16, f16};
use std::arch::wasm32::*;

/// The SIMD128 kernel for `ty`, or `None` where only the portable code exists.
pub(super) fn kernel(ty: GgmlType) -> Option<DotFn> {
    Some(match ty {
        GgmlType::F32 => dot_f32,
        GgmlType::F16 => dot_f16,
        GgmlType::BF16 => dot_bf16,
        GgmlType::Q8_0 => dot_q8_0,
        GgmlType::Q4_0 => dot_q4_0,
        GgmlType::Q4_1 => dot_q4_1,
        GgmlType::Q5_0 => dot_q5_0,
        GgmlType::Q5_1 => dot_q5_1,
        GgmlType::Q4K => dot_q4_k,
        GgmlType::Q6K => dot_q6_k,
        GgmlType::I8Row => dot_i8_row,
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q5K => return None,
    })
}

// ---- Small helpers.

#[inline(always)]
fn hsum(v: v128) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<2>(v))
        + (f32x4_extract_lane::<1>(v) + f32x4_extract_lane::<3>(v))
}

#[inline(always)]
fn fma(a: v128, b: v128, acc: v128) -> v128 {
    f32x4_add(acc, f32x4_mul(a, b))
}

/// Four f32 of `x` at `p`.
#[inline(always)]
unsafe fn load_x(p: *const f32) -> v128 {
    v128_load(p as *const v128)
}

/// The 16 bytes at `b[i..i + 16]`.
#[inline(always)]
fn load16(b: &[u8], i: usize) -> v128 {
    let s = &b[i..i + 16];
    // SAFETY: `s` holds 16 bytes; wasm loads need no alignment.
    unsafe { v128_load(s.as_ptr() as *const v128) }
}

/// `sum(codes[i] * x[i])` over 16 signed byte codes and 16 values of `x` at `p`.
#[inline(always)]
unsafe fn dot16_i8(codes: v128, p: *const f32) -> v128 {
    let (lo, hi) = (i16x8_extend_low_i8x16(codes), i16x8_extend_high_i8x16(codes));
    let f = |v: v128| f32x4_convert_i32x4(v);
    let s = f32x4_mul(f(i32x4_extend_low_i16x8(lo)), load_x(p));
    let s = fma(f(i32x4_extend_high_i16x8(lo)), load_x(p.add(4)), s);
    let s = fma(f(i32x4_extend_low_i16x8(hi)), load_x(p.add(8)), s);
    fma(f(i32x4_extend_high_i16x8(hi)), load_x(p.add(12)), s)
}

/// `x[0..16]` at `p` summed into four lanes.
#[inline(always)]
unsafe fn sum16(p: *const f32) -> v128 {
    f32x4_add(f32x4_add(load_x(p), load_x(p.add(4))), f32x4_add(load_x(p.add(8)), load_x(p.add(12))))
}

/// The low and high nibbles of 16 bytes: codes of values `j` and `j + 16` of a 32-block.
#[inline(always)]
fn split_nibbles(v: v128) -> (v128, v128) {
    let m = u8x16_splat(0x0f);
    (v128_and(v, m), v128_and(u8x16_shr(v, 4), m))
}

/// The fifth bits of a 5-bit block (`qh`, bit `i` for value `i`) as `0x10` in the byte of
/// each value: values 0..16 in the first vector, 16..32 in the second.
#[inline(always)]
fn fifth_bits(qh: u32) -> (v128, v128) {
    let q = u32x4_splat(qh);
    let bit_of_lane = u64x2_splat(0x8040_2010_0804_0201);
    let expand = |byte_pick: v128| {
        let t = v128_and(i8x16_swizzle(q, byte_pick), bit_of_lane);
        v128_and(i8x16_eq(t, bit_of_lane), u8x16_splat(0x10))
    };
    (expand(u64x2(0, 0x0101_0101_0101_0101)), expand(u64x2(0x0202_0202_0202_0202, 0x0303_0303_0303_0303)))
}

// ---- Plain floats: four independent 4-lane accumulators, scalar tail.

/// Eight f16 at `p` (little-endian) as two f32x4. The exponent is rebased by a multiply
/// with 2^112 (exact, and right for subnormals); infinities and NaNs get an all-ones exponent.
#[inline(always)]
unsafe fn load8_f16(p: *const u8) -> (v128, v128) {
    let h = v128_load(p as *const v128);
    let convert = |h: v128| {
        let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
        let rest = i32x4_shl(v128_and(h, u32x4_splat(0x7fff)), 13);
        let finite = f32x4_mul(rest, f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
        let special = i32x4_eq(v128_and(h, u32x4_splat(0x7c00)), u32x4_splat(0x7c00));
        let value = v128_bitselect(v128_or(rest, u32x4_splat(0x7f80_0000)), finite, special);
        v128_or(value, sign)
    };
    (convert(u32x4_extend_low_u16x8(h)), convert(u32x4_extend_high_u16x8(h)))
}

#[inline(always)]
unsafe fn load8_bf16(p: *const u8) -> (v128, v128) {
    // bf16 is the high half of an f32: widen to 32 bits and shift into place.
    let h = v128_load(p as *const v128);
    (i32x4_shl(u32x4_extend_low_u16x8(h), 16), i32x4_shl(u32x4_extend_high_u16x8(h), 16))
}

#[inline(always)]
unsafe fn load8_f32(p: *const u8) -> (v128, v128) {
    (v128_load(p as *const v128), v128_load(p.add(16) as *const v128))
}

/// The dot product of `n` 8-value groups read by `load8` (each `width` bytes per value)
/// with `x`, then the scalar tail read by `scalar`.
#[inline(always)]
fn float_dot(
    row: &[u8],
    x: &[f32],
    width: usize,
    load8: unsafe fn(*const u8) -> (v128, v128),
    scalar: fn(&[u8]) -> f32,
) -> f32 {
    let n = x.len().min(row.len() / width);
    let (r, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [f32x4_splat(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: values i..i + 16 lie within both `row` and `x`.
        unsafe {
            let (a, b) = load8(r.add(i * width));
            let (c, d) = load8(r.add((i + 8) * width));
            acc[0] = fma(a, load_x(xp.add(i)), acc[0]);
            acc[1] = fma(b, load_x(xp.add(i + 4)), acc[1]);
            acc[2] = fma(c, load_x(xp.add(i + 8)), acc[2]);
            acc[3] = fma(d, load_x(xp.add(i + 12)), acc[3]);
        }
        i += 16;
    }
    let mut sum = hsum(f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3])));
    for j in i..n {
        sum += scalar(&row[j * width..(j + 1) * width]) * x[j];
    }
    sum
}

fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    float_dot(row, x, 4, load8_f32, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}
fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    float_dot(row, x, 2, load8_f16, |c| f16::from_le_bytes([c[0], c[1]]).to_f32())
}
fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    float_dot(row, x, 2, load8_bf16, |c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
}

// ---- The 32-value block types.

/// `sum(codes * x)` of one 32-block whose codes of values 0..16 and 16..32 are in `lo`, `hi`.
#[inline(always)]
fn block_dot(lo: v128, hi: v128, xs: &[f32]) -> v128 {
    // SAFETY: `xs` is a 32-value chunk.
    unsafe { f32x4_add(dot16_i8(lo, xs.as_ptr()), dot16_i8(hi, xs.as_ptr().add(16))) }
}

/// `sum(x)` of one 32-value chunk, in four lanes.
#[inline(always)]
fn block_sum(xs: &[f32]) -> v128 {
    // SAFETY: `xs` is a 32-value chunk.
    unsafe { f32x4_add(sum16(xs.as_ptr()), sum16(xs.as_ptr().add(16))) }
}

fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = f32x4_splat(0.0);
    for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
        acc = fma(f32x4_splat(f16_at(b, 0)), block_dot(load16(b, 2), load16(b, 18), xs), acc);
    }
    hsum(acc)
}

fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let eight = i8x16_splat(8);
    let mut acc = f32x4_splat(0.0);
    for (b, xs) in row.chunks_exact(18).zip(x.chunks_exact(32)) {
        let (lo, hi) = split_nibbles(load16(b, 2));
        let s = block_dot(i8x16_sub(lo, eight), i8x16_sub(hi, eight), xs);
        acc = fma(f32x4_splat(f16_at(b, 0)), s, acc);
    }
    hsum(acc)
}

fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    // Codes are 0..15, so as signed bytes they read the same.
    let (mut acc_q, mut acc_m) = (f32x4_splat(0.0), f32x4_splat(0.0));
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let (lo, hi) = split_nibbles(load16(b, 4));
        acc_q = fma(f32x4_splat(f16_at(b, 0)), block_dot(lo, hi, xs), acc_q);
        acc_m = fma(f32x4_splat(f16_at(b, 2)), block_sum(xs), acc_m);
    }
    hsum(f32x4_add(acc_q, acc_m))
}

fn dot_q5_0(row: &[u8], x: &[f32]) -> f32 {
    let sixteen = i8x16_splat(16);
    let mut acc = f32x4_splat(0.0);
    for (b, xs) in row.chunks_exact(22).zip(x.chunks_exact(32)) {
        let (h0, h1) = fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
        let (lo, hi) = split_nibbles(load16(b, 6));
        let s = block_dot(i8x16_sub(v128_or(lo, h0), sixteen), i8x16_sub(v128_or(hi, h1), sixteen), xs);
        acc = fma(f32x4_splat(f16_at(b, 0)), s, acc);
    }
    hsum(acc)
}

fn dot_q5_1(row: &[u8], x: &[f32]) -> f32 {
    // Codes are 0..31, so as signed bytes they read the same.
    let (mut acc_q, mut acc_m) = (f32x4_splat(0.0), f32x4_splat(0.0));
    for (b, xs) in row.chunks_exact(24).zip(x.chunks_exact(32)) {
        let (h0, h1) = fifth_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        let (lo, hi) = split_nibbles(load16(b, 8));
        acc_q = fma(f32x4_splat(f16_at(b, 0)), block_dot(v128_or(lo, h0), v128_or(hi, h1), xs), acc_q);
        acc_m = fma(f32x4_splat(f16_at(b, 2)), block_sum(xs), acc_m);
    }
    hsum(f32x4_add(acc_q, acc_m))
}

// ---- K types (layouts as in the AVX2 kernels).

fn dot_q4_k(row: &[u8], x: &[f32]) -> f32 {
    let (mut acc_q, mut acc_m) = (f32x4_splat(0.0), f32x4_splat(0.0));
    for (b, xb) in row.chunks_exact(144).zip(x.chunks_exact(256)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        for (c, xs) in xb.chunks_exact(64).enumerate() {
            let (sc_lo, m_lo) = k4_scale_min(&b[4..16], 2 * c);
            let (sc_hi, m_hi) = k4_scale_min(&b[4..16], 2 * c + 1);
            let (a_lo, a_hi) = split_nibbles(load16(b, 16 + c * 32));
            let (b_lo, b_hi) = split_nibbles(load16(b, 32 + c * 32));
            let (x_lo, x_hi) = xs.split_at(32);
            acc_q = fma(f32x4_splat(d * sc_lo as f32), block_dot(a_lo, b_lo, x_lo), acc_q);
            acc_q = fma(f32x4_splat(d * sc_hi as f32), block_dot(a_hi, b_hi, x_hi), acc_q);
            acc_m = fma(f32x4_splat(dmin * m_lo as f32), block_sum(x_lo), acc_m);
            acc_m = fma(f32x4_splat(dmin * m_hi as f32), block_sum(x_hi), acc_m);
        }
    }
    hsum(f32x4_sub(acc_q, acc_m))
}

fn dot_q6_k(row: &[u8], x: &[f32]) -> f32 {
    let (low4, low2) = (u8x16_splat(0x0f), u8x16_splat(0x03));
    let (bits23, bits45) = (u8x16_splat(0x0c), u8x16_splat(0x30));
    let offset = i8x16_splat(32);
    let mut acc = f32x4_splat(0.0);
    for (b, xb) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            for part in 0..2 {
                let l0 = part * 16;
                let a = load16(b, half * 64 + l0);
                let c = load16(b, half * 64 + 32 + l0);
                let h = load16(b, 128 + half * 32 + l0);
                let codes = [
                    v128_or(v128_and(a, low4), u8x16_shl(v128_and(h, low2), 4)),
                    v128_or(v128_and(c, low4), u8x16_shl(v128_and(h, bits23), 2)),
                    v128_or(u8x16_shr(a, 4), v128_and(h, bits45)),
                    v128_or(u8x16_shr(c, 4), v128_and(u8x16_shr(h, 2), bits45)),
                ];
                let xs = &xb[half * 128 + l0..][..112];
                for (k, &q) in codes.iter().enumerate() {
                    let scale = d * (b[192 + half * 8 + 2 * k + part] as i8) as f32;
                    // SAFETY: values 32k..32k + 16 lie within the 112 values of `xs`.
                    let s = unsafe { dot16_i8(i8x16_sub(q, offset), xs.as_ptr().add(32 * k)) };
                    acc = fma(f32x4_splat(scale), s, acc);
                }
            }
        }
    }
    hsum(acc)
}

/// `I8_ROW`: the row's f32 scale, then one signed byte per value.
fn dot_i8_row(row: &[u8], x: &[f32]) -> f32 {
    let codes = &row[super::int8_row::ROW_HEADER..];
    let n = codes.len().min(x.len());
    let mut acc = f32x4_splat(0.0);
    let (mut cs, mut xs) = (codes[..n].chunks_exact(16), x[..n].chunks_exact(16));
    for (c, xv) in (&mut cs).zip(&mut xs) {
        // SAFETY: `c` has 16 codes and `xv` 16 values.
        acc = f32x4_add(acc, unsafe { dot16_i8(load16(c, 0), xv.as_ptr()) });
    }
    let tail: f32 = cs.remainder().iter().zip(xs.remainder()).map(|(&c, &xv)| (c as i8) as f32 * xv).sum();
    super::int8_row::row_scale(row) * (hsum(acc) + tail)
}
