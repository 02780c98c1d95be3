//! Linearize for JavaScript: the options converted to the `liger` crate's, the job run on a
//! worker thread.

use std::path::PathBuf;

use liger::parse;
use liger::{LinearizeEvent, LinearizeOptions};
use liger_core::train::data::BadRows;
use liger_core::train::trainer::{LongContextStage, Schedule};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::jobs::{async_job, emit, json_text, CancelToken, EventFn, JobTask};

/// Every setting of a linearize run, defaults already filled in by the TypeScript layer (from
/// `linearizeDefaults`).
#[napi(object)]
pub struct JsLinearizeOptions {
    pub model_path: String,
    pub data_path: Option<String>,
    pub out_dir: String,
    pub mixer: String,
    /// GSA only: slots per key-value head and the slot read-out's query scale ("one" or "inv_sqrt_head_dim").
    pub gsa_slots: u32,
    pub gsa_scale: String,
    pub window: u32,
    /// First tokens every query of the window branch also sees (attention sinks; 0 = none).
    pub sinks: u32,
    /// Normalise the recurrent branch by the same recurrence over values of one.
    pub grm_norm: bool,
    /// Tokens per key-value head that left the window and stay visible to it, chosen by
    /// surprise (0 = none); trained with, unless `surprise_after_training`.
    pub surprise_keys: u32,
    /// The surprise cache's repeat rule: a token whose value repeats a cached one within this
    /// relative squared distance does not enter (0 = off).
    pub surprise_repeat_tolerance: f64,
    /// Train with the window alone and add the surprise cache to the saved model.
    pub surprise_after_training: bool,
    /// Learn the branch weights of each query head with the adapters, from `alpha` and `beta`.
    pub learn_mix: bool,
    pub alpha: f64,
    pub beta: f64,
    pub use_swa: bool,
    pub softmax_layers: Vec<u32>,
    /// Keep softmax attention in one layer of every n (wins over `softmax_layers` when set).
    pub softmax_every: Option<u32>,
    /// Also keep softmax attention in this many layers chosen by measurement.
    pub softmax_auto: Option<u32>,
    /// What the automatic choice measures: "loss" or "retrieval".
    pub softmax_auto_by: String,
    /// Text the automatic choice measures the layers on (default: the validation split).
    pub select_data: Option<String>,
    /// Validation text of its own instead of a split of the training data.
    pub val_data: Option<String>,
    /// AdamW's decoupled weight decay on the adapters (default 0).
    pub weight_decay: f64,
    /// Weight of distillation from the base model in the loss (default 0; GPU only).
    pub distill_weight: f64,
    /// Steps of attention transfer before the language-model training (default 0).
    pub attention_transfer_steps: u32,
    /// Steps and sequence length of the stage on longer sequences after the training (0 steps: none).
    pub long_context_steps: u32,
    pub long_context_seq_len: u32,
    pub lora_rank: u32,
    pub lora_alpha: f64,
    pub lora_targets: Vec<String>,
    pub steps: Option<u32>,
    pub epochs: f64,
    pub seq_len: u32,
    pub batch: u32,
    pub grad_accum: u32,
    pub lr: f64,
    /// "constant" or "cosine" (linear warmup over `warmup_steps`, then cosine decay).
    pub schedule: String,
    pub warmup_steps: u32,
    pub seed: f64,
    pub val_fraction: f64,
    pub max_val_sequences: u32,
    /// "alpaca" or "chat".
    pub prompt_format: String,
    pub skip_bad_rows: bool,
    pub sample_prompt: Option<String>,
    pub sample_max_tokens: u32,
    /// "f32", "f16" or "bf16".
    pub dtype: String,
    pub merged: bool,
    pub resume: bool,
    /// `out_dir` may hold other files (written beside, never deleted) or a run to start again.
    pub overwrite: bool,
    /// Keep only the newest this many `checkpoint-<step>` folders.
    pub keep_checkpoints: Option<u32>,
    pub eval_every: u32,
    pub save_every: u32,
    /// Where training runs: "cpu" or "cuda" (the first GPU).
    pub device: String,
}

