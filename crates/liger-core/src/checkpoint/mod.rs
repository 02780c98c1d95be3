//! Liger checkpoints: a Hugging Face directory (config.json, model.safetensors, tokenizer
//! files) whose `config.json` carries a `"liger"` section, plus the LoRA adapters in PEFT's
//! layout (`adapter_model.safetensors`, `adapter_config.json`) and, for a run that can be
//! resumed, `trainer_state.json` and `optimizer.safetensors`.
//!
//! The whole directory is written in one atomic step: it appears complete or not at all, and
//! an existing checkpoint is replaced only once the new one is complete.

pub mod reference_hf;
pub mod run;
mod training;

#[cfg(test)]
mod tests;

pub use reference_hf::{export_reference_hf, reference_gaps, reference_options, ExportOptions};
pub use training::{load_training_state, TrainingSnapshot};

use crate::convert::{linearize, LigerModel, LigerOptions, LoraOptions, LoraTarget};
use crate::error::{Error, ErrorCode, Result};
use crate::hf::fsutil::build_dir_atomically;
use crate::hf::{save_hf_dir, write_safetensors, HfExtraFiles, SafetensorsFile, SaveDtype};
use crate::liger::SurpriseCache;
use crate::model::{load_model, BaseModel};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// Version of the `"liger"` section this library writes; it reads this one and older.
pub const LIGER_FORMAT_VERSION: u32 = 1;

