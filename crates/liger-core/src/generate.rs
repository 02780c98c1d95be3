//! The generation loop shared by every model: prefill the prompt, then sample one token at a
//! time until the token budget, an end-of-sequence token, a stop string or cancellation.

use crate::error::{Error, Result};
use crate::sampling::{Sampler, SamplingOptions};
use crate::stop::{StopMatcher, StopStatus};
use crate::tokenizer::{TextStream, Tokenizer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A model that reads tokens in order and predicts the next one.
pub trait CausalLm {
    /// What the model keeps between calls (a KV cache, or recurrent states).
    type State;
    fn new_state(&self) -> Self::State;
    /// Appends `tokens` to `state` and returns the logits after the last one.
    fn forward_last(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Vec<f32>>;
    fn tokenizer(&self) -> &Tokenizer;
    /// Tokens that end generation.
    fn eos_ids(&self) -> Vec<u32>;
    /// The most tokens one sequence may hold, if bounded.
    fn max_tokens(&self) -> Option<usize>;
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, sampling: SamplingOptions::default(), stop: Vec::new(), ignore_eos: false }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    Eos,
    Stop,
    Aborted,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Aborted => "aborted",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateResult {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Generates from `prompt`, calling `on_token(id, text)` for each new token with the text it
/// releases (possibly empty while UTF-8 or a possible stop string is incomplete).
pub fn generate<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    on_token: &mut dyn FnMut(u32, &str),
) -> Result<GenerateResult> {
    if prompt.is_empty() {
        return Err(Error::invalid_argument("the prompt is empty: give at least one token"));
    }
    if let Some(limit) = model.max_tokens() {
        if prompt.len() >= limit {
            return Err(Error::new(
                crate::ErrorCode::ContextOverflow,
                format!("the prompt has {} tokens but the model's context holds {limit}; shorten the prompt", prompt.len()),
            ));
        }
    }
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let eos = if opts.ignore_eos { Vec::new() } else { model.eos_ids() };
    let max_new = model.max_tokens().map_or(opts.max_tokens, |limit| opts.max_tokens.min(limit - prompt.len()));
    let mut stream = TextStream::new(model.tokenizer());
    let mut stops = StopMatcher::new(&opts.stop);
    let mut result = GenerateResult {
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        prompt_tokens: prompt.len(),
        prefill_ms: 0.0,
        decode_ms: 0.0,
    };

    let start = Instant::now();
    let mut state = model.new_state();
    let mut logits = model.forward_last(&mut state, prompt)?;
    result.prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    let decode_start = Instant::now();
    while result.tokens.len() < max_new {
        if cancel.load(Ordering::Relaxed) {
            result.finish_reason = FinishReason::Aborted;
            break;
        }
        let id = sampler.sample(&logits);
        if eos.contains(&id) {
            result.finish_reason = FinishReason::Eos;
            break;
        }
        result.tokens.push(id);
        let piece = stream.push(id)?;
        match stops.push(&piece) {
            StopStatus::Continue(text) => {
                result.text.push_str(&text);
                on_token(id, &text);
            }
            StopStatus::Stopped(text) => {
                result.text.push_str(&text);
                on_token(id, &text);
                result.finish_reason = FinishReason::Stop;
                break;
            }
        }
        if result.tokens.len() < max_new {
            logits = model.forward_last(&mut state, &[id])?;
        }
    }
    if result.finish_reason != FinishReason::Stop {
        // Release what was held back (an unfinished UTF-8 sequence, a partial stop string).
        let tail = stream.finish();
        let tail = match stops.push(&tail) {
            StopStatus::Continue(t) => t + &stops.finish(),
            StopStatus::Stopped(t) => {
                result.finish_reason = FinishReason::Stop;
                t
            }
        };
        if !tail.is_empty() {
            result.text.push_str(&tail);
            if let Some(&last) = result.tokens.last() {
                on_token(last, &tail);
            }
        }
    }
    result.decode_ms = decode_start.elapsed().as_secs_f64() * 1e3;
    Ok(result)
}
