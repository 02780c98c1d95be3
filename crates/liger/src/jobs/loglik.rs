//! Log-likelihoods of continuations after contexts, scored the way the evaluation tasks score
//! them (lm-evaluation-harness's tokenization, left truncation), with the tokens each request
//! was split into, so a caller can score the same tokens elsewhere.

use std::sync::atomic::AtomicBool;

use liger_core::eval::loglik::{encode_pair, score_tokens, TokenRequest};
use liger_core::eval::{EvalOptions, LoglikRequest, ScoreModel, ScoreStats};
use liger_core::{Error, Result};
use serde::Serialize;

use super::{throttled_progress, Cancellable, OnEvalEvent};
use crate::Model;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoglikelihoodOptions {
    /// Longest input scored at once (longer ones are cut from the left); none: the model's.
    pub max_length: Option<usize>,
    /// Put BOS before every non-empty context (lm-eval's add_bos_token).
    pub add_bos: bool,
}

/// One request's score, with the tokens it was split into.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoglikelihoodScore {
    /// Sum of the natural-log probabilities of the continuation's tokens.
    pub logprob: f64,
    /// Whether greedy decoding reproduces every continuation token.
    pub is_greedy: bool,
    /// The context's tokens (a lone BOS/EOS for an empty context).
    pub context_tokens: Vec<u32>,
    /// The continuation's tokens (a token merging across the boundary belongs here).
    pub continuation_tokens: Vec<u32>,
    /// Whether the input was longer than the length limit and cut from the left.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoglikelihoodResult {
    pub results: Vec<LoglikelihoodScore>,
    pub stats: ScoreStats,
}

/// Scores every request with `model` on the CPU.
pub fn loglikelihood(
    model: &Model,
    requests: &[LoglikRequest],
    options: &LoglikelihoodOptions,
    cancel: &AtomicBool,
    on_event: OnEvalEvent,
) -> Result<LoglikelihoodResult> {
    if requests.is_empty() {
        return Err(Error::invalid_argument("loglikelihood needs at least one request"));
    }
    let core = EvalOptions { max_length: options.max_length, add_bos: options.add_bos, ..Default::default() };
    let scorer = Cancellable { model: model.scorer(), cancel };
    let tok = scorer.tokenizer();
    let encoded = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            encode_pair(tok, &r.context, &r.continuation, core.add_bos).map_err(|e| e.context(format!("request {i}")))
        })
        .collect::<Result<Vec<TokenRequest>>>()?;
    let max_length = core.effective_max_length(&scorer);
    let progress = throttled_progress(on_event, "loglikelihood");
    let (scores, stats) = score_tokens(&scorer, &encoded, max_length, Some(&progress))?;
    let results = scores
        .iter()
        .zip(encoded)
        .map(|(score, tokens)| {
            // The model reads the context and all but the last continuation token.
            let length = tokens.context.len() + tokens.continuation.len() - 1;
            LoglikelihoodScore {
                logprob: score.logprob,
                is_greedy: score.is_greedy,
                context_tokens: tokens.context,
                continuation_tokens: tokens.continuation,
                truncated: max_length.is_some_and(|m| length > m),
            }
        })
        .collect();
    Ok(LoglikelihoodResult { results, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scores_serialize_as_javascript_reads_them() {
        let score = LoglikelihoodScore {
            logprob: -1.5,
            is_greedy: true,
            context_tokens: vec![1, 2],
            continuation_tokens: vec![3],
            truncated: false,
        };
        assert_eq!(
            serde_json::to_value(&score).unwrap(),
            json!({ "logprob": -1.5, "isGreedy": true, "contextTokens": [1, 2], "continuationTokens": [3], "truncated": false })
        );
        assert_eq!(LoglikelihoodOptions::default(), LoglikelihoodOptions { max_length: None, add_bos: false });
    }
}
