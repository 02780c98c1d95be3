//! Perplexity of raw text with lm-eval's rolling log-likelihood.
//!
//! Method: each document is tokenized whole (no BOS) and cut into non-overlapping windows of
//! `window` predicted tokens. The first window reads the prefix token (BOS, else EOS) and then
//! the document, predicting every one of its tokens; each later window predicts the next
//! `window` tokens given only the one token before them, except the last, shorter window, which
//! is filled up with as many earlier tokens as fit. Every token is predicted exactly once.
//! Reported: token perplexity exp(NLL / tokens), word perplexity exp(NLL / words), byte
//! perplexity exp(NLL / bytes) and bits per byte NLL / bytes / ln 2, with words and bytes
//! counted on each document as given (lm-eval's wikitext counts them before detokenization).

use super::loglik::{prefix_token, score_tokens, ScoreStats, TokenRequest};
use super::{Progress, ScoreModel};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A document to score: the text the model reads, and the word and byte counts to normalise by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoredText {
    pub text: String,
    pub words: usize,
    pub bytes: usize,
}

impl ScoredText {
    /// Plain text, counted as it is (words split on whitespace runs).
    pub fn plain(text: impl Into<String>) -> Self {
        let text = text.into();
        ScoredText { words: super::wikitext::count_words(&text), bytes: text.len(), text }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PerplexityResult {
    pub documents: usize,
    pub windows: usize,
    pub window: usize,
    pub tokens: usize,
    pub words: usize,
    pub bytes: usize,
    /// Total negative log-likelihood in nats.
    pub nll: f64,
    pub token_perplexity: f64,
    pub word_perplexity: f64,
    pub byte_perplexity: f64,
    pub bits_per_byte: f64,
    pub stats: ScoreStats,
}

/// The disjoint (context, continuation) windows of `tokens` described in the module comment.
/// Each window's context + continuation holds at most `window + 1` tokens.
pub fn rolling_windows(tokens: &[u32], prefix: u32, window: usize) -> Result<Vec<TokenRequest>> {
    if window == 0 {
        return Err(Error::invalid_argument("the perplexity window must hold at least one token"));
    }
    let n = tokens.len();
    let mut out = Vec::new();
    if n == 0 {
        return Ok(out);
    }
    let first = window.min(n);
    out.push(TokenRequest { context: vec![prefix], continuation: tokens[..first].to_vec() });
    let mut predicted = first;
    while predicted < n {
        let len = (n - predicted).min(window);
        let end = predicted + len;
        out.push(TokenRequest {
            context: tokens[end - window - 1..end - len].to_vec(),
            continuation: tokens[end - len..end].to_vec(),
        });
        predicted = end;
    }
    Ok(out)
}

/// Rolling perplexity of `docs` with windows of `window` tokens (see the module comment).
pub fn rolling_perplexity(
    model: &dyn ScoreModel,
    docs: &[ScoredText],
    window: usize,
    progress: Option<Progress>,
) -> Result<PerplexityResult> {
    let tok = model.tokenizer();
    let prefix = prefix_token(tok)?;
    let mut requests = Vec::new();
    let mut tokens = 0;
    for d in docs {
        let ids = tok.encode(&d.text, false, true)?;
        tokens += ids.len();
        requests.extend(rolling_windows(&ids, prefix, window)?);
    }
    if tokens == 0 {
        return Err(Error::invalid_argument("the text to score encodes to no tokens; give a non-empty text"));
    }
    let (results, stats) = score_tokens(model, &requests, Some(window), progress)?;
    let nll = -results.iter().map(|r| r.logprob).sum::<f64>();
    let words: usize = docs.iter().map(|d| d.words).sum();
    let bytes: usize = docs.iter().map(|d| d.bytes).sum();
    let per = |count: usize| if count > 0 { nll / count as f64 } else { f64::NAN };
    Ok(PerplexityResult {
        documents: docs.len(),
        windows: requests.len(),
        window,
        tokens,
        words,
        bytes,
        nll,
        token_perplexity: per(tokens).exp(),
        word_perplexity: per(words).exp(),
        byte_perplexity: per(bytes).exp(),
        bits_per_byte: per(bytes) / std::f64::consts::LN_2,
        stats,
    })
}
