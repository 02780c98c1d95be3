//! Hugging Face checkpoint directories: `config.json`, `model.safetensors` (or shards with
//! `model.safetensors.index.json`), tokenizer files and `generation_config.json`.

use super::config::{config_from_value, config_to_json, eos_json};
use super::fsutil::{build_dir_atomically, write_atomically, write_file};
use super::safetensors_io::{with_format, write_tensors, OutTensor, SafetensorsFile, SaveDtype, TensorValues};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::QTensor;
use crate::weights::{LayerWeights, ModelWeights};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A checkpoint loaded from a directory. Weights are views into memory-mapped files.
pub struct HfCheckpoint {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    /// `tokenizer.json`, when the directory has one.
    pub tokenizer_json: Option<PathBuf>,
    pub chat_template: Option<String>,
    /// `add_bos_token` of `tokenizer_config.json`, when it says.
    pub add_bos_token: Option<bool>,
    /// `config.json` as read, for keys this library does not interpret.
    pub raw_config: Value,
}

/// Files written next to the weights by [`save_hf_dir`].
#[derive(Debug, Clone, Default)]
pub struct HfExtraFiles {
    /// The text of `tokenizer.json`.
    pub tokenizer_json: Option<String>,
    pub chat_template: Option<String>,
    /// Whether the tokenizer prepends BOS (`add_bos_token` in `tokenizer_config.json`).
    pub add_bos_token: Option<bool>,
    /// A JSON object whose entries are added to `config.json`.
    pub extra_config: Option<Value>,
}

/// Shards are cut above this size, as `transformers` does by default (`max_shard_size="5GB"`
/// is its default; 4 GB keeps each file well inside 32-bit-offset tools too).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 4 << 30;

const CONFIG: &str = "config.json";
const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Loads a checkpoint directory: the config, the weights (memory-mapped, zero copy), and the
/// tokenizer and chat template when present.
pub fn load_hf_dir(dir: &Path) -> Result<HfCheckpoint> {
    let (raw_config, config) = read_config_json(dir)?;
    let source = TensorSource::open(dir)?;
    let weights = read_weights(&source, &config)?;

    let tokenizer_json = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    let chat_template = read_chat_template(dir)?;
    let add_bos_token = read_add_bos_token(dir)?;
    Ok(HfCheckpoint { config, weights, tokenizer_json, chat_template, add_bos_token, raw_config })
}

/// The config [`load_hf_dir`] reads from a checkpoint directory, without the weights.
pub fn read_hf_config(dir: &Path) -> Result<ModelConfig> {
    read_config_json(dir).map(|(_, config)| config)
}

/// `config.json` as read, and as a config (with the end-of-sequence ids of
/// `generation_config.json`).
fn read_config_json(dir: &Path) -> Result<(Value, ModelConfig)> {
    let meta = fs::metadata(dir).map_err(|e| Error::io(dir.display(), e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{}: is not a directory (expected a Hugging Face checkpoint directory)",
            dir.display()
        )));
    }
    let config_path = dir.join(CONFIG);
    if !config_path.is_file() {
        return Err(Error::invalid_file(
            dir.display(),
            "no config.json: this is not a Hugging Face checkpoint directory",
        ));
    }
    let config_source = config_path.display().to_string();
    let raw_config = read_json(&config_path)?;
    let mut config = config_from_value(&raw_config, &config_source)?;
    merge_generation_eos(dir, &mut config)?;
    Ok((raw_config, config))
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| Error::invalid_file(path.display(), format!("not valid JSON: {e}")))
}

/// Instruct models often list their end-of-turn tokens only in `generation_config.json`;
/// generation must stop on those as well.
fn merge_generation_eos(dir: &Path, config: &mut ModelConfig) -> Result<()> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(());
    }
    let gen = read_json(&path)?;
    let ids: Vec<u64> = match gen.get("eos_token_id") {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_u64).collect(),
        Some(v) => v.as_u64().into_iter().collect(),
        None => Vec::new(),
    };
    for id in ids {
        let id = u32::try_from(id)
            .map_err(|_| Error::invalid_file(path.display(), format!("eos_token_id {id} is out of range")))?;
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
    Ok(())
}

/// `add_bos_token` from `tokenizer_config.json`, if the file exists and says.
fn read_add_bos_token(dir: &Path) -> Result<Option<bool>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_json(&path)?.get("add_bos_token").and_then(Value::as_bool))
}

