//! Next-token cross-entropy through the LM head, a chunk of rows at a time
//! (`kernels/cross_entropy.cu` + two GEMMs); CPU twin: `liger_core::nn::loss::cross_entropy`.
//! The final hidden states, the head and the gradient chunk are stored as `T` (bf16 GEMMs run
//! on tensor cores); logits, losses and `dh` are f32.

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::gemm::{gemm, GemmDims, GemmInput};
use crate::kernels::CROSS_ENTROPY;
use crate::launch::{as_int, block_per_row, expect_len};
use cudarc::driver::PushKernelArg;
use liger_core::nn::loss::{LossOutput, IGNORE};
use liger_core::{Error, Result};

/// Bytes of logits (f32) and their gradient (`T`) held at once by [`rows_per_chunk`].
const CHUNK_BYTES: usize = 768 << 20;

/// Rows of logits per chunk for a vocabulary of `vocab`: as many as fit in [`CHUNK_BYTES`]
/// (whole multiples of 64 rows, at least 64), so the GEMMs are large and memory stays bounded.
/// Distillation holds a second chunk of f32 logits, the teacher's: see [`rows_per_distillation_chunk`].
pub fn rows_per_chunk<T: GemmInput>(vocab: usize) -> usize {
    rows_within(vocab.max(1) * (4 + std::mem::size_of::<T>()))
}

/// [`rows_per_chunk`] for [`distillation_loss`], which also holds the teacher's logits.
pub fn rows_per_distillation_chunk<T: GemmInput>(vocab: usize) -> usize {
    rows_within(vocab.max(1) * (8 + std::mem::size_of::<T>()))
}

fn rows_within(bytes_per_row: usize) -> usize {
    (CHUNK_BYTES / bytes_per_row / 64 * 64).max(64)
}

/// Cross-entropy of `h` (`T x hidden`, after the final norm) through `head` (`vocab x hidden`)
/// against `labels` (`T`, [`IGNORE`] for positions that do not count). When `dh` is given,
/// writes `d(loss_sum * grad_scale)/dh` into it. At most `rows_per_chunk x vocab` logits exist at once.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<T: GemmInput>(
    ctx: &GpuContext,
    h: &GpuBuffer<T>,
    head: &GpuBuffer<T>,
    hidden: usize,
    vocab: usize,
    labels: &[u32],
    grad_scale: f32,
    dh: Option<&mut GpuBuffer<f32>>,
    rows_per_chunk: usize,
) -> Result<LossOutput> {
    head_loss(ctx, h, None, head, hidden, vocab, labels, grad_scale, dh, rows_per_chunk)
}

/// The teacher of [`distillation_loss`]: its final hidden states (after its final norm, as
/// `h`) and the weight `w` of the KL term.
pub struct GpuTeacher<'a, T: GemmInput> {
    pub h: &'a GpuBuffer<T>,
    pub weight: f32,
}

/// Distillation through the LM head, as [`cross_entropy`] but per counted position
/// `(1 - w) · CE(label) + w · KL(p_teacher || p_student)`, the teacher's logits made through
/// the same head a chunk at a time. CPU twin: `liger_core::nn::loss::distillation_loss`.
#[allow(clippy::too_many_arguments)]
pub fn distillation_loss<T: GemmInput>(
    ctx: &GpuContext,
    h: &GpuBuffer<T>,
    teacher: GpuTeacher<'_, T>,
    head: &GpuBuffer<T>,
    hidden: usize,
    vocab: usize,
    labels: &[u32],
    grad_scale: f32,
    dh: Option<&mut GpuBuffer<f32>>,
    rows_per_chunk: usize,
) -> Result<LossOutput> {
    expect_len("distillation teacher h", teacher.h.len(), h.len())?;
    if !(0.0..=1.0).contains(&teacher.weight) {
        return Err(Error::invalid_argument(format!(
            "the distillation weight must be in [0, 1], got {}",
            teacher.weight
        )));
    }
    head_loss(ctx, h, Some(teacher), head, hidden, vocab, labels, grad_scale, dh, rows_per_chunk)
}

