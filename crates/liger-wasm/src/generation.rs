//! Generation one token per call, so the host can hand control back (to a page, a stream)
//! between tokens. Timing is the host's: wasm32-unknown-unknown has no clock.

use crate::model::Loaded;
use crate::{js_error, JsResult};
use liger_core::convert::LigerModel;
use liger_core::generate::{GenerateOptions, Generator};
use liger_core::sampling::SamplingOptions;
use liger_core::{Error, Result};
use serde_json::{json, Value};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// Prompt tokens per forward call of the prefill: bounds its activations (a few MiB) so a
/// long prompt fits in the wasm memory.
const PREFILL_CHUNK: usize = 256;

/// One running generation: call `step()` for each token.
#[wasm_bindgen]
pub struct Generation {
    /// Borrows `model`'s model: declared first, so it is dropped before the model it borrows.
    generator: Generator<'static, LigerModel>,
    /// The text the last step released.
    text: String,
    /// Keeps the model alive while the generation runs, even if the model is freed.
    _model: Rc<Loaded>,
}

impl Generation {
    pub(crate) fn start(model: Rc<Loaded>, prompt: &[u32], options_json: &str) -> Result<Self> {
        let options = parse_options(options_json)?;
        let vocab = model.model.config().vocab_size;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_argument(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        // SAFETY: the model lives in the `Rc` this generation holds until after the generator
        // (field order), and nothing moves or mutates it: the borrow cannot outlive it.
        let borrowed: &'static LigerModel = unsafe { &*(&model.model as *const LigerModel) };
        let generator = Generator::with_prefill_chunk(borrowed, prompt, &options, PREFILL_CHUNK)?;
        Ok(Generation { generator, text: String::new(), _model: model })
    }
}

#[wasm_bindgen]
impl Generation {
    /// The next token's id (its text is then [`Generation::text`]), or undefined once the
    /// generation is over (see [`Generation::result`]).
    pub fn step(&mut self) -> JsResult<Option<u32>> {
        match self.generator.step().map_err(js_error)? {
            Some((id, text)) => {
                self.text = text;
                Ok(Some(id))
            }
            None => {
                self.text.clear();
                Ok(None)
            }
        }
    }

    /// The text the last step released (UTF-8 held back until a character is complete).
    #[wasm_bindgen(getter)]
    pub fn text(&self) -> String {
        self.text.clone()
    }

    /// The result so far as JSON: `{tokens, text, finishReason, promptTokens}`.
    pub fn result(&self) -> String {
        let r = self.generator.result();
        json!({ "tokens": r.tokens, "text": r.text, "finishReason": r.finish_reason.as_str(), "promptTokens": r.prompt_tokens })
            .to_string()
    }

    /// Makes the next step end the generation (finish reason "aborted").
    pub fn abort(&mut self) {
        self.generator.abort();
    }

    /// Bytes of the decoding state now (constant for a Liger model).
    #[wasm_bindgen(js_name = stateBytes)]
    pub fn state_bytes(&self) -> f64 {
        self.generator.state().bytes() as f64
    }
}

/// Options as JSON: `{maxTokens, temperature, topK, topP, seed, stop, ignoreEos}` (all optional).
fn parse_options(json: &str) -> Result<GenerateOptions> {
    let v: Value = serde_json::from_str(json)
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

#[cfg(test)]
mod tests {
    use super::parse_options;
    use liger_core::ErrorCode;

    #[test]
    fn options_default_and_parse() {
        let o = parse_options("{}").unwrap();
        assert!(o.stop.is_empty() && !o.ignore_eos);
        let o = parse_options(r#"{"maxTokens":7,"temperature":0,"stop":["\n"],"ignoreEos":true,"seed":3}"#).unwrap();
        assert_eq!((o.max_tokens, o.sampling.temperature, o.sampling.seed), (7, 0.0, 3));
        assert_eq!(o.stop, vec!["\n".to_string()]);
        assert!(o.ignore_eos);
        for bad in ["{\"stop\":\"x\"}", "{\"stop\":[1]}", "nope"] {
            assert_eq!(parse_options(bad).unwrap_err().code, ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
