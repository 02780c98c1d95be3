//! Evaluation: zero-shot tasks scored the way lm-evaluation-harness scores them, perplexity on
//! raw text, long-context passkey retrieval, and reports comparing a base model with its
//! linearized version.
//!
//! Every model is scored through [`ScoreModel`]: the logits after every token of one
//! sequence. Everything else (tokenizing context/continuation pairs, truncation, sharing
//! forwards between requests, metrics) is built on top of it.
//!
//! Batching: requests whose model input is the same token sequence share one forward (all
//! single-token answers of a question, e.g. MMLU's " A".." D"); every other request is its own
//! forward, and distinct forwards run in parallel. Sharing only the context prefix of
//! multi-token answers would need a model state that can be copied, which `ScoreModel` does
//! not ask for, so that is left to a later extension of the trait.

pub mod loglik;
pub mod passkey;
pub mod perplexity;
pub mod report;
pub mod tasks;

mod formats;
mod wikitext;

#[cfg(test)]
mod tests;

use crate::error::Result;
use crate::model::BaseModel;
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

pub use loglik::{encode_pair, loglikelihood, LoglikRequest, LoglikResult, ScoreStats};
pub use passkey::{passkey_by_generation, passkey_by_loglikelihood, PasskeyOptions, PasskeyReport};
pub use perplexity::{rolling_windows, PerplexityResult};
#[cfg(not(target_arch = "wasm32"))]
pub use report::write_json;
pub use report::{compare, Comparison, EvalReport};
pub use tasks::{run_task, Task, TaskResult, TASK_NAMES};

/// A model that can be scored: logits after every token of a sequence.
pub trait ScoreModel: Sync {
    /// Logits after every token (`T x vocab`) of one sequence, from an empty state.
    fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// For each `(row, target)` of `queries`: the natural-log probability of `target` after
    /// token `row` of `tokens`, and whether `target` is that row's argmax (the first largest
    /// logit on ties). What every metric reads; an engine that can compute it without
    /// returning the vocabulary's logits (the GPU) overrides this.
    fn score_targets(&self, tokens: &[u32], queries: &[(usize, u32)]) -> Result<Vec<(f64, bool)>> {
        let logits = self.all_logits(tokens)?;
        let vocab = self.vocab_size();
        if logits.len() != tokens.len() * vocab {
            return Err(crate::error::Error::internal(format!(
                "the model returned {} logits for {} tokens x {vocab} vocabulary",
                logits.len(),
                tokens.len()
            )));
        }
        queries
            .iter()
            .map(|&(row, target)| match logits.get(row * vocab..(row + 1) * vocab) {
                Some(r) => loglik::score_row(r, target),
                None => Err(crate::error::Error::invalid_argument(format!(
                    "row {row} is past the {} scored tokens",
                    tokens.len()
                ))),
            })
            .collect()
    }
    fn tokenizer(&self) -> &Tokenizer;
    fn vocab_size(&self) -> usize;
    /// Longest sequence scored at once (the base model's context; a Liger model may say None).
    fn max_length(&self) -> Option<usize>;
}

impl ScoreModel for BaseModel {
    fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        BaseModel::all_logits(self, tokens)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn max_length(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }
}

impl ScoreModel for crate::convert::LigerModel {
    fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        crate::convert::LigerModel::all_logits(self, tokens)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.base.tokenizer
    }
    fn vocab_size(&self) -> usize {
        self.base.config.vocab_size
    }
    /// A Liger model with softmax layers keeps the base model's context; without, none.
    fn max_length(&self) -> Option<usize> {
        crate::generate::CausalLm::max_tokens(self)
    }
}

/// Settings shared by every task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvalOptions {
    /// Longest input scored at once; longer inputs are cut from the left. `None`: the model's
    /// own `max_length()`, and no limit if it has none.
    pub max_length: Option<usize>,
    /// Score a fixed subset of this many items per task (per subject for MMLU), drawn with `seed`.
    pub limit: Option<usize>,
    pub seed: u64,
    /// Put the model's BOS token before every context (lm-eval's `add_bos_token`, off by default).
    pub add_bos: bool,
    /// Window length of rolling perplexity; `None`: the effective `max_length`.
    pub perplexity_window: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { max_length: None, limit: None, seed: 1234, add_bos: false, perplexity_window: None }
    }
}

impl EvalOptions {
    /// The length limit in force for `model`: the option if set, else the model's own.
    pub fn effective_max_length(&self, model: &dyn ScoreModel) -> Option<usize> {
        match (self.max_length, model.max_length()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Reports `(done, total)` while a task runs; called from worker threads.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);
