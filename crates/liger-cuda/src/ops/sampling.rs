//! Choosing the next token on the GPU (`kernels/sampling.cu`). CPU twin:
//! `liger_core::sampling` — greedy is `argmax`, sampling is `sample_with_draw`, repeated
//! operation for operation so the GPU picks exactly the CPU's token for the same logits and
//! the same uniform draw (take the draws from `Sampler::draw` to follow a seeded CPU sampler).

use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::kernels::SAMPLING;
use crate::launch::{as_int, expect_len, rows_of};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use liger_core::sampling::SamplingOptions;
use liger_core::Result;

/// Threads per sequence.
const THREADS: u32 = 1024;

/// Picks one token per row of `logits` (`[B, vocab]`) into `tokens` (`[B]`): the largest logit
/// when `options.temperature` is 0, else the token `sample_with_draw` picks with `draws[b]`
/// (`[B]`, uniform in `[0, 1)`; unused when greedy). `options.seed` is not used here: the
/// draws carry the randomness.
pub fn sample_tokens(
    ctx: &GpuContext,
    logits: &GpuBuffer<f32>,
    vocab: usize,
    options: &SamplingOptions,
    draws: &GpuBuffer<f32>,
    tokens: &mut GpuBuffer<u32>,
) -> Result<()> {
    options.validate()?;
    let rows = rows_of("logits", logits.len(), vocab)?;
    expect_len("sampled tokens", tokens.len(), rows)?;
    expect_len("sampling draws", draws.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let vocab_arg = as_int("vocab", vocab)?;
    as_int("sequences", rows)?;
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    if options.temperature == 0.0 {
        let name = "argmax_rows_f32";
        let f = ctx.function(&SAMPLING, name)?;
        let mut launch = ctx.stream().launch_builder(&f);
        launch.arg(logits.slice()).arg(&vocab_arg).arg(tokens.slice_mut());
        // SAFETY: logits hold rows x vocab values, tokens rows; one block per row.
        return ctx.check_launch(unsafe { launch.launch(cfg) }, name);
    }
    // Scratch for the sort of each row's candidates and their probabilities.
    let padded = vocab.next_power_of_two();
    let mut keys = GpuBuffer::<u64>::zeros(ctx, rows * padded)?;
    let mut probs = GpuBuffer::<f32>::zeros(ctx, rows * padded)?;
    let padded_arg = as_int("padded vocab", padded)?;
    let top_k = as_int("top_k", options.top_k.min(vocab))?;
    let name = "sample_rows_f32";
    let f = ctx.function(&SAMPLING, name)?;
    let mut launch = ctx.stream().launch_builder(&f);
    launch
        .arg(logits.slice())
        .arg(&vocab_arg)
        .arg(&padded_arg)
        .arg(&options.temperature)
        .arg(&top_k)
        .arg(&options.top_p)
        .arg(draws.slice())
        .arg(keys.slice_mut())
        .arg(probs.slice_mut())
        .arg(tokens.slice_mut());
    // SAFETY: as above; keys and probs hold rows x padded values.
    ctx.check_launch(unsafe { launch.launch(cfg) }, name)
}
