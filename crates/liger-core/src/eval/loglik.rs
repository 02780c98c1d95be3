//! Log-likelihood of a continuation given a context, as lm-evaluation-harness computes it.
//!
//! Tokenization: trailing spaces of the context move to the continuation, then
//! `context + continuation` is encoded as one string and split at the token length of the
//! encoded context (so a merge across the boundary goes to the continuation). An empty context
//! is replaced by the prefix token (BOS, else EOS).
//!
//! Scoring: the model reads `(context + continuation)[..len - 1]`, cut from the left to
//! `max_length` tokens if longer; the continuation's log-probabilities are summed, and the
//! continuation is "greedy" when every one of its tokens is the argmax. Requests whose model
//! input is the same token sequence (the single-token answers " A".." D" of one question, for
//! example) share one forward.

use super::{EvalOptions, Progress, ScoreModel};
use crate::error::{Error, ErrorCode, Result};
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A continuation to score after a context (both plain text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoglikRequest {
    pub context: String,
    pub continuation: String,
}

impl LoglikRequest {
    pub fn new(context: impl Into<String>, continuation: impl Into<String>) -> Self {
        LoglikRequest { context: context.into(), continuation: continuation.into() }
    }
}

/// The same request, tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LoglikResult {
    /// Sum of the natural-log probabilities of the continuation's tokens.
    pub logprob: f64,
    /// Whether greedy decoding reproduces the continuation.
    pub is_greedy: bool,
    /// Number of continuation tokens scored.
    pub num_tokens: usize,
}

/// What a batch of requests cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScoreStats {
    pub requests: usize,
    /// Forward passes run (requests sharing an input share one).
    pub forwards: usize,
    /// Tokens fed to the model over all forwards.
    pub tokens_processed: usize,
    /// Requests cut from the left because they exceeded the length limit.
    pub truncated: usize,
    pub seconds: f64,
}

impl ScoreStats {
    pub fn add(&mut self, other: &ScoreStats) {
        self.requests += other.requests;
        self.forwards += other.forwards;
        self.tokens_processed += other.tokens_processed;
        self.truncated += other.truncated;
        self.seconds += other.seconds;
    }
    pub fn tokens_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens_processed as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The token put in front of an empty context: BOS, else EOS (lm-eval's `prefix_token_id`).
pub fn prefix_token(tok: &Tokenizer) -> Result<u32> {
    tok.bos_id().or(tok.eos_id()).ok_or_else(|| {
        Error::new(
            ErrorCode::MissingTokenizer,
            "the tokenizer has neither a BOS nor an EOS token to start an empty context with",
        )
    })
}

fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    // Hugging Face tokenizers (which lm-eval uses) recognize special tokens written in text.
    tok.encode(text, false, true)
}

/// Tokenizes a (context, continuation) pair the way lm-eval does (see the module comment).
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str, add_bos: bool) -> Result<TokenRequest> {
    let mut context_enc;
    let continuation_enc;
    let trimmed = context.trim_end();
    if trimmed.is_empty() {
        context_enc = vec![prefix_token(tok)?];
        continuation_enc = encode(tok, &format!("{context}{continuation}"))?;
    } else {
        let moved = &context[trimmed.len()..];
        let whole = encode(tok, &format!("{trimmed}{moved}{continuation}"))?;
        context_enc = encode(tok, trimmed)?;
        let split = context_enc.len().min(whole.len());
        continuation_enc = whole[split..].to_vec();
        if add_bos {
            let bos = tok
                .bos_id()
                .ok_or_else(|| Error::invalid_argument("add_bos is set but the tokenizer has no BOS token"))?;
            context_enc.insert(0, bos);
        }
    }
    if continuation_enc.is_empty() {
        return Err(Error::invalid_argument(format!(
            "the continuation {continuation:?} after {:?} encodes to no tokens; give a non-empty continuation",
            tail_chars(context, 40)
        )));
    }
    Ok(TokenRequest { context: context_enc, continuation: continuation_enc })
}

fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// Scores text requests: tokenizes them (see [`encode_pair`]) then calls [`score_tokens`].
pub fn loglikelihood(
    model: &dyn ScoreModel,
    requests: &[LoglikRequest],
    opts: &EvalOptions,
    progress: Option<Progress>,
) -> Result<(Vec<LoglikResult>, ScoreStats)> {
    let tok = model.tokenizer();
    let encoded: Vec<TokenRequest> = requests
        .par_iter()
        .map(|r| encode_pair(tok, &r.context, &r.continuation, opts.add_bos))
        .collect::<Result<_>>()?;
    score_tokens(model, &encoded, opts.effective_max_length(model), progress)
}

