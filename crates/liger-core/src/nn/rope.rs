//! Rotary position embedding in the Hugging Face "rotate_half" layout: dims i and i + D/2
//! form a pair rotated by `position * inv_freq[i]`. Angles are computed in f64 so that
//! long positions keep their precision.

/// Rotates `x` (`[T, heads, D]`, token r at position `pos0 + r`) in place. With `inverse`,
/// rotates by the opposite angle: the transpose, which is also the backward of the rotation.
pub fn apply_rope(x: &mut [f32], heads: usize, d: usize, inv_freq: &[f32], pos0: usize, inverse: bool) {
    let half = d / 2;
    debug_assert_eq!(inv_freq.len(), half);
    let sign = if inverse { -1.0 } else { 1.0 };
    let mut cos_sin = vec![(0.0f32, 0.0f32); half];
    for (r, token) in x.chunks_exact_mut(heads * d).enumerate() {
        let pos = (pos0 + r) as f64;
        for (cs, &f) in cos_sin.iter_mut().zip(inv_freq) {
            let angle = pos * f as f64;
            *cs = (angle.cos() as f32, (sign * angle.sin()) as f32);
        }
        for head in token.chunks_exact_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(&cos_sin) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
}
