//! `I8_ROW`: int8 weights with one f32 scale per row, the edge build's 8-bit format.
//!
//! A stored row is its scale (f32, little-endian) followed by one signed byte per value:
//! `w[j] = scale * code[j]`, `scale = max |w| / 127`. Unlike the GGML block types the scale
//! sits once per row, so a row of `n` values takes `n + 4` bytes (about 1.01 bytes a value
//! for the default model's 576-wide rows, against Q8_0's 1.06).

/// Bytes before the codes in each row: the f32 scale.
pub(crate) const ROW_HEADER: usize = 4;

/// The scale of a stored row.
#[inline(always)]
pub(crate) fn row_scale(row: &[u8]) -> f32 {
    f32::from_le_bytes([row[0], row[1], row[2], row[3]])
}

/// Rows in `bytes` holding `values` values in all, when they form whole rows of equal
/// length: `rows * (cols + 4) == bytes` and `rows * cols == values`.
pub(crate) fn rows_in(bytes: usize, values: usize) -> Option<usize> {
    let rows = bytes.checked_sub(values)? / ROW_HEADER;
    let whole = rows > 0 && (bytes - values).is_multiple_of(ROW_HEADER) && values.is_multiple_of(rows);
    whole.then_some(rows)
}

/// Dequantizes whole rows (`bytes` of [`rows_in`] rows) into `out`.
pub(crate) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    let rows = rows_in(bytes.len(), out.len()).expect("checked by the caller");
    let cols = out.len() / rows;
    for (row, o) in bytes.chunks_exact(cols + ROW_HEADER).zip(out.chunks_exact_mut(cols)) {
        let scale = row_scale(row);
        for (v, &c) in o.iter_mut().zip(&row[ROW_HEADER..]) {
            *v = scale * (c as i8) as f32;
        }
    }
}

/// Stores `values` as one row.
pub(crate) fn quantize_row(values: &[f32]) -> Vec<u8> {
    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut out = Vec::with_capacity(values.len() + ROW_HEADER);
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend(values.iter().map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
    out
}

/// `sum(w_j * x_j)` over one stored row, eight lanes wide so the compiler vectorizes it.
pub(crate) fn dot(row: &[u8], x: &[f32]) -> f32 {
    let codes = &row[ROW_HEADER..];
    let n = codes.len().min(x.len());
    let mut lanes = [0.0f32; 8];
    let mut chunks = codes[..n].chunks_exact(8).zip(x[..n].chunks_exact(8));
    for (c, xs) in &mut chunks {
        for l in 0..8 {
            lanes[l] += (c[l] as i8) as f32 * xs[l];
        }
    }
    let done = n / 8 * 8;
    let tail: f32 = codes[done..n].iter().zip(&x[done..n]).map(|(&c, &xv)| (c as i8) as f32 * xv).sum();
    row_scale(row) * (super::sum_lanes(&lanes) + tail)
}