/// `chat_template.jinja` (where recent transformers saves it), else the `chat_template` of
/// `tokenizer_config.json`: a string, or a list of `{name, template}` of which "default" is used.
fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read_text(&jinja).map(Some);
    }
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    match read_json(&path)?.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            for item in list {
                if item.get("name").and_then(Value::as_str) == Some("default") {
                    return match item.get("template").and_then(Value::as_str) {
                        Some(t) => Ok(Some(t.to_string())),
                        None => {
                            Err(Error::invalid_file(shown, "the \"default\" chat template has no \"template\" string"))
                        }
                    };
                }
            }
            Ok(None)
        }
        Some(_) => Err(Error::invalid_file(shown, "\"chat_template\" must be a string or a list of {name, template}")),
    }
}

/// The safetensors files of a checkpoint and which file holds which tensor.
struct TensorSource {
    files: Vec<SafetensorsFile>,
    /// Tensor name -> index into `files`.
    location: HashMap<String, usize>,
}

impl TensorSource {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            let file = SafetensorsFile::open(&single)?;
            let location = file.names().iter().map(|n| (n.clone(), 0)).collect();
            return Ok(TensorSource { files: vec![file], location });
        }
        let index = dir.join(INDEX_FILE);
        if !index.is_file() {
            return Err(Error::invalid_file(
                dir.display(),
                "no model.safetensors or model.safetensors.index.json (only safetensors weights are supported; convert .bin/.pth checkpoints with transformers' save_pretrained(safe_serialization=True))",
            ));
        }
        let shown = index.display().to_string();
        let weight_map = match read_json(&index)?.get("weight_map") {
            Some(Value::Object(m)) => m.clone(),
            _ => {
                return Err(Error::invalid_file(
                    &shown,
                    "\"weight_map\" (tensor name -> shard file) is missing or not an object",
                ))
            }
        };
        let mut shard_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for (tensor, shard) in &weight_map {
            let shard = shard
                .as_str()
                .filter(|s| !s.is_empty() && Path::new(s).file_name() == Some(std::ffi::OsStr::new(s)))
                .ok_or_else(|| {
                    Error::invalid_file(
                        &shown,
                        format!("tensor \"{tensor}\": shard must be a file name in the same directory, found {shard}"),
                    )
                })?;
            let i = match shard_index.get(shard) {
                Some(&i) => i,
                None => {
                    let path = dir.join(shard);
                    if !path.is_file() {
                        return Err(Error::invalid_file(
                            &shown,
                            format!("shard \"{shard}\" (holding \"{tensor}\") does not exist"),
                        ));
                    }
                    files.push(SafetensorsFile::open(&path)?);
                    shard_index.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            if !files[i].contains(tensor) {
                return Err(Error::invalid_file(
                    &shown,
                    format!("the index puts tensor \"{tensor}\" in \"{shard}\", which does not hold it"),
                ));
            }
            location.insert(tensor.clone(), i);
        }
        Ok(TensorSource { files, location })
    }

    fn file_for(&self, name: &str) -> Result<&SafetensorsFile> {
        match self.location.get(name) {
            Some(&i) => Ok(&self.files[i]),
            None => {
                let where_ = self.files.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
                Err(Error::invalid_file(where_, format!("tensor \"{name}\" is missing")))
            }
        }
    }
    fn matrix(&self, name: &str) -> Result<QTensor> {
        self.file_for(name)?.matrix(name)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.file_for(name)?.vector_f32(name)
    }
}

/// Hugging Face tensor names of the weights, in the order they are written.
pub(crate) fn layer_prefix(i: usize) -> String {
    format!("model.layers.{i}")
}

