//! A loaded model: tokenizer, chat template, logits, and the start of a generation.

use crate::generation::Generation;
use crate::{js_error, JsResult};
use liger_core::chat::ChatMessage;
use liger_core::convert::{model_info_json, LigerModel};
use liger_core::{Error, Result};
use serde_json::{json, Value};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// A model and the quantisation of the bundle it came from.
pub(crate) struct Loaded {
    pub model: LigerModel,
    pub quantization: String,
}

/// A model loaded into the engine. Its generations keep it alive: freeing it while one runs
/// frees it once the last of them is freed.
#[wasm_bindgen]
pub struct Model {
    inner: Rc<Loaded>,
}

impl Model {
    pub(crate) fn new(model: LigerModel, quantization: String) -> Self {
        Model { inner: Rc::new(Loaded { model, quantization }) }
    }
}

#[wasm_bindgen]
impl Model {
    /// The model's facts as JSON: the TypeScript `ModelInfo`, plus `quantization`.
    pub fn info(&self) -> JsResult<String> {
        let m = &self.inner.model;
        // A bundle's adapters are merged into its weights: its `loraParams` is 0.
        let mut info = model_info_json(&m.base, Some(m)).map_err(js_error)?;
        if let Value::Object(map) = &mut info {
            map.insert("quantization".into(), json!(self.inner.quantization));
        }
        Ok(info.to_string())
    }

    /// Text to token ids. `add_bos`: undefined for the model's default.
    pub fn encode(&self, text: &str, add_bos: Option<bool>, parse_special: bool) -> JsResult<Vec<u32>> {
        self.inner.model.base.encode(text, add_bos, parse_special).map_err(js_error)
    }

    /// Token ids to text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> JsResult<String> {
        self.inner.model.base.decode(ids, skip_special).map_err(js_error)
    }

    /// Renders `[{role, content}, ...]` (as JSON) with the model's chat template.
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(&self, messages_json: &str, add_generation_prompt: bool) -> JsResult<String> {
        let messages = parse_messages(messages_json).map_err(js_error)?;
        self.inner.model.base.apply_chat_template(&messages, add_generation_prompt).map_err(js_error)
    }

    /// The logits after the last of `ids`, from an empty state.
    #[wasm_bindgen(js_name = lastLogits)]
    pub fn last_logits(&self, ids: &[u32]) -> JsResult<Vec<f32>> {
        self.inner.model.last_logits(ids).map_err(js_error)
    }

    /// Starts a generation from prompt tokens (runs the prefill now). Options as JSON:
    /// `{maxTokens, temperature, topK, topP, seed, stop, ignoreEos}`, all optional.
    #[wasm_bindgen(js_name = startGeneration)]
    pub fn start_generation(&self, ids: &[u32], options_json: &str) -> JsResult<Generation> {
        Generation::start(self.inner.clone(), ids, options_json).map_err(js_error)
    }
}

/// `[{"role": ..., "content": ...}, ...]` as chat messages.
fn parse_messages(json: &str) -> Result<Vec<ChatMessage>> {
    let bad = || Error::invalid_argument("messages must be a JSON array of {role, content} strings");
    let value: Value = serde_json::from_str(json).map_err(|_| bad())?;
    let items = value.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|m| {
            let field = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(bad);
            Ok(ChatMessage { role: field("role")?, content: field("content")? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_messages;
    use liger_core::ErrorCode;

    #[test]
    fn messages_must_be_role_content_strings() {
        let m = parse_messages(r#"[{"role":"user","content":"Hi"}]"#).unwrap();
        assert_eq!((m[0].role.as_str(), m[0].content.as_str()), ("user", "Hi"));
        for bad in ["{}", "[{\"role\":\"user\"}]", "[{\"role\":1,\"content\":\"x\"}]", "not json"] {
            assert_eq!(parse_messages(bad).unwrap_err().code, ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
