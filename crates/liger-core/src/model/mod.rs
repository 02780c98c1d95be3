//! The base model on the CPU: loading from GGUF or a checkpoint directory, the decoder, and
//! what the API reports about it.

pub mod forward;
pub mod ops;

#[cfg(test)]
mod tests;

use crate::chat::{render_chat, ChatMessage};
use crate::config::ModelConfig;
use crate::error::Result;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::{Error, ErrorCode};
use crate::generate::CausalLm;
use crate::tokenizer::Tokenizer;
use crate::weights::ModelWeights;
use forward::{forward, KvCache, Logits};
use serde::Serialize;
use std::collections::BTreeMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// Where a model was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    /// A Hugging Face style directory (config.json + safetensors + tokenizer.json).
    Checkpoint,
    /// A self-contained edge bundle (see `crate::bundle`).
    Bundle,
}

/// A pretrained Llama-family model with its tokenizer.
pub struct BaseModel {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub name: String,
    pub format: ModelFormat,
    inv_freq: Vec<f32>,
}

/// What `info` reports (camelCase for JavaScript).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub name: String,
    pub architecture: String,
    pub format: ModelFormat,
    pub num_params: usize,
    pub weight_bytes: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    /// Number of matrices per storage type, e.g. {"Q4_1": 210, "Q8_0": 1}.
    pub tensor_types: BTreeMap<String, usize>,
    pub has_chat_template: bool,
    /// Bytes the KV cache grows by per token (f32 keys and values of every layer).
    pub kv_cache_bytes_per_token: usize,
}

/// Loads a `.gguf` file or a checkpoint directory. `progress(stage, fraction)` reports along the way.
/// Native only (memory maps and the file system); wasm loads from bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_model(path: &Path, progress: &mut dyn FnMut(&str, f64)) -> Result<BaseModel> {
    check_exists(path)?;
    if path.is_dir() {
        progress("reading checkpoint", 0.0);
        // A run folder is named after the run, whichever of its checkpoints loads.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = &crate::checkpoint::run::resolve_checkpoint(path)?;
        let ckpt = crate::hf::load_hf_dir(path)?;
        progress("checking weights", 0.6);
        ckpt.weights.check_finite().map_err(|e| e.context(path.display()))?;
        progress("loading tokenizer", 0.8);
        let tokenizer = match &ckpt.tokenizer_json {
            // tokenizer.json does not name BOS/EOS: the config does.
            Some(p) => Tokenizer::from_file(p)?.with_special_ids(
                ckpt.config.bos_token_id,
                ckpt.config.eos_token_ids.first().copied(),
                ckpt.add_bos_token.unwrap_or(false) && ckpt.config.bos_token_id.is_some(),
            )?,
            None => {
                return Err(Error::new(
                    ErrorCode::MissingTokenizer,
                    format!(
                        "{}: no tokenizer.json; copy the model's tokenizer.json into the directory",
                        path.display()
                    ),
                ))
            }
        };
        progress("ready", 1.0);
        return Ok(BaseModel::new(
            ckpt.config,
            ckpt.weights,
            tokenizer,
            ckpt.chat_template,
            name,
            ModelFormat::Checkpoint,
        ));
    }
    progress("reading gguf", 0.0);
    let file = crate::gguf::GgufFile::open(path)?;
    progress("loading weights", 0.3);
    let (config, weights) = crate::gguf::load_gguf_model(&file).map_err(|e| e.context(path.display()))?;
    progress("checking weights", 0.6);
    weights.check_finite().map_err(|e| e.context(path.display()))?;
    progress("loading tokenizer", 0.8);
    let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| e.context(path.display()))?;
    let chat_template = file.get_str("tokenizer.chat_template").ok().map(str::to_string);
    // The file's own name (what the user downloaded and typed, e.g. "SmolLM2-135M-Instruct.Q4_1")
    // rather than `general.name`, which converters fill with training-run labels.
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .or_else(|| file.get_str("general.name").ok().map(str::to_string))
        .unwrap_or_default();
    progress("ready", 1.0);
    Ok(BaseModel::new(config, weights, tokenizer, chat_template, name, ModelFormat::Gguf))
}

