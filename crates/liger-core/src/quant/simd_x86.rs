//! AVX2 + FMA (+ F16C) dot products of stored rows with f32 vectors, on x86-64.
//!
//! Each block's integer codes are widened to eight f32 lanes in registers and multiplied
//! into `x` with FMA; the block's scale is applied once to the block's partial sums (and for
//! the types with a minimum, `m * sum(x)` is added separately), exactly the arithmetic of the
//! portable code, only eight lanes wide. The activations stay f32.
//!
//! Every kernel walks the row and `x` with `chunks_exact`, so all pointer reads below stay
//! inside a chunk whose length the iterator guarantees. The functions are only handed out
//! by `kernel` after the CPU was checked for the features (see `DotKernel::Avx2`).

use super::kquants::k4_scale_min;
use super::DotFn;
use super::GgmlType;
use half::{bf16, f16};
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels of this module.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// The AVX2 kernel for `ty`, or `None` where only the portable code exists.
pub(super) fn kernel(ty: GgmlType) -> Option<DotFn> {
    // Safe wrappers: sound because `kernel` is only called once `available()` said yes.
    macro_rules! wrap {
        ($inner:ident) => {{
            fn f(row: &[u8], x: &[f32]) -> f32 {
                // SAFETY: the CPU has AVX2, FMA and F16C (checked before this kernel was chosen).
                unsafe { $inner(row, x) }
            }
            Some(f as DotFn)
        }};
    }
    match ty {
        GgmlType::F32 => wrap!(dot_f32),
        GgmlType::F16 => wrap!(dot_f16),
        GgmlType::BF16 => wrap!(dot_bf16),
        GgmlType::Q8_0 => wrap!(dot_q8_0),
        GgmlType::Q4_0 => wrap!(dot_q4_0),
        GgmlType::Q4_1 => wrap!(dot_q4_1),
        GgmlType::Q5_0 => wrap!(dot_q5_0),
        GgmlType::Q5_1 => wrap!(dot_q5_1),
        GgmlType::Q4K => wrap!(dot_q4_k),
        GgmlType::Q6K => wrap!(dot_q6_k),
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q5K | GgmlType::I8Row => None,
    }
}

// ---- Small helpers (inlined into the kernels, which carry the same features).

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The little-endian f16 at `b[i..i + 2]` as f32 (one F16C instruction).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], i: usize) -> f32 {
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Eight f32 of `x` starting at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_x(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// The low eight bytes of `v` as signed codes, in f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8_low_to_f32(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// The high eight bytes of `v` as signed codes, in f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8_high_to_f32(v: __m128i) -> __m256 {
    i8_low_to_f32(_mm_unpackhi_epi64(v, v))
}

/// `sum(codes[i] * x[i])` over 16 signed byte codes and 16 values of `x` at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot16_i8(codes: __m128i, p: *const f32) -> __m256 {
    let s = _mm256_mul_ps(i8_low_to_f32(codes), load_x(p));
    _mm256_fmadd_ps(i8_high_to_f32(codes), load_x(p.add(8)), s)
}

/// `x[0..8] + x[8..16]` at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum16(p: *const f32) -> __m256 {
    _mm256_add_ps(load_x(p), load_x(p.add(8)))
}

/// The 16 bytes at `b[i..i + 16]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(b: &[u8], i: usize) -> __m128i {
    let s = &b[i..i + 16];
    // SAFETY: `s` holds 16 bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(s.as_ptr() as *const __m128i) }
}

/// The low and high nibbles of 16 bytes: codes of values `j` and `j + 16` of a 32-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn split_nibbles(v: __m128i) -> (__m128i, __m128i) {
    let m = _mm_set1_epi8(0x0f);
    (_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m))
}

/// The fifth bits of a 5-bit block (`qh`, bit `i` for value `i`) as `0x10` in the byte of
/// each value: values 0..16 in the first vector, 16..32 in the second.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: u32) -> (__m128i, __m128i) {
    let q = _mm_set1_epi32(qh as i32);
    let bit_of_lane = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let sixteen = _mm_set1_epi8(0x10);
    let expand = |byte_pick: __m128i| {
        let t = _mm_and_si128(_mm_shuffle_epi8(q, byte_pick), bit_of_lane);
        _mm_and_si128(_mm_cmpeq_epi8(t, bit_of_lane), sixteen)
    };
    (
        expand(_mm_set_epi64x(0x0101_0101_0101_0101, 0)),
        expand(_mm_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202)),
    )
}

