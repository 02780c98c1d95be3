//! Scoring on the GPU: the logits after every token of a sequence (what evaluation reads),
//! for a converted model or, uploaded with every layer softmax and no adapters, the base
//! model itself. CPU twins: `LigerModel::all_logits` and `BaseModel::all_logits`.
//!
//! The residual stream of the whole sequence is one forward (`forward_rows`); the logits go
//! through the LM head a chunk of rows at a time into the host vector, so the device never
//! holds more than one chunk of `rows x vocab` logits. Evaluation reads only what its metrics
//! need ([`GpuLigerModel::score_targets`]): the queried rows' target log-probabilities and
//! argmax flags, computed on the device.

use super::layer::Rows;
use super::GpuLigerModel;
use crate::buffer::GpuBuffer;
use crate::context::GpuContext;
use crate::error::driver_error;
use crate::gemm::{gemm, GemmDims, GemmInput};
use crate::ops::cross_entropy::score_rows;
use crate::ops::embedding::embedding_gather;
use liger_core::convert::{linearize, LigerModel, LigerOptions, LoraOptions};
use liger_core::eval::ScoreModel;
use liger_core::generate::CausalLm;
use liger_core::model::BaseModel;
use liger_core::tokenizer::Tokenizer;
use liger_core::{Error, ErrorCode, Result};

/// Logits kept on the device at once: about this many bytes per chunk of rows.
const LOGIT_CHUNK_BYTES: usize = 64 << 20;

/// `base` as a "converted" model whose every layer keeps softmax attention, without adapters:
/// the same function as the base model, in the form the GPU engine runs.
pub fn all_softmax(base: BaseModel) -> Result<LigerModel> {
    let layers = base.config.num_layers;
    let options = LigerOptions { softmax_layers: (0..layers).collect(), ..Default::default() };
    let lora = LoraOptions { targets: Vec::new(), ..Default::default() };
    linearize(base, options, lora)
}

/// Opens GPU `index` for evaluation and uploads `model` with its frozen weights in bf16 (pass
/// [`all_softmax`] of a base model to score the base model). No usable GPU is a
/// `DeviceUnavailable` error that says to use the CPU backend; a mixer without GPU kernels
/// (gdn) is refused before the GPU is opened.
pub fn upload_for_scoring(index: usize, model: LigerModel) -> Result<GpuLigerModel<half::bf16>> {
    crate::ops::mixer::check_gpu_attention(&model.options.attention)?;
    let ctx = super::open_gpu(index)?;
    super::memory::keep_freed_memory_pooled(&ctx)?;
    GpuLigerModel::new(ctx, model)
}

impl<T: GemmInput> GpuLigerModel<T> {
    /// Uploads a base model to score it on the GPU: every layer keeps softmax attention and
    /// there are no adapters, so its logits are the base model's.
    pub fn from_base(ctx: GpuContext, base: BaseModel) -> Result<Self> {
        Self::new(ctx, all_softmax(base)?)
    }

