//! The reference implementation's checkpoint format (`liger_gla`, the modeling code released
//! with the paper, on `transformers` and flash-linear-attention), written and read.
//!
//! That format is a Llama checkpoint under another name: `config.json` is a `LlamaConfig`
//! whose `model_type` is `liger_gla` and whose class is `LigerGLAForCausalLM`, and the weights
//! keep Llama's names (`model.layers.N.self_attn.{q,k,v,o}_proj.weight`, ...). Every layer is
//! Liger attention; the gate is derived from the key projection by a parameter-free pooling,
//! so no tensor is added. Its method is fixed in the modeling code, not in the config: GLA
//! with softmax feature maps and the log-gate divided by 16, a sliding window of 64 passed to
//! flash-attn (each query sees 65 keys), and the two branches mixed 0.5 / 0.5. A Liger model
//! exports to it only when its options are exactly these; anything else is refused, naming
//! the option, since the reference code would silently run another function.

use super::{LigerSection, LIGER_FORMAT_VERSION};
use crate::config::{Architecture, ModelConfig};
use crate::convert::{LigerModel, LigerOptions, LoraOptions};
use crate::error::{Error, ErrorCode, Result};
use crate::hf::fsutil::build_dir_atomically;
use crate::hf::{save_hf_dir, HfExtraFiles, SaveDtype};
use crate::liger::{LigerAttentionConfig, MixerConfig, MixerKind};
use serde_json::{json, Value};
use std::path::Path;

/// `model_type` of the reference's GLA model.
pub const REFERENCE_MODEL_TYPE: &str = "liger_gla";
/// Its model class, `architectures[0]` of its configs.
pub const REFERENCE_ARCHITECTURE: &str = "LigerGLAForCausalLM";

/// The options the reference's modeling code runs with (fixed there, not read from its config).
pub fn reference_options() -> LigerOptions {
    LigerOptions {
        attention: LigerAttentionConfig {
            mixer: MixerConfig { kind: MixerKind::Gla, gate_normalizer: 16.0, ..MixerConfig::default() },
            window_keys: 65,
            sink_keys: 0,
            use_swa: true,
            grm_norm: false,
            surprise_keys: 0,
            surprise_repeat_tolerance: 0.0,
            alpha: 0.5,
            beta: 0.5,
        },
        softmax_layers: Vec::new(),
        head_mix: Vec::new(),
    }
}

/// How [`export_reference_hf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// Type of the weights (F32 reloads exactly; BF16 is what the reference trains in).
    pub dtype: SaveDtype,
    /// Replace an existing non-empty output folder (only one this library wrote: a user's
    /// other files are never deleted).
    pub overwrite: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { dtype: SaveDtype::F32, overwrite: false }
    }
}

/// Why `model` cannot be written in the reference's format (`None`: it can). The message
/// names every option the reference cannot express.
pub fn reference_gaps(config: &ModelConfig, options: &LigerOptions) -> Option<String> {
    let mut gaps = Vec::new();
    if config.architecture != Architecture::Llama {
        gaps.push(format!(
            "the base architecture is {} (liger_gla is a Llama model; the reference's other model types are not written)",
            config.architecture.name()
        ));
    }
    let a = &options.attention;
    let want = reference_options().attention;
    if a.mixer.kind != MixerKind::Gla {
        gaps.push(format!("mixer {} (the reference's liger_gla runs gla only)", a.mixer.kind.name()));
    } else if a.mixer.gate_normalizer != want.mixer.gate_normalizer {
        gaps.push(format!("gate normalizer {} (the reference divides by 16)", a.mixer.gate_normalizer));
    }
    if !options.softmax_layers.is_empty() {
        gaps.push(format!(
            "softmax attention kept in layers {:?} (every layer of liger_gla is Liger attention)",
            options.softmax_layers
        ));
    }
    if a.window_keys != want.window_keys {
        gaps.push(format!("a window of {} keys (the reference's window is 65 keys)", a.window_keys));
    }
    if a.sink_keys != 0 {
        gaps.push(format!("{} attention sinks (the reference has none)", a.sink_keys));
    }
    if a.surprise_keys != 0 {
        gaps.push(format!("a surprise cache of {} keys (the reference has none)", a.surprise_keys));
    }
    if !a.use_swa {
        gaps.push("no sliding-window branch (the reference always has one)".to_string());
    }
    if a.grm_norm {
        gaps.push("a normalised recurrent branch (the reference's has no normaliser)".to_string());
    }
    if a.alpha != want.alpha || a.beta != want.beta {
        gaps.push(format!("mix weights alpha {} beta {} (the reference mixes 0.5 / 0.5)", a.alpha, a.beta));
    }
    if !options.head_mix.is_empty() {
        gaps.push("learned mix weights per head (the reference mixes every head 0.5 / 0.5)".to_string());
    }
    (!gaps.is_empty()).then(|| gaps.join("; "))
}