fn read_weights(src: &TensorSource, c: &ModelConfig) -> Result<ModelWeights> {
    let mut used: HashSet<String> = HashSet::new();
    let mut take = |name: String| {
        used.insert(name.clone());
        name
    };
    let embed = src.matrix(&take("model.embed_tokens.weight".into()))?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = layer_prefix(i);
        let mut vec = |s: &str| src.vector(&take(format!("{p}.{s}")));
        let attn_norm = vec("input_layernorm.weight")?;
        let ffn_norm = vec("post_attention_layernorm.weight")?;
        let (bq, bk, bv) = if c.attention_bias {
            (
                Some(vec("self_attn.q_proj.bias")?),
                Some(vec("self_attn.k_proj.bias")?),
                Some(vec("self_attn.v_proj.bias")?),
            )
        } else {
            (None, None, None)
        };
        let (q_norm, k_norm) = if c.qk_norm {
            (Some(vec("self_attn.q_norm.weight")?), Some(vec("self_attn.k_norm.weight")?))
        } else {
            (None, None)
        };
        let mut mat = |s: &str| src.matrix(&take(format!("{p}.{s}")));
        layers.push(LayerWeights {
            attn_norm,
            wq: mat("self_attn.q_proj.weight")?,
            wk: mat("self_attn.k_proj.weight")?,
            wv: mat("self_attn.v_proj.weight")?,
            wo: mat("self_attn.o_proj.weight")?,
            bq,
            bk,
            bv,
            q_norm,
            k_norm,
            ffn_norm,
            w_gate: mat("mlp.gate_proj.weight")?,
            w_up: mat("mlp.up_proj.weight")?,
            w_down: mat("mlp.down_proj.weight")?,
        });
    }
    let final_norm = src.vector(&take("model.norm.weight".into()))?;
    // Tied checkpoints sometimes still carry a copy of the embedding as lm_head: unused.
    let lm_head_name = take("lm_head.weight".into());
    let lm_head = if c.tie_word_embeddings { None } else { Some(src.matrix(&lm_head_name)?) };
    let weights = ModelWeights { embed, layers, final_norm, lm_head };

    // A tensor we do not use means the file and config.json disagree (say, biases present
    // but the config names an architecture without them): running would silently be wrong.
    let mut unused: Vec<&String> =
        src.location.keys().filter(|n| !used.contains(*n) && !n.ends_with(".rotary_emb.inv_freq")).collect();
    if !unused.is_empty() {
        unused.sort();
        let shown: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
        let file = src.file_for(unused[0])?.name().to_string();
        return Err(Error::invalid_file(
            file,
            format!(
                "{} tensor(s) are not part of a {} model as config.json describes it (e.g. {}); the weights do not match the config",
                unused.len(),
                c.architecture.name(),
                shown.join(", ")
            ),
        ));
    }
    weights.validate(c).map_err(|e| e.context("checkpoint weights do not match config.json"))?;
    Ok(weights)
}

/// The tensors of a model under their Hugging Face names, in the order they are written.
fn named_tensors<'a>(c: &ModelConfig, w: &'a ModelWeights, dtype: SaveDtype) -> Vec<OutTensor<'a>> {
    let mat = |name: String, t: &'a QTensor| OutTensor {
        name,
        shape: vec![t.rows, t.cols],
        dtype,
        values: TensorValues::Matrix(t),
    };
    let vec =
        |name: String, v: &'a [f32]| OutTensor { name, shape: vec![v.len()], dtype, values: TensorValues::F32(v) };
    let mut out = vec![mat("model.embed_tokens.weight".into(), &w.embed)];
    for (i, l) in w.layers.iter().enumerate() {
        let p = layer_prefix(i);
        out.push(vec(format!("{p}.input_layernorm.weight"), &l.attn_norm));
        out.push(mat(format!("{p}.self_attn.q_proj.weight"), &l.wq));
        out.push(mat(format!("{p}.self_attn.k_proj.weight"), &l.wk));
        out.push(mat(format!("{p}.self_attn.v_proj.weight"), &l.wv));
        out.push(mat(format!("{p}.self_attn.o_proj.weight"), &l.wo));
        for (name, b) in [
            ("q_proj.bias", &l.bq),
            ("k_proj.bias", &l.bk),
            ("v_proj.bias", &l.bv),
            ("q_norm.weight", &l.q_norm),
            ("k_norm.weight", &l.k_norm),
        ] {
            if let Some(b) = b {
                out.push(vec(format!("{p}.self_attn.{name}"), b));
            }
        }
        out.push(vec(format!("{p}.post_attention_layernorm.weight"), &l.ffn_norm));
        out.push(mat(format!("{p}.mlp.gate_proj.weight"), &l.w_gate));
        out.push(mat(format!("{p}.mlp.up_proj.weight"), &l.w_up));
        out.push(mat(format!("{p}.mlp.down_proj.weight"), &l.w_down));
    }
    out.push(vec("model.norm.weight".into(), &w.final_norm));
    if !c.tie_word_embeddings {
        // An untied config with no separate head uses the embedding as head: write it out.
        out.push(mat("lm_head.weight".into(), w.lm_head()));
    }
    out
}

/// Saves a checkpoint directory that `transformers` loads, atomically (see
/// [`save_hf_dir_with_shard_size`]). Weights larger than 4 GB are sharded with an index.
pub fn save_hf_dir(
    dir: &Path,
    config: &ModelConfig,
    weights: &ModelWeights,
    files: &HfExtraFiles,
    dtype: SaveDtype,
) -> Result<()> {
    save_hf_dir_with_shard_size(dir, config, weights, files, dtype, DEFAULT_MAX_SHARD_BYTES)
}

