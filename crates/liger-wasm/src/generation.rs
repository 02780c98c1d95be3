//! Generation one token per call, so the host can hand control back (to a page, a stream)
//! between tokens. Timing is the host's: wasm32-unknown-unknown has no clock.

use crate::abi::{bytes, set_result, status};
use crate::{next_handle, read_ids, with_model, MODELS};
use liger_core::convert::LigerModel;
use liger_core::generate::{GenerateOptions, Generator};
use liger_core::sampling::SamplingOptions;
use liger_core::{Error, Result};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;

/// Prompt tokens per forward call of the prefill: bounds its activations (a few MiB) so a
/// long prompt fits in the wasm memory.
const PREFILL_CHUNK: usize = 256;

struct Running {
    model: i32,
    generator: Generator<'static, LigerModel>,
}

thread_local! {
    static GENERATIONS: RefCell<HashMap<i32, Running>> = RefCell::new(HashMap::new());
}

/// Options as JSON: `{maxTokens, temperature, topK, topP, seed, stop, ignoreEos}` (all optional).
fn parse_options(json: &[u8]) -> Result<GenerateOptions> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| Error::invalid_argument(format!("generation options are not valid JSON: {e}")))?;
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let d = GenerateOptions::default();
    let stop = match v.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::invalid_argument("stop must be an array of strings"))?,
        Some(_) => return Err(Error::invalid_argument("stop must be an array of strings")),
    };
    Ok(GenerateOptions {
        max_tokens: num("maxTokens").map_or(d.max_tokens, |n| n as usize),
        sampling: SamplingOptions {
            temperature: num("temperature").map_or(d.sampling.temperature, |x| x as f32),
            top_k: num("topK").map_or(d.sampling.top_k, |x| x as usize),
            top_p: num("topP").map_or(d.sampling.top_p, |x| x as f32),
            seed: num("seed").map_or(d.sampling.seed, |x| x as u64),
        },
        stop,
        ignore_eos: v.get("ignoreEos").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Starts a generation from `n` prompt tokens (runs the prefill). Returns its handle.
///
/// # Safety
/// `ids` must hold `n` u32 and `opts..opts+opts_len` JSON, both written by the host.
#[no_mangle]
pub unsafe extern "C" fn liger_generate_start(
    model: i32,
    ids: *const u8,
    n: usize,
    opts: *const u8,
    opts_len: usize,
) -> i32 {
    status(|| {
        let prompt = read_ids(ids, n);
        let options = parse_options(bytes(opts, opts_len))?;
        let vocab = with_model(model, |m| Ok(m.config().vocab_size))?;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_argument(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let generator = with_model(model, |m| Generator::with_prefill_chunk(m, &prompt, &options, PREFILL_CHUNK))?;
        let handle = next_handle();
        MODELS.with(|m| m.borrow_mut().get_mut(&model).map(|l| l.generations += 1));
        GENERATIONS.with(|g| g.borrow_mut().insert(handle, Running { model, generator }));
        Ok(handle)
    })
}

/// The next token: its id (result: the text it releases, UTF-8), or -2 once the generation
/// is over (result: `{tokens, text, finishReason, promptTokens}` as JSON).
#[no_mangle]
pub extern "C" fn liger_generate_step(handle: i32) -> i32 {
    status(|| {
        GENERATIONS.with(|g| {
            let mut g = g.borrow_mut();
            let running = g.get_mut(&handle).ok_or_else(|| {
                Error::invalid_argument(format!("generation {handle} does not exist (finished and freed?)"))
            })?;
            match running.generator.step()? {
                Some((id, text)) => {
                    set_result(text.into_bytes());
                    Ok(id as i32)
                }
                None => {
                    let r = running.generator_result();
                    set_result(r.to_string().into_bytes());
                    Ok(-2)
                }
            }
        })
    })
}

impl Running {
    /// The result so far, as JSON (the generator stays until it is freed).
    fn generator_result(&self) -> Value {
        let r = self.generator.result();
        json!({ "tokens": r.tokens, "text": r.text, "finishReason": r.finish_reason.as_str(), "promptTokens": r.prompt_tokens })
    }
}

/// Makes the next step end the generation (finish reason "aborted").
#[no_mangle]
pub extern "C" fn liger_generate_abort(handle: i32) -> i32 {
    status(|| {
        GENERATIONS.with(|g| g.borrow_mut().get_mut(&handle).map(|r| r.generator.abort()));
        Ok(0)
    })
}

/// Bytes of the generation's decoding state now.
#[no_mangle]
pub extern "C" fn liger_generate_state_bytes(handle: i32) -> f64 {
    GENERATIONS.with(|g| g.borrow().get(&handle).map_or(0.0, |r| r.generator.state().bytes() as f64))
}

/// Frees a generation (finished or not).
#[no_mangle]
pub extern "C" fn liger_generate_free(handle: i32) -> i32 {
    status(|| {
        if let Some(r) = GENERATIONS.with(|g| g.borrow_mut().remove(&handle)) {
            MODELS.with(|m| m.borrow_mut().get_mut(&r.model).map(|l| l.generations -= 1));
        }
        Ok(0)
    })
}