    /// Logits after every token (`T x vocab`) of one sequence, from an empty state.
    pub fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.all_logits_batch(&[tokens])?.pop().unwrap_or_default())
    }

    /// Logits after every token of each of several equally long sequences, in one forward:
    /// one `T x vocab` vector per sequence.
    pub fn all_logits_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let chunk_rows = (LOGIT_CHUNK_BYTES / (self.config().vocab_size * 4)).max(1);
        self.all_logits_in_chunks(sequences, chunk_rows)
    }

    /// [`GpuLigerModel::all_logits_batch`] with at most `chunk_rows` rows of logits on the
    /// device at once.
    pub fn all_logits_in_chunks(&self, sequences: &[&[u32]], chunk_rows: usize) -> Result<Vec<Vec<f32>>> {
        if chunk_rows == 0 {
            return Err(Error::invalid_argument(
                "logits are copied back at least one row at a time; give chunk_rows >= 1",
            ));
        }
        let rows = self.check_score_batch(sequences)?;
        self.sync_lora()?;
        let start = GpuBuffer::<u32>::zeros(&self.ctx, rows.batch)?;
        let x = self.forward_rows(sequences, rows, &start, None, None)?;
        let logits = self.logits_to_host(&x, rows.n(), chunk_rows)?;
        let per_sequence = rows.tokens * self.config().vocab_size;
        Ok(logits.chunks(per_sequence).map(<[f32]>::to_vec).collect())
    }

    fn check_score_batch(&self, sequences: &[&[u32]]) -> Result<Rows> {
        let tokens = sequences.first().map_or(0, |s| s.len());
        if tokens == 0 {
            return Err(Error::invalid_argument("scoring needs at least one non-empty token sequence"));
        }
        if let Some((i, s)) = sequences.iter().enumerate().find(|(_, s)| s.len() != tokens) {
            return Err(Error::invalid_argument(format!(
                "sequence {i} has {} tokens, the first {tokens}: score sequences of one length together, or one at a time",
                s.len()
            )));
        }
        if let Some(limit) = self.host.max_tokens() {
            if tokens > limit {
                return Err(Error::new(
                    ErrorCode::ContextOverflow,
                    format!("{tokens} tokens exceed the model's context of {limit} (its softmax layers); score shorter windows"),
                ));
            }
        }
        Ok(Rows { batch: sequences.len(), tokens })
    }

    /// The final norm of the residual stream `x` (`n` rows), then the LM head a chunk of
    /// rows at a time, each chunk copied into the returned `n x vocab` host vector.
    fn logits_to_host(&self, x: &GpuBuffer<f32>, n: usize, chunk_rows: usize) -> Result<Vec<f32>> {
        let ctx = &self.ctx;
        let c = self.config();
        let vocab = c.vocab_size;
        // The normalised stream in the head's storage type, as the GEMM takes it.
        let (_, hf) = self.norm(x, &self.weights.final_norm)?;
        let chunk_rows = chunk_rows.min(n);
        let mut chunk = GpuBuffer::<f32>::zeros(ctx, chunk_rows * vocab)?;
        let mut out = vec![0.0f32; n * vocab];
        for first in (0..n).step_by(chunk_rows) {
            let rows = chunk_rows.min(n - first);
            self.head_rows(&hf, first, rows, &mut chunk)?;
            let stream = ctx.stream();
            stream
                .memcpy_dtoh(&chunk.view(0..rows * vocab), &mut out[first * vocab..(first + rows) * vocab])
                .map_err(|e| driver_error(e, "copying logits from the GPU"))?;
        }
        ctx.stream().synchronize().map_err(|e| driver_error(e, "waiting for the GPU"))?;
        Ok(out)
    }

    /// For each `(row, target)`: the log-probability of `target` after token `row` of
    /// `tokens` and whether it is that row's argmax. Only the queried rows go through the LM
    /// head, and only two numbers per query come back to the host.
    pub fn score_targets(&self, tokens: &[u32], queries: &[(usize, u32)]) -> Result<Vec<(f64, bool)>> {
        let rows = self.check_score_batch(&[tokens])?;
        if let Some(&(row, _)) = queries.iter().find(|q| q.0 >= tokens.len()) {
            return Err(Error::invalid_argument(format!("row {row} is past the {} scored tokens", tokens.len())));
        }
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        self.sync_lora()?;
        let ctx = &self.ctx;
        let c = self.config();
        let (hs, vocab) = (c.hidden_size, c.vocab_size);
        let start = GpuBuffer::<u32>::zeros(ctx, rows.batch)?;
        let x = self.forward_rows(&[tokens], rows, &start, None, None)?;
        // The queried rows of the residual stream, side by side (the norm works per row).
        let picked: Vec<u32> = queries.iter().map(|&(row, _)| row as u32).collect();
        let mut xq = GpuBuffer::<f32>::zeros(ctx, picked.len() * hs)?;
        embedding_gather(ctx, &x, hs, &picked, &mut xq)?;
        let (_, hf) = self.norm(&xq, &self.weights.final_norm)?;
        let chunk_rows = (LOGIT_CHUNK_BYTES / (vocab * 4)).max(1).min(picked.len());
        let mut chunk = GpuBuffer::<f32>::zeros(ctx, chunk_rows * vocab)?;
        let mut out = Vec::with_capacity(queries.len());
        for first in (0..queries.len()).step_by(chunk_rows) {
            let n = chunk_rows.min(queries.len() - first);
            self.head_rows(&hf, first, n, &mut chunk)?;
            let targets: Vec<u32> = queries[first..first + n].iter().map(|q| q.1).collect();
            out.extend(score_rows(ctx, &chunk, vocab, &targets)?.into_iter().map(|(lp, g)| (lp as f64, g)));
        }
        Ok(out)
    }

    /// `out[..rows x vocab] = hf[first..first + rows] · headᵀ`: the one place that reads the LM head.
    fn head_rows(&self, hf: &GpuBuffer<T>, first: usize, rows: usize, out: &mut GpuBuffer<f32>) -> Result<()> {
        let c = self.config();
        let (hs, vocab) = (c.hidden_size, c.vocab_size);
        let dims = GemmDims { m: rows, n: vocab, k: hs, a_transposed: false, b_transposed: true };
        gemm(
            &self.ctx,
            dims,
            &hf.view(first * hs..(first + rows) * hs),
            self.weights.head().slice(),
            &mut out.view_mut(0..rows * vocab),
            false,
        )
    }
}

/// Evaluation on the GPU: the tasks, perplexity and passkey of `liger_core::eval` score
/// through this. Concurrent calls (the scorer runs distinct inputs on several threads) queue
/// their work on the model's one stream.
impl<T: GemmInput> ScoreModel for GpuLigerModel<T> {
    fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        GpuLigerModel::all_logits(self, tokens)
    }
    fn score_targets(&self, tokens: &[u32], queries: &[(usize, u32)]) -> Result<Vec<(f64, bool)>> {
        GpuLigerModel::score_targets(self, tokens, queries)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.host.base.tokenizer
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    /// The base context when softmax layers remain; none with Liger layers only.
    fn max_length(&self) -> Option<usize> {
        self.host.max_tokens()
    }
}