/// Writes `model` as a directory the reference's `liger_gla` code loads as is: `config.json`
/// (its model type, Llama's keys), the weights with every adapter merged into q/k/v/o under
/// Llama's tensor names, and the tokenizer files. Atomic: the folder appears complete or not
/// at all. Options the reference cannot express are an INVALID_ARGUMENT naming them; an
/// existing non-empty `dir` is refused unless `opts.overwrite`.
pub fn export_reference_hf(dir: &Path, model: &LigerModel, opts: &ExportOptions) -> Result<()> {
    let base = &model.base;
    if let Some(gaps) = reference_gaps(&base.config, &model.options) {
        return Err(Error::invalid_argument(format!(
            "the model cannot be exported as {REFERENCE_MODEL_TYPE}: the reference code cannot express {gaps}"
        )));
    }
    if !opts.overwrite && is_non_empty_dir(dir)? {
        return Err(Error::invalid_argument(format!(
            "{}: the output folder exists and is not empty; choose a new folder, or pass overwrite to replace an export written by this library",
            dir.display()
        )));
    }
    let files = HfExtraFiles {
        tokenizer_json: Some(base.tokenizer.to_json()?),
        chat_template: base.chat_template.clone(),
        add_bos_token: Some(base.tokenizer.add_bos_default()),
        extra_config: Some(json!({
            "architectures": [REFERENCE_ARCHITECTURE],
            "model_type": REFERENCE_MODEL_TYPE,
        })),
    };
    let weights = model.merged_weights();
    build_dir_atomically(dir, |tmp| {
        // save_hf_dir builds its own directory and renames it into place: give it the
        // (empty) temporary one's name.
        std::fs::remove_dir(tmp).map_err(|e| Error::io(tmp.display(), e))?;
        save_hf_dir(tmp, &base.config, &weights, &files, opts.dtype)
    })
}

fn is_non_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(Error::invalid_argument(format!(
            "{}: exists and is not a directory; choose another output folder",
            dir.display()
        ))),
        Err(e) => Err(Error::io(dir.display(), e)),
    }
}

/// Whether a parsed `config.json` is the reference's `liger_gla` (by class or model type).
pub fn is_reference_config(config: &Value) -> bool {
    let class = config.get("architectures").and_then(Value::as_array).and_then(|l| l.first()).and_then(Value::as_str);
    class == Some(REFERENCE_ARCHITECTURE)
        || config.get("model_type").and_then(Value::as_str) == Some(REFERENCE_MODEL_TYPE)
}

/// The section a reference checkpoint stands for: the reference's options, its adapters (if
/// any were trained) already merged into the weights.
pub(super) fn reference_section() -> LigerSection {
    LigerSection {
        version: LIGER_FORMAT_VERSION,
        options: reference_options(),
        lora: LoraOptions { targets: Vec::new(), ..LoraOptions::default() },
        merged: true,
    }
}

/// A reference checkpoint with its adapters unmerged (PEFT files beside the weights) would
/// load without them: refuse it rather than run another model.
pub(super) fn check_no_adapters(dir: &Path) -> Result<()> {
    if dir.join("adapter_model.safetensors").exists() || dir.join("adapter_config.json").exists() {
        return Err(Error::new(
            ErrorCode::InvalidFile,
            format!(
                "{}: a {REFERENCE_MODEL_TYPE} checkpoint with separate LoRA adapters; merge them into the weights first (PEFT's merge_and_unload)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