const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The `"liger"` section of `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LigerSection {
    pub version: u32,
    pub options: LigerOptions,
    /// Rank, alpha and targets of the adapters (also when they were merged).
    pub lora: LoraOptions,
    /// Whether the adapters were folded into q/k/v/o (then there is no adapter file).
    pub merged: bool,
}

/// How a checkpoint is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SaveOptions {
    /// Type of the base weights. F32 (the default) reloads exactly; F16/BF16 halve the size.
    pub dtype: SaveDtype,
    /// Fold the adapters into the q/k/v/o weights and write no adapter files.
    pub merged: bool,
    /// The surprise cache the saved model runs with, when it differs from the model's own
    /// (a model trained without the cache and saved with it; see `liger::surprise`).
    pub surprise_cache: Option<SurpriseCache>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { dtype: SaveDtype::F32, merged: false, surprise_cache: None }
    }
}

/// The adapters' rank, alpha and targets, read back from the adapters themselves.
fn lora_options_of(model: &LigerModel) -> LoraOptions {
    let first = model.lora.layers.iter().flat_map(|l| LoraTarget::ALL.map(|t| l.get(t))).flatten().next();
    let targets = LoraTarget::ALL
        .into_iter()
        .filter(|&t| model.lora.layers.first().is_some_and(|l| l.get(t).is_some()))
        .collect();
    match first {
        Some(a) => LoraOptions { rank: a.rank, alpha: a.scale * a.rank as f32, targets, seed: 0 },
        None => LoraOptions { targets: Vec::new(), ..LoraOptions::default() },
    }
}

/// `adapter_config.json` as PEFT writes it for a LoRA on a causal LM.
fn adapter_config(lora: &LoraOptions, base_name: &str) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": lora.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::internal(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path.display(), e))
}

/// Saves `model` as a checkpoint directory at `dir` (replacing what is there, atomically).
/// `training` adds what a resumed run needs; it cannot go with `merged`.
pub fn save_liger_checkpoint(
    dir: &Path,
    model: &LigerModel,
    opts: &SaveOptions,
    training: Option<TrainingSnapshot>,
) -> Result<()> {
    if opts.merged && training.is_some() {
        return Err(Error::invalid_argument(
            "a merged checkpoint cannot carry training state (its adapters are folded away); save unmerged to resume training",
        ));
    }
    let base = &model.base;
    let lora = lora_options_of(model);
    let mut options = model.options.clone();
    if let Some(cache) = opts.surprise_cache {
        options.attention.set_surprise_cache(cache);
    }
    let section = LigerSection { version: LIGER_FORMAT_VERSION, options, lora: lora.clone(), merged: opts.merged };
    let files = HfExtraFiles {
        tokenizer_json: Some(base.tokenizer.to_json()?),
        chat_template: base.chat_template.clone(),
        add_bos_token: Some(base.tokenizer.add_bos_default()),
        extra_config: Some(json!({ "liger": section })),
    };
    let merged = opts.merged.then(|| model.merged_weights());
    let weights = merged.as_ref().unwrap_or(&base.weights);
    let params = model.lora_params();
    build_dir_atomically(dir, |tmp| {
        // save_hf_dir builds its own directory and renames it into place: give it the
        // (empty) temporary one's name, then add the adapter files beside its files.
        std::fs::remove_dir(tmp).map_err(|e| Error::io(tmp.display(), e))?;
        save_hf_dir(tmp, &base.config, weights, &files, opts.dtype)?;
        if !opts.merged && !params.is_empty() {
            let tensors: Vec<(String, Vec<usize>, SaveDtype, &[f32])> = adapter_shapes(model)
                .into_iter()
                .zip(&params)
                .map(|(shape, (name, v))| (name.clone(), shape, SaveDtype::F32, *v))
                .collect();
            write_safetensors(&tmp.join(ADAPTER_WEIGHTS), &tensors, None)?;
            write_json(&tmp.join(ADAPTER_CONFIG), &adapter_config(&lora, &base.name))?;
        }
        if let Some(t) = &training {
            training::write(tmp, model, t)?;
        }
        Ok(())
    })
}

/// Shapes of the adapter tensors, in the order of `LigerModel::lora_params`:
/// A is `[rank, in]`, B is `[out, rank]`.
fn adapter_shapes(model: &LigerModel) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for l in &model.lora.layers {
        for a in LoraTarget::ALL.into_iter().filter_map(|t| l.get(t)) {
            out.push(vec![a.rank, a.in_features]);
            out.push(vec![a.out_features, a.rank]);
        }
    }
    out
}

/// Shapes of every trained tensor, in the order of `LigerModel::trained_params`: the
/// adapters', then each learned branch weight's `[heads]`.
fn trained_shapes(model: &LigerModel) -> Vec<Vec<usize>> {
    let mut out = adapter_shapes(model);
    for m in model.options.head_mix.iter().flatten() {
        out.push(vec![m.alpha.len()]);
        out.push(vec![m.beta.len()]);
    }
    out
}

/// The `"liger"` section of `dir/config.json`: `None` for a plain Hugging Face checkpoint.
/// A section from a newer format is an error. A checkpoint in the reference's `liger_gla`
/// format (see [`reference_hf`]) has no section: it stands for the reference's options with
/// merged adapters.
pub fn read_liger_section(dir: &Path) -> Result<Option<LigerSection>> {
    let path = run::resolve_checkpoint(dir)?.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
    let config: Value =
        serde_json::from_str(&text).map_err(|e| Error::invalid_file(path.display(), format!("not valid JSON: {e}")))?;
    let Some(section) = config.get("liger") else {
        // The reference's own format (an export, or the authors' released checkpoints).
        if reference_hf::is_reference_config(&config) {
            reference_hf::check_no_adapters(path.parent().unwrap_or(dir))?;
            return Ok(Some(reference_hf::reference_section()));
        }
        return Ok(None);
    };
    let version = section.get("version").and_then(Value::as_u64);
    match version {
        Some(v) if v >= 1 && v <= LIGER_FORMAT_VERSION as u64 => {}
        Some(v) if v > LIGER_FORMAT_VERSION as u64 => {
            return Err(Error::invalid_file(
                path.display(),
                format!("made by a newer liger (checkpoint format {v}; this version reads up to {LIGER_FORMAT_VERSION}); upgrade liger to load it"),
            ))
        }
        _ => return Err(Error::invalid_file(path.display(), "the \"liger\" section has no valid \"version\"; the checkpoint is damaged")),
    }
    serde_json::from_value(section.clone())
        .map(Some)
        .map_err(|e| Error::invalid_file(path.display(), format!("the \"liger\" section is not valid: {e}")))
}

/// Loads a checkpoint written by [`save_liger_checkpoint`]: the same model, giving the same
/// logits (bit for bit when saved as F32 from f32 weights).
pub fn load_liger_checkpoint(dir: &Path) -> Result<LigerModel> {
    let dir = &run::resolve_checkpoint(dir)?;
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorCode::Io,
            format!("{}: not a directory (a Liger checkpoint is a directory)", dir.display()),
        ));
    }
    let Some(section) = read_liger_section(dir)? else {
        return Err(Error::invalid_file(
            dir.display(),
            "a plain Hugging Face checkpoint (config.json has no \"liger\" section): load it as a base model and linearize it",
        ));
    };
    let base = load_model(dir, &mut |_, _| {})?;
    let mut lora = section.lora.clone();
    if section.merged {
        lora.targets.clear();
    }
    section.options.validate(&base.config).map_err(|e| {
        Error::invalid_file(
            dir.join("config.json").display(),
            format!("the \"liger\" options do not fit the model ({}); the checkpoint is damaged", e.message),
        )
    })?;
    let mut model = linearize(base, section.options, lora)?;
    if !section.merged && !model.lora_params().is_empty() {
        read_adapters(dir, &mut model)?;
    }
    Ok(model)
}

/// Fills the model's adapters from `adapter_model.safetensors`, checking every name and shape.
/// The checkpoint in `dir` for resuming its training, on `base`'s own weights when they are the
/// checkpoint's: its f32 copy of a quantized model's weights holds the same values, but products
/// over the quantized blocks round differently, so a resumed run would leave the losses of one
/// that ran straight through. Returns the model and whether it runs on `base`'s weights (it
/// runs on the checkpoint's when `base` is another model, or the adapters were merged).
pub fn load_liger_checkpoint_on(dir: &Path, base: BaseModel) -> Result<(LigerModel, bool)> {
    let dir = &run::resolve_checkpoint(dir)?;
    let saved = load_liger_checkpoint(dir)?;
    let section = read_liger_section(dir)?.ok_or_else(|| Error::internal("the liger section vanished"))?;
    if section.merged || base.config != saved.base.config || !base.weights.same_values(&saved.base.weights) {
        return Ok((saved, false));
    }
    let mut model = linearize(base, saved.options.clone(), section.lora)?;
    model.lora = saved.lora;
    Ok((model, true))
}

fn read_adapters(dir: &Path, model: &mut LigerModel) -> Result<()> {
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.is_file() {
        return Err(Error::invalid_file(
            dir.display(),
            "the config names LoRA adapters but adapter_model.safetensors is missing",
        ));
    }
    let file = SafetensorsFile::open(&path)?;
    let names: Vec<String> = model.lora_params().into_iter().map(|(n, _)| n).collect();
    let shapes = adapter_shapes(model);
    if file.names().len() != names.len() {
        return Err(Error::invalid_file(
            path.display(),
            format!("holds {} tensors but the config's adapters need {}", file.names().len(), names.len()),
        ));
    }
    for ((name, shape), dst) in names.iter().zip(&shapes).zip(model.lora_params_mut()) {
        if !file.contains(name) {
            return Err(Error::invalid_file(path.display(), format!("tensor \"{name}\" is missing")));
        }
        let (got_shape, values) = file.tensor_f32(name)?;
        if &got_shape != shape {
            return Err(Error::invalid_file(
                path.display(),
                format!("tensor \"{name}\" has shape {got_shape:?}, expected {shape:?}"),
            ));
        }
        dst.copy_from_slice(&values);
    }
    Ok(())
}