/// [`cross_entropy`] or, with a teacher, [`distillation_loss`].
#[allow(clippy::too_many_arguments)]
fn head_loss<T: GemmInput>(
    ctx: &GpuContext,
    h: &GpuBuffer<T>,
    teacher: Option<GpuTeacher<'_, T>>,
    head: &GpuBuffer<T>,
    hidden: usize,
    vocab: usize,
    labels: &[u32],
    grad_scale: f32,
    mut dh: Option<&mut GpuBuffer<f32>>,
    rows_per_chunk: usize,
) -> Result<LossOutput> {
    let t = labels.len();
    expect_len("cross_entropy h", h.len(), t * hidden)?;
    expect_len("cross_entropy head", head.len(), vocab * hidden)?;
    if let Some(dh) = dh.as_deref() {
        expect_len("cross_entropy dh", dh.len(), t * hidden)?;
    }
    if rows_per_chunk == 0 {
        return Err(Error::invalid_argument("cross_entropy: rows_per_chunk must be at least 1"));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l != IGNORE && l as usize >= vocab) {
        return Err(Error::invalid_argument(format!("label {bad} is outside the vocabulary of {vocab}")));
    }
    let count = labels.iter().filter(|&&l| l != IGNORE).count();
    if t == 0 {
        return Ok(LossOutput { loss_sum: 0.0, count });
    }
    let chunk = rows_per_chunk.min(t);
    let labels_gpu = GpuBuffer::from_host(ctx, labels)?;
    let mut loss = GpuBuffer::<f32>::zeros(ctx, t)?;
    let mut logits = GpuBuffer::<f32>::zeros(ctx, chunk * vocab)?;
    let mut teacher_logits = match teacher {
        Some(_) => Some(GpuBuffer::<f32>::zeros(ctx, chunk * vocab)?),
        None => None,
    };
    let mut grad = GpuBuffer::<T>::zeros(ctx, chunk * vocab)?;
    let name = match teacher {
        Some(_) => super::variant::<T>("distillation_rows_f32", "distillation_rows_bf16"),
        None => super::variant::<T>("cross_entropy_rows_f32", "cross_entropy_rows_bf16"),
    };
    let f = ctx.function(&CROSS_ENTROPY, name)?;
    let vocab_arg = as_int("vocab", vocab)?;
    for r0 in (0..t).step_by(chunk) {
        let rows = chunk.min(t - r0);
        let dims = GemmDims { m: rows, n: vocab, k: hidden, a_transposed: false, b_transposed: true };
        let head_logits = |x: &GpuBuffer<T>, out: &mut GpuBuffer<f32>| {
            gemm(
                ctx,
                dims,
                &x.view(r0 * hidden..(r0 + rows) * hidden),
                head.slice(),
                &mut out.view_mut(0..rows * vocab),
                false,
            )
        };
        head_logits(h, &mut logits)?;
        {
            let z = logits.view(0..rows * vocab);
            let mut g = grad.view_mut(0..rows * vocab);
            let label_rows = labels_gpu.view(r0..r0 + rows);
            let mut loss_rows = loss.view_mut(r0..r0 + rows);
            let mut launch = ctx.stream().launch_builder(&f);
            launch.arg(&z);
            let zt;
            if let (Some(teacher), Some(out)) = (&teacher, teacher_logits.as_mut()) {
                head_logits(teacher.h, out)?;
                zt = out.view(0..rows * vocab);
                launch.arg(&zt);
            }
            launch.arg(&label_rows).arg(&mut loss_rows).arg(&mut g).arg(&vocab_arg).arg(&grad_scale);
            if let Some(teacher) = &teacher {
                launch.arg(&teacher.weight);
            }
            // SAFETY: z, zt and g hold rows x vocab values, labels and loss hold rows; labels were checked.
            ctx.check_launch(unsafe { launch.launch(block_per_row(rows, vocab)?) }, name)?;
        }
        if let Some(dh) = dh.as_deref_mut() {
            let dims = GemmDims { m: rows, n: hidden, k: vocab, a_transposed: false, b_transposed: false };
            gemm(
                ctx,
                dims,
                &grad.view(0..rows * vocab),
                head.slice(),
                &mut dh.view_mut(r0 * hidden..(r0 + rows) * hidden),
                false,
            )?;
        }
    }
    let per_row = loss.to_host()?;
    Ok(LossOutput { loss_sum: per_row.iter().map(|&l| l as f64).sum(), count })
}

/// For each of the first `targets.len()` rows of `logits` (`rows x vocab`, f32): the natural-log
/// probability of `targets[r]` under the row's softmax, and whether it is the row's argmax
/// (the first largest logit on ties). CPU twin: `liger_core::eval::loglik::score_row`.
pub fn score_rows(
    ctx: &GpuContext,
    logits: &GpuBuffer<f32>,
    vocab: usize,
    targets: &[u32],
) -> Result<Vec<(f32, bool)>> {
    let rows = targets.len();
    if logits.len() < rows * vocab {
        return Err(Error::invalid_argument(format!(
            "score_rows: {} logits hold fewer than {rows} rows of {vocab}",
            logits.len()
        )));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::invalid_argument(format!("token id {bad} is outside the model's vocabulary of {vocab}")));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    let targets_gpu = GpuBuffer::from_host(ctx, targets)?;
    let mut logprob = GpuBuffer::<f32>::zeros(ctx, rows)?;
    let mut greedy = GpuBuffer::<u32>::zeros(ctx, rows)?;
    let name = "score_rows_f32";
    let f = ctx.function(&CROSS_ENTROPY, name)?;
    let vocab_arg = as_int("vocab", vocab)?;
    {
        let z = logits.view(0..rows * vocab);
        let mut launch = ctx.stream().launch_builder(&f);
        launch.arg(&z).arg(targets_gpu.slice()).arg(logprob.slice_mut()).arg(greedy.slice_mut()).arg(&vocab_arg);
        // SAFETY: z holds rows x vocab values, the other buffers rows; targets were checked.
        ctx.check_launch(unsafe { launch.launch(block_per_row(rows, vocab)?) }, name)?;
    }
    let (lp, g) = (logprob.to_host()?, greedy.to_host()?);
    Ok(lp.into_iter().zip(g).map(|(l, g)| (l, g != 0)).collect())
}