/// [`save_hf_dir`] with a chosen shard size. Everything is written into a temporary sibling
/// directory which then takes the place of `dir`; an existing `dir` is replaced only after
/// the new one is complete.
pub fn save_hf_dir_with_shard_size(
    dir: &Path,
    config: &ModelConfig,
    weights: &ModelWeights,
    files: &HfExtraFiles,
    dtype: SaveDtype,
    max_shard_bytes: u64,
) -> Result<()> {
    config.validate()?;
    weights.validate(config)?;
    if config.tie_word_embeddings && weights.lm_head.is_some() {
        return Err(Error::invalid_argument(
            "the config ties the output head to the embedding, but the weights carry a separate lm_head; set tie_word_embeddings = false to keep it",
        ));
    }
    if matches!(files.extra_config, Some(ref v) if !v.is_object()) {
        return Err(Error::invalid_argument(
            "extra_config must be a JSON object (its entries are added to config.json)",
        ));
    }
    if max_shard_bytes == 0 {
        return Err(Error::invalid_argument("max_shard_bytes must be positive"));
    }
    let tensors = named_tensors(config, weights, dtype);
    build_dir_atomically(dir, |tmp| {
        write_weights(tmp, &tensors, max_shard_bytes)?;
        let mut cfg = config_to_json(config, files.extra_config.clone());
        cfg["torch_dtype"] = json!(dtype.torch_name());
        write_json(&tmp.join(CONFIG), &cfg)?;
        write_json(&tmp.join("generation_config.json"), &generation_config(config))?;
        if let Some(tok) = &files.tokenizer_json {
            write_file(&tmp.join("tokenizer.json"), tok.as_bytes())?;
        }
        if files.tokenizer_json.is_some() || files.chat_template.is_some() {
            let mut tok_cfg =
                tokenizer_config(config, files.tokenizer_json.as_deref(), files.chat_template.as_deref())?;
            if let Some(add) = files.add_bos_token {
                tok_cfg["add_bos_token"] = json!(add);
            }
            write_json(&tmp.join("tokenizer_config.json"), &tok_cfg)?;
        }
        Ok(())
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::internal(e.to_string()))?;
    write_file(path, text.as_bytes())
}

/// One `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus an index when
/// the weights exceed `max_shard_bytes` (a single tensor larger than that gets its own shard).
fn write_weights(dir: &Path, tensors: &[OutTensor], max_shard_bytes: u64) -> Result<()> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = t.byte_len() as u64;
        let current = shards.last_mut().expect("at least one shard");
        if !current.is_empty() && size + bytes > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("at least one shard").push(i);
        size += bytes;
    }
    let metadata = with_format(None);
    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        let shown = path.display().to_string();
        let all: Vec<&OutTensor> = tensors.iter().collect();
        return write_atomically(&path, |w| write_tensors(w, &all, &metadata, &shown));
    }
    let n = shards.len();
    let mut weight_map = Map::new();
    let mut total_size = 0u64;
    for (k, members) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let path = dir.join(&name);
        let shown = path.display().to_string();
        let subset: Vec<&OutTensor> = members.iter().map(|&i| &tensors[i]).collect();
        write_atomically(&path, |w| write_tensors(w, &subset, &metadata, &shown))?;
        for t in subset {
            weight_map.insert(t.name.clone(), json!(name));
            total_size += t.byte_len() as u64;
        }
    }
    let index = json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
    write_json(&dir.join(INDEX_FILE), &index)
}

fn generation_config(c: &ModelConfig) -> Value {
    json!({
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos_json(&c.eos_token_ids),
    })
}

/// `tokenizer_config.json`: the generic fast tokenizer over `tokenizer.json`, the chat
/// template, and the bos/eos token strings when `tokenizer.json` names those ids.
fn tokenizer_config(c: &ModelConfig, tokenizer_json: Option<&str>, chat_template: Option<&str>) -> Result<Value> {
    let mut m = Map::new();
    if let Some(text) = tokenizer_json {
        let tok: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_argument(format!("tokenizer_json is not valid JSON: {e}")))?;
        m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        if let Some(s) = c.bos_token_id.and_then(|id| token_string(&tok, id)) {
            m.insert("bos_token".into(), json!(s));
        }
        if let Some(s) = c.eos_token_ids.first().and_then(|&id| token_string(&tok, id)) {
            m.insert("eos_token".into(), json!(s));
        }
    }
    m.insert("model_max_length".into(), json!(c.max_position_embeddings));
    if let Some(t) = chat_template {
        m.insert("chat_template".into(), json!(t));
    }
    Ok(Value::Object(m))
}

/// The text of token `id` in a `tokenizer.json`: its added tokens first, then the vocabulary.
fn token_string(tok: &Value, id: u32) -> Option<String> {
    let id = id as u64;
    if let Some(added) = tok.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            if t.get("id").and_then(Value::as_u64) == Some(id) {
                return t.get("content").and_then(Value::as_str).map(str::to_string);
            }
        }
    }
    let vocab = tok.get("model")?.get("vocab")?.as_object()?;
    vocab.iter().find(|(_, v)| v.as_u64() == Some(id)).map(|(k, _)| k.clone())
}
