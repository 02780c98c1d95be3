//! Next-token cross-entropy through the LM head, a few rows at a time, so the full
//! `T x vocab` logits never exist at once.

use crate::linalg::{matmul, MatRef};
use rayon::prelude::*;

/// Label of a position that does not count in the loss (prompt tokens, padding).
pub const IGNORE: u32 = u32::MAX;

/// Rows of logits computed at once.
const ROWS_PER_CHUNK: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOutput {
    /// Sum of -log p(label) over counted positions.
    pub loss_sum: f64,
    /// Number of counted positions.
    pub count: usize,
}

/// Cross-entropy of `h` (`T x hidden`, after the final norm) through `head` (`vocab x hidden`)
/// against `labels` (`T`, `IGNORE` for positions that do not count).
/// When `dh` is given, writes `d(loss_sum · grad_scale)/dh` into it.
pub fn cross_entropy(
    h: &[f32],
    head: &[f32],
    hidden: usize,
    vocab: usize,
    labels: &[u32],
    grad_scale: f32,
    dh: Option<&mut [f32]>,
) -> LossOutput {
    let t = labels.len();
    assert_eq!(h.len(), t * hidden);
    assert_eq!(head.len(), vocab * hidden);
    let w = MatRef::new(head, vocab, hidden);
    let dh_addr = dh.map(|d| {
        assert_eq!(d.len(), t * hidden);
        d.fill(0.0);
        d.as_mut_ptr() as usize
    });
    let parts: Vec<(f64, usize)> = (0..t.div_ceil(ROWS_PER_CHUNK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * ROWS_PER_CHUNK;
            let rows = ROWS_PER_CHUNK.min(t - r0);
            let lab = &labels[r0..r0 + rows];
            if lab.iter().all(|&l| l == IGNORE) {
                return (0.0, 0);
            }
            let hc = &h[r0 * hidden..(r0 + rows) * hidden];
            let mut logits = vec![0.0f32; rows * vocab];
            matmul(MatRef::new(hc, rows, hidden), w.t(), &mut logits, false);
            let mut loss = 0.0f64;
            let mut count = 0;
            for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
                let label = lab[r];
                if label == IGNORE {
                    row.fill(0.0);
                    continue;
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                let lse = max as f64 + sum.ln();
                loss += lse - row[label as usize] as f64;
                count += 1;
                // d loss / d logits = softmax - onehot
                for v in row.iter_mut() {
                    *v = (((*v as f64) - lse).exp() as f32) * grad_scale;
                }
                row[label as usize] -= grad_scale;
            }
            if let Some(addr) = dh_addr {
                // SAFETY: each chunk writes only its own rows r0..r0+rows of dh.
                let dh = unsafe { std::slice::from_raw_parts_mut((addr as *mut f32).add(r0 * hidden), rows * hidden) };
                matmul(MatRef::new(&logits, rows, vocab), w, dh, false);
            }
            (loss, count)
        })
        .collect();
    LossOutput { loss_sum: parts.iter().map(|p| p.0).sum(), count: parts.iter().map(|p| p.1).sum() }
}