fn linearize_options(o: JsLinearizeOptions) -> liger_core::Result<LinearizeOptions> {
    let usize_of = |v: u32| v as usize;
    Ok(LinearizeOptions {
        model_path: PathBuf::from(o.model_path),
        data_path: o.data_path.map(PathBuf::from),
        out_dir: PathBuf::from(o.out_dir),
        mixer: parse::mixer(&o.mixer)?,
        gsa_slots: usize_of(o.gsa_slots),
        gsa_scale: parse::gsa_scale(&o.gsa_scale)?,
        window: usize_of(o.window),
        sinks: usize_of(o.sinks),
        grm_norm: o.grm_norm,
        surprise_keys: usize_of(o.surprise_keys),
        surprise_repeat_tolerance: o.surprise_repeat_tolerance,
        surprise_after_training: o.surprise_after_training,
        learn_head_mix: o.learn_mix,
        alpha: o.alpha as f32,
        beta: o.beta as f32,
        use_swa: o.use_swa,
        softmax_layers: o.softmax_layers.into_iter().map(usize_of).collect(),
        softmax_every: o.softmax_every.map(usize_of),
        softmax_auto: o.softmax_auto.map(usize_of),
        softmax_auto_by: parse::layer_choice(&o.softmax_auto_by)?,
        select_data: o.select_data.map(PathBuf::from),
        val_data: o.val_data.map(PathBuf::from),
        lora_rank: usize_of(o.lora_rank),
        lora_alpha: o.lora_alpha as f32,
        lora_targets: o.lora_targets.iter().map(|t| parse::lora_target(t)).collect::<liger_core::Result<_>>()?,
        steps: o.steps.map(u64::from),
        epochs: o.epochs,
        seq_len: usize_of(o.seq_len),
        batch: usize_of(o.batch),
        grad_accum: usize_of(o.grad_accum),
        lr: o.lr as f32,
        weight_decay: o.weight_decay as f32,
        distill_weight: o.distill_weight as f32,
        attention_transfer_steps: u64::from(o.attention_transfer_steps),
        long_context: (o.long_context_steps > 0).then_some(LongContextStage {
            steps: u64::from(o.long_context_steps),
            seq_len: usize_of(o.long_context_seq_len),
        }),
        schedule: parse::schedule(&o.schedule, o.warmup_steps.into())?,
        seed: parse::whole_number("seed", o.seed)?,
        val_fraction: o.val_fraction,
        max_val_sequences: usize_of(o.max_val_sequences),
        prompt_format: parse::prompt_format(&o.prompt_format)?,
        bad_rows: if o.skip_bad_rows { BadRows::Skip } else { BadRows::Fail },
        sample_prompt: o.sample_prompt,
        sample_max_tokens: usize_of(o.sample_max_tokens),
        dtype: parse::dtype(&o.dtype)?,
        merged: o.merged,
        resume: o.resume,
        overwrite: o.overwrite,
        keep_checkpoints: o.keep_checkpoints.map(usize_of),
        eval_every: o.eval_every.into(),
        save_every: o.save_every.into(),
        device: o.device.parse()?,
    })
}

/// An `f32` setting as the JavaScript number that prints the same (0.001, not 0.0010000000474974513).
fn js_number(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v.into())
}

