//! `config.json` of a Hugging Face checkpoint <-> [`ModelConfig`].
//!
//! Keys that a file leaves out take the defaults of the matching `transformers` config class
//! (`LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config`). The sizes of the model
//! (vocabulary, hidden, intermediate, layers, heads) are required: every published checkpoint
//! states them, and a guessed size would only fail later with a less useful message.

use crate::config::{Architecture, Llama3RopeScaling, ModelConfig};
use crate::error::{Error, ErrorCode, Result};
use serde_json::{json, Map, Value};

/// The `architectures` entries this library loads, in the order they are listed in errors.
pub const SUPPORTED_ARCHITECTURES: [&str; 4] =
    ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

/// What `transformers` assumes when a key is absent, per architecture.
struct Defaults {
    max_position_embeddings: usize,
    /// `None`: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

fn defaults(arch: Architecture) -> Defaults {
    match arch {
        Architecture::Llama => {
            Defaults { max_position_embeddings: 2048, head_dim: None, bos_token_id: Some(1), eos_token_id: Some(2) }
        }
        Architecture::Mistral => Defaults {
            max_position_embeddings: 4096 * 32,
            head_dim: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        },
        Architecture::Qwen2 => {
            Defaults { max_position_embeddings: 32768, head_dim: None, bos_token_id: None, eos_token_id: None }
        }
        // Qwen3Config is the one class whose head_dim does not follow from the hidden size.
        Architecture::Qwen3 => {
            Defaults { max_position_embeddings: 32768, head_dim: Some(128), bos_token_id: None, eos_token_id: None }
        }
    }
}
// Shared by all four classes: rope_theta 10000, rms_norm_eps 1e-6, tie_word_embeddings false,
// num_key_value_heads = num_attention_heads.
const DEFAULT_ROPE_THETA: f64 = 10000.0;
const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;

fn class_name(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
    }
}

/// Reads the text of a `config.json`; `source` (usually the file's path) prefixes every error.
pub fn parse_config(json: &str, source: &str) -> Result<ModelConfig> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| Error::invalid_file(source, format!("config is not valid JSON: {e}")))?;
    config_from_value(&value, source)
}

/// Like [`parse_config`], for an already parsed JSON value.
pub fn config_from_value(value: &Value, source: &str) -> Result<ModelConfig> {
    let obj = value.as_object().ok_or_else(|| Error::invalid_file(source, "config must be a JSON object"))?;
    let keys = Keys { obj, source };
    let arch = architecture(&keys)?;
    let d = defaults(arch);

    let hidden_size = keys.required_usize("hidden_size")?;
    let num_heads = keys.required_usize("num_attention_heads")?;
    let head_dim = match keys.usize("head_dim")? {
        Some(h) => h,
        None => match d.head_dim {
            Some(h) => h,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0, // validate() reports the zero head count
        },
    };
    let (rope_theta, rope_scaling) = rope(&keys)?;
    reject_unsupported_features(&keys, arch)?;

    let eos_token_ids = match obj.get("eos_token_id") {
        None => d.eos_token_id.into_iter().collect(),
        Some(v) => token_ids(v, "eos_token_id", source)?,
    };
    let bos_token_id = match obj.get("bos_token_id") {
        None => d.bos_token_id,
        Some(v) => token_ids(v, "bos_token_id", source)?.first().copied(),
    };

    let config = ModelConfig {
        architecture: arch,
        vocab_size: keys.required_usize("vocab_size")?,
        hidden_size,
        intermediate_size: keys.required_usize("intermediate_size")?,
        num_layers: keys.required_usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads: keys.usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim,
        rope_theta: rope_theta as f32,
        rope_scaling,
        rms_norm_eps: keys.f64("rms_norm_eps")?.unwrap_or(DEFAULT_RMS_NORM_EPS) as f32,
        max_position_embeddings: keys.usize("max_position_embeddings")?.unwrap_or(d.max_position_embeddings),
        tie_word_embeddings: keys.bool("tie_word_embeddings")?.unwrap_or(false),
        // Qwen2 always has q/k/v biases (its modeling code ignores `attention_bias`).
        attention_bias: arch == Architecture::Qwen2,
        qk_norm: arch == Architecture::Qwen3,
        bos_token_id,
        eos_token_ids,
    };
    config.validate().map_err(|e| Error::invalid_file(source, e.message))?;
    Ok(config)
}