/// The config of the model [`load_model`] would load from `path`, read without its weights or
/// tokenizer (a GGUF file's header, a checkpoint's config.json): enough to check options
/// against before the model itself is loaded.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_model_config(path: &Path) -> Result<ModelConfig> {
    check_exists(path)?;
    if path.is_dir() {
        return crate::hf::read_hf_config(&crate::checkpoint::run::resolve_checkpoint(path)?);
    }
    let file = crate::gguf::GgufFile::open(path)?;
    crate::gguf::read_gguf_config(&file).map_err(|e| e.context(path.display()))
}

#[cfg(not(target_arch = "wasm32"))]
fn check_exists(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::new(ErrorCode::Io, format!("{}: no such file or directory", path.display())));
    }
    Ok(())
}

impl BaseModel {
    pub fn new(
        config: ModelConfig,
        weights: ModelWeights,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        name: String,
        format: ModelFormat,
    ) -> Self {
        let inv_freq = config.rope_inv_freq();
        BaseModel { config, weights, tokenizer, chat_template, name, format, inv_freq }
    }

    pub fn info(&self) -> ModelInfo {
        let c = &self.config;
        let w = &self.weights;
        let mut tensor_types = BTreeMap::new();
        let mut count = |t: &crate::QTensor| *tensor_types.entry(t.ty.name().to_string()).or_insert(0) += 1;
        count(&w.embed);
        if let Some(h) = &w.lm_head {
            count(h);
        }
        for l in &w.layers {
            for t in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                count(t);
            }
        }
        ModelInfo {
            name: self.name.clone(),
            architecture: c.architecture.name().to_string(),
            format: self.format,
            num_params: w.num_params(),
            weight_bytes: w.num_bytes(),
            num_layers: c.num_layers,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            context_length: c.max_position_embeddings,
            rope_theta: c.rope_theta,
            tie_word_embeddings: w.lm_head.is_none(),
            tensor_types,
            has_chat_template: self.chat_template.is_some(),
            kv_cache_bytes_per_token: 2 * c.num_layers * c.kv_size() * 4,
        }
    }

    /// Text to token ids. `add_bos: None` follows the model's own setting.
    pub fn encode(&self, text: &str, add_bos: Option<bool>, parse_special: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, add_bos.unwrap_or(self.tokenizer.add_bos_default()), parse_special)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special)
    }

    /// Renders a conversation with the model's chat template (ChatML when it has none).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tok = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.token_bytes(i).ok()).map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let bos = tok(self.tokenizer.bos_id()).unwrap_or_default();
        let eos = tok(self.tokenizer.eos_id()).unwrap_or_default();
        render_chat(
            self.chat_template.as_deref().unwrap_or(crate::chat::CHATML_TEMPLATE),
            messages,
            add_generation_prompt,
            &bos,
            &eos,
        )
    }

    /// Logits after every token of `tokens` (`T x vocab`), from an empty cache.
    pub fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = KvCache::new(self.config.num_layers);
        forward(&self.config, &self.weights, &self.inv_freq, &mut cache, tokens, Logits::All)
    }

    /// Logits after the last token of `tokens`, from an empty cache.
    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = KvCache::new(self.config.num_layers);
        forward(&self.config, &self.weights, &self.inv_freq, &mut cache, tokens, Logits::Last)
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Writes the model as a checkpoint directory (config.json, model.safetensors,
    /// tokenizer files). Quantized weights are dequantized to `dtype`.
    pub fn save_checkpoint(&self, dir: &Path, dtype: crate::hf::SaveDtype) -> Result<()> {
        let files = crate::hf::HfExtraFiles {
            tokenizer_json: Some(self.tokenizer.to_json()?),
            chat_template: self.chat_template.clone(),
            add_bos_token: Some(self.tokenizer.add_bos_default()),
            extra_config: None,
        };
        crate::hf::save_hf_dir(dir, &self.config, &self.weights, &files, dtype)
    }
}

impl CausalLm for BaseModel {
    type State = KvCache;
    fn new_state(&self) -> KvCache {
        KvCache::new(self.config.num_layers)
    }
    fn forward_last(&self, state: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        forward(&self.config, &self.weights, &self.inv_freq, state, tokens, Logits::Last)
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        if let Some(e) = self.tokenizer.eos_id() {
            if !ids.contains(&e) {
                ids.push(e);
            }
        }
        ids
    }
    fn max_tokens(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }
}