fn js_count(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The reverse of [`linearize_options`]: the facade's options as JavaScript values.
fn js_linearize_options(o: &LinearizeOptions) -> JsLinearizeOptions {
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (schedule, warmup_steps) = match o.schedule {
        Schedule::Constant => ("constant", 0),
        Schedule::WarmupCosine { warmup_steps, .. } => ("cosine", warmup_steps),
    };
    JsLinearizeOptions {
        model_path: path(&o.model_path),
        data_path: o.data_path.as_ref().map(path),
        out_dir: path(&o.out_dir),
        mixer: o.mixer.name().to_string(),
        gsa_slots: js_count(o.gsa_slots),
        gsa_scale: o.gsa_scale.name().to_string(),
        window: js_count(o.window),
        sinks: js_count(o.sinks),
        grm_norm: o.grm_norm,
        surprise_keys: js_count(o.surprise_keys),
        surprise_repeat_tolerance: o.surprise_repeat_tolerance,
        surprise_after_training: o.surprise_after_training,
        learn_mix: o.learn_head_mix,
        alpha: js_number(o.alpha),
        beta: js_number(o.beta),
        use_swa: o.use_swa,
        softmax_layers: o.softmax_layers.iter().copied().map(js_count).collect(),
        softmax_every: o.softmax_every.map(js_count),
        softmax_auto: o.softmax_auto.map(js_count),
        softmax_auto_by: parse::layer_choice_name(o.softmax_auto_by).to_string(),
        select_data: o.select_data.as_ref().map(path),
        val_data: o.val_data.as_ref().map(path),
        weight_decay: js_number(o.weight_decay),
        distill_weight: js_number(o.distill_weight),
        attention_transfer_steps: u32::try_from(o.attention_transfer_steps).unwrap_or(u32::MAX),
        long_context_steps: o.long_context.map_or(0, |s| u32::try_from(s.steps).unwrap_or(u32::MAX)),
        long_context_seq_len: o.long_context.map_or(0, |s| js_count(s.seq_len)),
        lora_rank: js_count(o.lora_rank),
        lora_alpha: js_number(o.lora_alpha),
        lora_targets: o.lora_targets.iter().map(|t| parse::lora_target_name(*t).to_string()).collect(),
        steps: o.steps.map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
        epochs: o.epochs,
        seq_len: js_count(o.seq_len),
        batch: js_count(o.batch),
        grad_accum: js_count(o.grad_accum),
        lr: js_number(o.lr),
        schedule: schedule.to_string(),
        warmup_steps: u32::try_from(warmup_steps).unwrap_or(u32::MAX),
        seed: o.seed as f64,
        val_fraction: o.val_fraction,
        max_val_sequences: js_count(o.max_val_sequences),
        prompt_format: parse::prompt_format_name(o.prompt_format).to_string(),
        skip_bad_rows: o.bad_rows == BadRows::Skip,
        sample_prompt: o.sample_prompt.clone(),
        sample_max_tokens: js_count(o.sample_max_tokens),
        dtype: parse::dtype_name(o.dtype).to_string(),
        merged: o.merged,
        resume: o.resume,
        overwrite: o.overwrite,
        keep_checkpoints: o.keep_checkpoints.map(js_count),
        eval_every: u32::try_from(o.eval_every).unwrap_or(u32::MAX),
        save_every: u32::try_from(o.save_every).unwrap_or(u32::MAX),
        device: o.device.to_string(),
    }
}

/// The facade's default of every linearize setting (`LinearizeOptions::new`; the paths empty):
/// the values the TypeScript layer fills in where an option is not given.
#[napi(js_name = "linearizeDefaults")]
pub fn linearize_defaults() -> JsLinearizeOptions {
    js_linearize_options(&LinearizeOptions::new(PathBuf::new(), None, PathBuf::new()))
}

/// Convert a model to Liger attention and train its LoRA adapters; resolves to the report.
#[napi(js_name = "linearize")]
pub fn linearize_js(
    options: JsLinearizeOptions,
    cancel: &CancelToken,
    on_event: Option<EventFn>,
) -> AsyncTask<JobTask> {
    let cancel = cancel.flag.clone();
    async_job(move || {
        let options = linearize_options(options)?;
        let mut on_event = |event: LinearizeEvent| emit(on_event.as_ref(), &event);
        json_text(&liger::linearize(&options, &cancel, &mut on_event)?)
    })
}