/// The architecture from `architectures[0]`, or from `model_type` when that list is absent.
fn architecture(keys: &Keys) -> Result<Architecture> {
    let from_class = |name: &str| match name {
        // The reference Liger code's GLA model keeps Llama's config keys and weight names.
        "LlamaForCausalLM" | "LigerGLAForCausalLM" => Some(Architecture::Llama),
        "MistralForCausalLM" => Some(Architecture::Mistral),
        "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
        "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
        _ => None,
    };
    let unsupported = |name: &str| {
        Error::new(
            ErrorCode::UnsupportedArchitecture,
            format!(
                "{}: architecture \"{name}\" is not supported; supported architectures: {}",
                keys.source,
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        )
    };
    match keys.obj.get("architectures") {
        Some(Value::Array(list)) if !list.is_empty() => {
            let name = list[0].as_str().ok_or_else(|| keys.bad("architectures", "a list of class names", &list[0]))?;
            from_class(name).ok_or_else(|| unsupported(name))
        }
        Some(Value::Array(_)) | Some(Value::Null) | None => match keys.str("model_type")? {
            Some("llama" | "liger_gla") => Ok(Architecture::Llama),
            Some("mistral") => Ok(Architecture::Mistral),
            Some("qwen2") => Ok(Architecture::Qwen2),
            Some("qwen3") => Ok(Architecture::Qwen3),
            Some(other) => Err(unsupported(other)),
            None => Err(Error::invalid_file(
                keys.source,
                "config names no architecture: neither \"architectures\" nor \"model_type\" is set",
            )),
        },
        Some(other) => Err(keys.bad("architectures", "a list of class names", other)),
    }
}

/// `rope_theta` and the llama3 frequency scaling. Older files carry `rope_theta` and
/// `rope_scaling`; transformers 5 writes both inside `rope_parameters`.
fn rope(keys: &Keys) -> Result<(f64, Option<Llama3RopeScaling>)> {
    let (params, params_key) = match keys.obj.get("rope_parameters") {
        Some(Value::Null) | None => (keys.obj.get("rope_scaling"), "rope_scaling"),
        some => (some, "rope_parameters"),
    };
    let params = match params {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(Keys { obj: m, source: keys.source }),
        Some(other) => return Err(keys.bad(params_key, "an object or null", other)),
    };
    let theta_in_params = match &params {
        Some(p) => p.f64("rope_theta")?,
        None => None,
    };
    let theta = match theta_in_params {
        Some(t) => t,
        None => keys.f64("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA),
    };
    let Some(p) = params else { return Ok((theta, None)) };
    // Old files name the field "type".
    let rope_type = match p.str("rope_type")? {
        Some(t) => Some(t),
        None => p.str("type")?,
    };
    match rope_type {
        None | Some("default") => Ok((theta, None)),
        Some("llama3") => {
            let scaling = Llama3RopeScaling {
                factor: p.required_f64("factor")? as f32,
                low_freq_factor: p.required_f64("low_freq_factor")? as f32,
                high_freq_factor: p.required_f64("high_freq_factor")? as f32,
                original_max_position_embeddings: p.required_usize("original_max_position_embeddings")?,
            };
            let ok = scaling.factor > 0.0
                && scaling.low_freq_factor > 0.0
                && scaling.high_freq_factor > scaling.low_freq_factor
                && scaling.original_max_position_embeddings > 0;
            if !ok {
                return Err(Error::invalid_file(
                    keys.source,
                    format!("{params_key}: llama3 scaling needs factor > 0 and 0 < low_freq_factor < high_freq_factor, found {scaling:?}"),
                ));
            }
            Ok((theta, Some(scaling)))
        }
        Some(other) => Err(Error::new(
            ErrorCode::UnsupportedArchitecture,
            format!(
                "{}: RoPE scaling type \"{other}\" is not supported; supported: \"default\" (none) and \"llama3\"",
                keys.source
            ),
        )),
    }
}

/// Settings the engine does not implement: better to refuse than to run a different model.
fn reject_unsupported_features(keys: &Keys, arch: Architecture) -> Result<()> {
    let unsupported = |what: String| {
        Err(Error::new(ErrorCode::UnsupportedArchitecture, format!("{}: {what} is not supported", keys.source)))
    };
    if let Some(act) = keys.str("hidden_act")? {
        if act != "silu" {
            return unsupported(format!("hidden_act \"{act}\" (only \"silu\")"));
        }
    }
    if keys.bool("mlp_bias")? == Some(true) {
        return unsupported("mlp_bias = true".into());
    }
    // In Llama, Mistral and Qwen3 `attention_bias` also adds a bias to o_proj.
    if arch != Architecture::Qwen2 && keys.bool("attention_bias")? == Some(true) {
        return unsupported(format!("attention_bias = true for {}", class_name(arch)));
    }
    if keys.bool("use_sliding_window")? == Some(true) {
        return unsupported("use_sliding_window = true".into());
    }
    if let Some(f) = keys.f64("partial_rotary_factor")? {
        if f != 1.0 {
            return unsupported(format!("partial_rotary_factor {f} (only 1.0)"));
        }
    }
    Ok(())
}

/// `bos_token_id` / `eos_token_id`: a single id, a list of ids, or null.
fn token_ids(v: &Value, key: &str, source: &str) -> Result<Vec<u32>> {
    let one = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list
            .iter()
            .map(|x| one(x).ok_or_else(|| bad_value(source, key, "a token id or a list of token ids", v)))
            .collect(),
        _ => one(v).map(|id| vec![id]).ok_or_else(|| bad_value(source, key, "a token id or a list of token ids", v)),
    }
}

fn bad_value(source: &str, key: &str, expected: &str, found: &Value) -> Error {
    let mut shown = found.to_string();
    if shown.len() > 80 {
        shown.truncate(80);
        shown.push_str("...");
    }
    Error::invalid_file(source, format!("\"{key}\" must be {expected}, found {shown}"))
}

/// Typed access to the keys of a JSON object; `null` counts as absent, as in transformers.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    source: &'a str,
}

