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

/// Distillation from a teacher through the same LM head: the teacher's final hidden states
/// (after its final norm, `T x hidden`) and the weight of the KL term.
#[derive(Clone, Copy, Debug)]
pub struct Teacher<'a> {
    pub h: &'a [f32],
    /// `w` in `(1 - w) · CE(label) + w · KL(p_teacher || p_student)`; 0 is plain cross-entropy.
    pub weight: f32,
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
    head_loss(h, None, head, hidden, vocab, labels, grad_scale, dh)
}

/// The loss of distilling `teacher` into the student `h`: per counted position,
/// `(1 - w) · (-log p_s(label)) + w · KL(p_t || p_s)` with `p = softmax(h · headᵀ)`; the
/// gradient w.r.t. the student's logits is `p_s - (1 - w) · onehot(label) - w · p_t`.
/// Positions labelled `IGNORE` count in neither term.
#[allow(clippy::too_many_arguments)]
pub fn distillation_loss(
    h: &[f32],
    teacher: Teacher<'_>,
    head: &[f32],
    hidden: usize,
    vocab: usize,
    labels: &[u32],
    grad_scale: f32,
    dh: Option<&mut [f32]>,
) -> LossOutput {
    assert_eq!(teacher.h.len(), h.len());
    head_loss(h, Some(teacher), head, hidden, vocab, labels, grad_scale, dh)
}

/// Log-sum-exp of a row of logits, in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln()
}

/// [`cross_entropy`] or, with a teacher, [`distillation_loss`].
#[allow(clippy::too_many_arguments)]
fn head_loss(
    h: &[f32],
    teacher: Option<Teacher<'_>>,
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
    let weight = teacher.map_or(0.0, |t| t.weight as f64);
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
            let teacher_logits = teacher.map(|teacher| {
                let mut z = vec![0.0f32; rows * vocab];
                let tc = &teacher.h[r0 * hidden..(r0 + rows) * hidden];
                matmul(MatRef::new(tc, rows, hidden), w.t(), &mut z, false);
                z
            });
            let mut loss = 0.0f64;
            let mut count = 0;
            for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
                let label = lab[r];
                if label == IGNORE {
                    row.fill(0.0);
                    continue;
                }
                let lse = log_sum_exp(row);
                loss += (1.0 - weight) * (lse - row[label as usize] as f64);
                count += 1;
                // d loss / d logits = softmax - (1 - w) · onehot - w · softmax(teacher)
                match &teacher_logits {
                    Some(z) => {
                        let zt = &z[r * vocab..(r + 1) * vocab];
                        let lse_t = log_sum_exp(zt);
                        let mut kl = 0.0f64;
                        for (v, &t) in row.iter_mut().zip(zt) {
                            let (log_ps, log_pt) = (*v as f64 - lse, t as f64 - lse_t);
                            let pt = log_pt.exp();
                            kl += pt * (log_pt - log_ps);
                            *v = ((log_ps.exp() - weight * pt) as f32) * grad_scale;
                        }
                        loss += weight * kl;
                    }
                    None => row.iter_mut().for_each(|v| *v = (((*v as f64) - lse).exp() as f32) * grad_scale),
                }
                row[label as usize] -= (1.0 - weight) as f32 * grad_scale;
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

/// Attention transfer's loss on one layer (LoLCATs, Lizard): for each counted row
/// (`labels[r] != IGNORE`), `weight · mean_j (o[r, j] - target[r, j])²`, summed over the rows,
/// where `o` is the layer's Liger attention output and `target` the base's softmax attention
/// output on the same input (`rows x width` each). Writes `d_o = grad_scale · d(sum)/d(o)`,
/// zero on rows that do not count. The GPU kernel `attention_transfer_rows_f32` is its twin.
pub fn attention_transfer_rows(
    o: &[f32],
    target: &[f32],
    labels: &[u32],
    width: usize,
    weight: f32,
    grad_scale: f32,
    d_o: &mut [f32],
) -> f64 {
    let scale = 2.0 * weight * grad_scale / width as f32;
    let mut sum = 0.0f64;
    for (r, &label) in labels.iter().enumerate() {
        let span = r * width..(r + 1) * width;
        let counted = label != IGNORE;
        let mut row = 0.0f64;
        for ((d, &a), &b) in d_o[span.clone()].iter_mut().zip(&o[span.clone()]).zip(&target[span]) {
            let diff = a - b;
            row += (diff as f64) * (diff as f64);
            *d = if counted { scale * diff } else { 0.0 };
        }
        if counted {
            sum += weight as f64 * row / width as f64;
        }
    }
    sum
}