// ---- Plain floats: four independent 8-lane accumulators, scalar tail.

macro_rules! float_dot {
    ($name:ident, $width:expr, $load8:expr, $scalar:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(row: &[u8], x: &[f32]) -> f32 {
            let load8: unsafe fn(*const u8) -> __m256 = $load8;
            let scalar: fn(&[u8]) -> f32 = $scalar;
            let n = x.len().min(row.len() / $width);
            let (r, xp) = (row.as_ptr(), x.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let j = i + 8 * k;
                    *a = _mm256_fmadd_ps(load8(r.add(j * $width)), load_x(xp.add(j)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(load8(r.add(i * $width)), load_x(xp.add(i)), acc[0]);
                i += 8;
            }
            let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            for j in i..n {
                sum += scalar(&row[j * $width..(j + 1) * $width]) * x[j];
            }
            sum
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f32(p: *const u8) -> __m256 {
    _mm256_loadu_ps(p as *const f32)
}
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f16(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_bf16(p: *const u8) -> __m256 {
    // bf16 is the high half of an f32: widen to 32 bits and shift into place.
    let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
}

float_dot!(dot_f32, 4, load8_f32, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
float_dot!(dot_f16, 2, load8_f16, |c| f16::from_le_bytes([c[0], c[1]]).to_f32());
float_dot!(dot_bf16, 2, load8_bf16, |c| bf16::from_le_bytes([c[0], c[1]]).to_f32());

// ---- The 32-value block types.

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 2];
    for (i, (b, xs)) in row.chunks_exact(34).zip(x.chunks_exact(32)).enumerate() {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let (lo, hi) = (load16(b, 2), load16(b, 18));
        let s = _mm256_add_ps(dot16_i8(lo, xs.as_ptr()), dot16_i8(hi, xs.as_ptr().add(16)));
        acc[i % 2] = _mm256_fmadd_ps(d, s, acc[i % 2]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let eight = _mm_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); 2];
    for (i, (b, xs)) in row.chunks_exact(18).zip(x.chunks_exact(32)).enumerate() {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let (lo, hi) = split_nibbles(load16(b, 2));
        let (lo, hi) = (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight));
        let s = _mm256_add_ps(dot16_i8(lo, xs.as_ptr()), dot16_i8(hi, xs.as_ptr().add(16)));
        acc[i % 2] = _mm256_fmadd_ps(d, s, acc[i % 2]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    // Codes are 0..15, so as signed bytes they read the same.
    let (mut acc_q, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
        let (d, m) = (_mm256_set1_ps(f16_at(b, 0)), _mm256_set1_ps(f16_at(b, 2)));
        let (lo, hi) = split_nibbles(load16(b, 4));
        let p = xs.as_ptr();
        let s = _mm256_add_ps(dot16_i8(lo, p), dot16_i8(hi, p.add(16)));
        let sx = _mm256_add_ps(sum16(p), sum16(p.add(16)));
        acc_q = _mm256_fmadd_ps(d, s, acc_q);
        acc_m = _mm256_fmadd_ps(m, sx, acc_m);
    }
    hsum(_mm256_add_ps(acc_q, acc_m))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0(row: &[u8], x: &[f32]) -> f32 {
    let sixteen = _mm_set1_epi8(16);
    let mut acc = [_mm256_setzero_ps(); 2];
    for (i, (b, xs)) in row.chunks_exact(22).zip(x.chunks_exact(32)).enumerate() {
        let d = _mm256_set1_ps(f16_at(b, 0));
        let (h0, h1) = fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
        let (lo, hi) = split_nibbles(load16(b, 6));
        let lo = _mm_sub_epi8(_mm_or_si128(lo, h0), sixteen);
        let hi = _mm_sub_epi8(_mm_or_si128(hi, h1), sixteen);
        let s = _mm256_add_ps(dot16_i8(lo, xs.as_ptr()), dot16_i8(hi, xs.as_ptr().add(16)));
        acc[i % 2] = _mm256_fmadd_ps(d, s, acc[i % 2]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1(row: &[u8], x: &[f32]) -> f32 {
    // Codes are 0..31, so as signed bytes they read the same.
    let (mut acc_q, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, xs) in row.chunks_exact(24).zip(x.chunks_exact(32)) {
        let (d, m) = (_mm256_set1_ps(f16_at(b, 0)), _mm256_set1_ps(f16_at(b, 2)));
        let (h0, h1) = fifth_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        let (lo, hi) = split_nibbles(load16(b, 8));
        let (lo, hi) = (_mm_or_si128(lo, h0), _mm_or_si128(hi, h1));
        let p = xs.as_ptr();
        let s = _mm256_add_ps(dot16_i8(lo, p), dot16_i8(hi, p.add(16)));
        let sx = _mm256_add_ps(sum16(p), sum16(p.add(16)));
        acc_q = _mm256_fmadd_ps(d, s, acc_q);
        acc_m = _mm256_fmadd_ps(m, sx, acc_m);
    }
    hsum(_mm256_add_ps(acc_q, acc_m))
}

// ---- K types.

/// Q4_K: per chunk of 64 values, 32 bytes whose low nibbles are group `2c` and high nibbles
/// group `2c + 1`; `value = d*sc*q - dmin*m`, summed as `scale*sum(q*x) - min*sum(x)`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(row: &[u8], x: &[f32]) -> f32 {
    // Four accumulators: scaled codes and minimums of the low and high groups.
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xb) in row.chunks_exact(144).zip(x.chunks_exact(256)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        for c in 0..4 {
            let (sc_lo, m_lo) = k4_scale_min(&b[4..16], 2 * c);
            let (sc_hi, m_hi) = k4_scale_min(&b[4..16], 2 * c + 1);
            let p = xb.as_ptr().add(c * 64);
            let (a_lo, a_hi) = split_nibbles(load16(b, 16 + c * 32));
            let (b_lo, b_hi) = split_nibbles(load16(b, 32 + c * 32));
            let s_lo = _mm256_add_ps(dot16_i8(a_lo, p), dot16_i8(b_lo, p.add(16)));
            let s_hi = _mm256_add_ps(dot16_i8(a_hi, p.add(32)), dot16_i8(b_hi, p.add(48)));
            let x_lo = _mm256_add_ps(sum16(p), sum16(p.add(16)));
            let x_hi = _mm256_add_ps(sum16(p.add(32)), sum16(p.add(48)));
            acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(d * sc_lo as f32), s_lo, acc[0]);
            acc[1] = _mm256_fmadd_ps(_mm256_set1_ps(d * sc_hi as f32), s_hi, acc[1]);
            acc[2] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * m_lo as f32), x_lo, acc[2]);
            acc[3] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * m_hi as f32), x_hi, acc[3]);
        }
    }
    hsum(_mm256_sub_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// Q6_K: per half of 128 values, bytes `l` of ql (and `l + 32`) and qh give the codes of
/// values `l`, `l + 32`, `l + 64`, `l + 96`; each 16 values share a signed 8-bit scale.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(row: &[u8], x: &[f32]) -> f32 {
    let (low4, low2) = (_mm_set1_epi8(0x0f), _mm_set1_epi8(0x03));
    let (bits23, bits45) = (_mm_set1_epi8(0x0c), _mm_set1_epi8(0x30));
    let offset = _mm_set1_epi8(32);
    // One accumulator per quarter, so the four scale FMAs do not wait on each other.
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xb) in row.chunks_exact(210).zip(x.chunks_exact(256)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            for part in 0..2 {
                let l0 = part * 16;
                let a = load16(b, half * 64 + l0);
                let c = load16(b, half * 64 + 32 + l0);
                let h = load16(b, 128 + half * 32 + l0);
                let shr4 = |v: __m128i| _mm_and_si128(_mm_srli_epi16(v, 4), low4);
                let codes = [
                    _mm_or_si128(_mm_and_si128(a, low4), _mm_slli_epi16(_mm_and_si128(h, low2), 4)),
                    _mm_or_si128(_mm_and_si128(c, low4), _mm_slli_epi16(_mm_and_si128(h, bits23), 2)),
                    _mm_or_si128(shr4(a), _mm_and_si128(h, bits45)),
                    _mm_or_si128(shr4(c), _mm_and_si128(_mm_srli_epi16(h, 2), bits45)),
                ];
                let p = xb.as_ptr().add(half * 128 + l0);
                for (k, &q) in codes.iter().enumerate() {
                    let scale = d * (b[192 + half * 8 + 2 * k + part] as i8) as f32;
                    let s = dot16_i8(_mm_sub_epi8(q, offset), p.add(32 * k));
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(scale), s, acc[k]);
                }
            }
        }
    }
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}