impl<'a> Keys<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn bad(&self, key: &str, expected: &str, found: &Value) -> Error {
        bad_value(self.source, key, expected, found)
    }
    fn missing(&self, key: &str) -> Error {
        Error::invalid_file(self.source, format!("required key \"{key}\" is missing"))
    }
    fn usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        // Some writers store integers as floats (4096.0); accept those when whole.
        let n = v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(53)).map(|f| f as u64));
        match n.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(self.bad(key, "a non-negative integer", v)),
        }
    }
    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(self.bad(key, "a number", v)),
        }
    }
    fn required_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.missing(key))
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_bool().map(Some).ok_or_else(|| self.bad(key, "true or false", v))
    }
    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_str().map(Some).ok_or_else(|| self.bad(key, "a string", v))
    }
}

/// An f32 as the shortest decimal that reads back as the same f32 (1e-5, not 9.99999974e-6),
/// so that a config written and read again, by us or by Python, gives the same value.
fn f32_json(x: f32) -> Value {
    let shortest: f64 = x.to_string().parse().unwrap_or(x as f64);
    json!(shortest)
}

/// A `config.json` that `transformers` loads as the same model.
///
/// `extra` must be a JSON object (or `None`): its entries are added at the top level,
/// replacing keys of the same name (for example a `"liger"` section). A value of any other
/// kind is ignored; `save_hf_dir` refuses it with an error before it gets here.
pub fn config_to_json(cfg: &ModelConfig, extra: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("architectures".into(), json!([class_name(cfg.architecture)]));
    m.insert("model_type".into(), json!(cfg.architecture.name()));
    m.insert("vocab_size".into(), json!(cfg.vocab_size));
    m.insert("hidden_size".into(), json!(cfg.hidden_size));
    m.insert("intermediate_size".into(), json!(cfg.intermediate_size));
    m.insert("num_hidden_layers".into(), json!(cfg.num_layers));
    m.insert("num_attention_heads".into(), json!(cfg.num_heads));
    m.insert("num_key_value_heads".into(), json!(cfg.num_kv_heads));
    m.insert("head_dim".into(), json!(cfg.head_dim));
    m.insert("hidden_act".into(), json!("silu"));
    m.insert("max_position_embeddings".into(), json!(cfg.max_position_embeddings));
    m.insert("rms_norm_eps".into(), f32_json(cfg.rms_norm_eps));
    m.insert("rope_theta".into(), f32_json(cfg.rope_theta));
    let scaling = match &cfg.rope_scaling {
        None => Value::Null,
        Some(s) => json!({
            "rope_type": "llama3",
            "factor": f32_json(s.factor),
            "low_freq_factor": f32_json(s.low_freq_factor),
            "high_freq_factor": f32_json(s.high_freq_factor),
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }),
    };
    m.insert("rope_scaling".into(), scaling);
    m.insert("tie_word_embeddings".into(), json!(cfg.tie_word_embeddings));
    match cfg.architecture {
        Architecture::Llama => {
            m.insert("attention_bias".into(), json!(false));
            m.insert("mlp_bias".into(), json!(false));
        }
        Architecture::Mistral => {
            m.insert("sliding_window".into(), Value::Null);
        }
        Architecture::Qwen2 => {
            m.insert("use_sliding_window".into(), json!(false));
        }
        Architecture::Qwen3 => {
            m.insert("attention_bias".into(), json!(false));
            m.insert("use_sliding_window".into(), json!(false));
        }
    }
    m.insert("bos_token_id".into(), cfg.bos_token_id.map_or(Value::Null, |id| json!(id)));
    m.insert("eos_token_id".into(), eos_json(&cfg.eos_token_ids));
    m.insert("use_cache".into(), json!(true));
    if let Some(Value::Object(extra)) = extra {
        m.extend(extra);
    }
    Value::Object(m)
}

/// One id as a number, several as a list, none as null (the forms transformers writes).
pub(crate) fn eos_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}
