//! The generation loop shared by every model: prefill the prompt, then sample one token at a
//! time until the token budget, an end-of-sequence token, a stop string or cancellation. The
//! engine picks each token (`CausalLm::forward_sample`): on the CPU from the logits here, on
//! the GPU on the device, so that only the token comes back.

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
    /// Appends `tokens` to `state` and picks the token after them with `sampler`. An engine
    /// whose logits live on another device overrides this to sample there and return only
    /// the token (it must pick what `sampler.sample` picks from the same logits, taking its
    /// random draw from `sampler.draw`); the default samples the logits here.
    fn forward_sample(&self, state: &mut Self::State, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        let logits = self.forward_last(state, tokens)?;
        Ok(sampler.sample(&logits))
    }
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
    if cancel.load(Ordering::Relaxed) && !prompt.is_empty() {
        // Cancelled while it waited (e.g. for a GPU another generation held): no prefill.
        return Ok(GenerateResult {
            tokens: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Aborted,
            prompt_tokens: prompt.len(),
            prefill_ms: 0.0,
            decode_ms: 0.0,
        });
    }
    let start = Instant::now();
    let mut generator = Generator::new(model, prompt, opts)?;
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    let decode_start = Instant::now();
    loop {
        if cancel.load(Ordering::Relaxed) {
            generator.abort();
        }
        match generator.step()? {
            Some((id, text)) => on_token(id, &text),
            None => break,
        }
    }
    let mut result = generator.into_result();
    result.prefill_ms = prefill_ms;
    result.decode_ms = decode_start.elapsed().as_secs_f64() * 1e3;
    Ok(result)
}

/// The generation loop one token at a time, for callers that cannot block until the end
/// (a WebAssembly page hands control back to the browser between tokens). It keeps no clock:
/// `prefill_ms` and `decode_ms` of its result are left at zero for the caller to fill in.
pub struct Generator<'m, M: CausalLm> {
    model: &'m M,
    state: M::State,
    /// The token the model picked after what it has read; the next step emits it.
    next: u32,
    sampler: Sampler,
    eos: Vec<u32>,
    max_new: usize,
    stream: TextStream<'m>,
    stops: StopMatcher,
    result: GenerateResult,
    aborted: bool,
    finished: bool,
}

impl<'m, M: CausalLm> Generator<'m, M> {
    /// Checks the request and runs the prompt through the model (the prefill).
    pub fn new(model: &'m M, prompt: &[u32], opts: &GenerateOptions) -> Result<Self> {
        Self::with_prefill_chunk(model, prompt, opts, usize::MAX)
    }

    /// As [`Generator::new`], feeding the prompt `chunk` tokens at a time: the activations of
    /// the prefill then take memory for `chunk` tokens, not the whole prompt (the decoding
    /// state carries over between chunks, so the result is the same).
    pub fn with_prefill_chunk(model: &'m M, prompt: &[u32], opts: &GenerateOptions, chunk: usize) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::invalid_argument("the prompt is empty: give at least one token"));
        }
        if let Some(limit) = model.max_tokens() {
            if prompt.len() >= limit {
                return Err(Error::new(
                    crate::ErrorCode::ContextOverflow,
                    format!(
                        "the prompt has {} tokens but the model's context holds {limit}; shorten the prompt",
                        prompt.len()
                    ),
                ));
            }
        }
        let mut sampler = Sampler::new(opts.sampling.clone())?;
        let eos = if opts.ignore_eos { Vec::new() } else { model.eos_ids() };
        let max_new = model.max_tokens().map_or(opts.max_tokens, |limit| opts.max_tokens.min(limit - prompt.len()));
        let mut state = model.new_state();
        // The chunks from the start; the last (the remainder) also picks the first token.
        let chunk = chunk.max(1);
        let last_len = match prompt.len() % chunk {
            0 => chunk.min(prompt.len()),
            rest => rest,
        };
        let (head, last) = prompt.split_at(prompt.len() - last_len);
        for part in head.chunks(chunk) {
            model.forward_last(&mut state, part)?;
        }
        let next = model.forward_sample(&mut state, last, &mut sampler)?;
        Ok(Generator {
            model,
            state,
            next,
            sampler,
            eos,
            max_new,
            stream: TextStream::new(model.tokenizer()),
            stops: StopMatcher::new(&opts.stop),
            result: GenerateResult {
                tokens: Vec::new(),
                text: String::new(),
                finish_reason: FinishReason::Length,
                prompt_tokens: prompt.len(),
                prefill_ms: 0.0,
                decode_ms: 0.0,
            },
            aborted: false,
            finished: false,
        })
    }

    /// Makes the next step end the generation with reason `aborted`.
    pub fn abort(&mut self) {
        self.aborted = true;
    }

    /// The model's decoding state (its memory stays constant for a Liger model).
    pub fn state(&self) -> &M::State {
        &self.state
    }

    /// The next token and the text it releases; at the end, possibly one more event with the
    /// last token and the text held back until then; then `None`.
    pub fn step(&mut self) -> Result<Option<(u32, String)>> {
        if self.finished {
            return Ok(None);
        }
        if self.result.tokens.len() >= self.max_new || self.aborted {
            if self.aborted {
                self.result.finish_reason = FinishReason::Aborted;
            }
            return Ok(self.finish());
        }
        let id = self.next;
        if self.eos.contains(&id) {
            self.result.finish_reason = FinishReason::Eos;
            return Ok(self.finish());
        }
        self.result.tokens.push(id);
        let piece = self.stream.push(id)?;
        let text = match self.stops.push(&piece) {
            StopStatus::Continue(text) => text,
            StopStatus::Stopped(text) => {
                self.result.finish_reason = FinishReason::Stop;
                self.finished = true;
                text
            }
        };
        self.result.text.push_str(&text);
        if !self.finished && self.result.tokens.len() < self.max_new {
            self.next = self.model.forward_sample(&mut self.state, &[id], &mut self.sampler)?;
        }
        Ok(Some((id, text)))
    }

    /// Ends the generation: releases what was held back (an unfinished UTF-8 sequence, a
    /// partial stop string) as one last event, if there is any.
    fn finish(&mut self) -> Option<(u32, String)> {
        self.finished = true;
        let tail = self.stream.finish();
        let tail = match self.stops.push(&tail) {
            StopStatus::Continue(t) => t + &self.stops.finish(),
            StopStatus::Stopped(t) => {
                self.result.finish_reason = FinishReason::Stop;
                t
            }
        };
        if tail.is_empty() {
            return None;
        }
        self.result.text.push_str(&tail);
        self.result.tokens.last().map(|&last| (last, tail))
    }

    /// The result so far (complete once `step` has returned `None`).
    pub fn result(&self) -> &GenerateResult {
        &self.result
    }

    /// The result, taking the generator.
    pub fn into_result(self) -> GenerateResult {
        self.result
    }
}