/// The model input of one request: `(context + continuation)[..len - 1]`, cut from the left
/// to `max_length`. Returns the input and whether it was cut.
fn model_input(r: &TokenRequest, max_length: Option<usize>) -> Result<(Vec<u32>, bool)> {
    if r.context.is_empty() || r.continuation.is_empty() {
        return Err(Error::invalid_argument("a scoring request needs at least one context and one continuation token"));
    }
    if let Some(max) = max_length {
        if r.continuation.len() > max {
            return Err(Error::new(
                ErrorCode::ContextOverflow,
                format!(
                    "a continuation of {} tokens does not fit in the length limit of {max}; raise max_length or shorten it",
                    r.continuation.len()
                ),
            ));
        }
    }
    let whole: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    let start = max_length.map_or(0, |m| whole.len().saturating_sub(m + 1));
    Ok((whole[start..whole.len() - 1].to_vec(), start > 0))
}

/// Natural-log probability of `target` under `row`'s softmax, and whether it is the argmax.
pub(crate) fn score_row(row: &[f32], target: u32) -> Result<(f64, bool)> {
    let target = target as usize;
    if target >= row.len() {
        return Err(Error::invalid_argument(format!(
            "token id {target} is outside the model's vocabulary of {}",
            row.len()
        )));
    }
    let (mut argmax, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > max {
            max = v;
            argmax = i;
        }
    }
    if !max.is_finite() {
        return Err(Error::new(ErrorCode::Internal, "the model produced non-finite logits"));
    }
    let max = max as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    Ok((row[target] as f64 - max - sum.ln(), argmax == target))
}

/// Scores tokenized requests. Requests with the same model input share one forward; distinct
/// inputs run in parallel, longest first.
pub fn score_tokens(
    model: &dyn ScoreModel,
    requests: &[TokenRequest],
    max_length: Option<usize>,
    progress: Option<Progress>,
) -> Result<(Vec<LoglikResult>, ScoreStats)> {
    let start = Instant::now();
    let mut stats = ScoreStats { requests: requests.len(), ..Default::default() };
    let mut inputs: Vec<Vec<u32>> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let (input, truncated) = model_input(r, max_length)?;
        stats.truncated += truncated as usize;
        let slot = *index.entry(input.clone()).or_insert_with(|| {
            inputs.push(input);
            members.push(Vec::new());
            inputs.len() - 1
        });
        members[slot].push(i);
    }
    stats.forwards = inputs.len();
    stats.tokens_processed = inputs.iter().map(Vec::len).sum();

    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&u| std::cmp::Reverse(inputs[u].len()));
    let done = AtomicUsize::new(0);
    let scored: Vec<Vec<(usize, LoglikResult)>> = order
        .par_iter()
        .map(|&u| {
            let input = &inputs[u];
            // Every (row, target) that a member of this forward reads, in member order.
            let mut queries = Vec::new();
            for &i in &members[u] {
                let cont = &requests[i].continuation;
                let first_row = input.len() - cont.len();
                queries.extend(cont.iter().enumerate().map(|(j, &t)| (first_row + j, t)));
            }
            let scores = model.score_targets(input, &queries)?;
            if scores.len() != queries.len() {
                return Err(Error::internal(format!(
                    "the model scored {} of {} positions",
                    scores.len(),
                    queries.len()
                )));
            }
            let mut out = Vec::with_capacity(members[u].len());
            let mut next = scores.iter();
            for &i in &members[u] {
                let n = requests[i].continuation.len();
                let mut result = LoglikResult { logprob: 0.0, is_greedy: true, num_tokens: n };
                for &(lp, greedy) in next.by_ref().take(n) {
                    if !lp.is_finite() {
                        return Err(Error::new(ErrorCode::Internal, "the model produced non-finite logits"));
                    }
                    result.logprob += lp;
                    result.is_greedy &= greedy;
                }
                out.push((i, result));
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(p) = progress {
                p(n, inputs.len());
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;

    let mut results = vec![LoglikResult { logprob: 0.0, is_greedy: false, num_tokens: 0 }; requests.len()];
    for (i, r) in scored.into_iter().flatten() {
        results[i] = r;
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok((results, stats))
}
