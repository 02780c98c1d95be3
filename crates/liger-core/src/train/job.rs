//! The linearize job, what the CLI's main command runs: load a base model, read and pack the
//! data, measure the base model, convert it to Liger attention, train the LoRA adapters,
//! measure again, save the checkpoint and show a sample.

use super::data::{
    alpaca_prompt, pack, read_dataset, split_validation, tokenize_record, BadRows, Example, PromptFormat, Record,
    Sequence,
};
use super::layer_choice::{choose_softmax_layers, layer_conversion_costs, layer_retrieval_rates, LayerChoice};
use super::report::{write_run_report, StepEval, StepRecord, TrainingHistory};
use super::trainer::{
    evaluate, sequence_by_sequence, EvalResult, LongContextStage, Schedule, TrainConfig, TrainEvent, Trainable, Trainer,
};
use crate::chat::ChatMessage;
use crate::checkpoint::run::{
    check_run_folder, checkpoint_dir, latest_checkpoint, open_run_folder, prune_checkpoints, FINAL_MODEL,
};
use crate::checkpoint::{
    load_liger_checkpoint_on, load_training_state, read_liger_section, save_liger_checkpoint, SaveOptions,
    TrainingSnapshot,
};
use crate::convert::{linearize, LigerModel, LigerOptions, LoraGrads, LoraOptions};
use crate::error::{Error, ErrorCode, Result};
use crate::generate::{generate, CausalLm, GenerateOptions};
use crate::liger::{HeadMix, SurpriseCache};
use crate::model::forward::{forward, KvCache, Logits};
use crate::model::{load_model, BaseModel};
use crate::nn::loss::{LossOutput, IGNORE};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What to convert, on which data, and where to put the result.
#[derive(Clone, Debug)]
pub struct LinearizeJob {
    /// A `.gguf` file or a checkpoint directory.
    pub model_path: PathBuf,
    /// Alpaca-style `.json`/`.jsonl` (or a directory of them). `None`: convert only, no
    /// training and no validation.
    pub data_path: Option<PathBuf>,
    pub options: LigerOptions,
    pub lora: LoraOptions,
    pub train: TrainConfig,
    pub prompt_format: PromptFormat,
    /// Malformed data rows: fail (with the row number) or skip.
    pub bad_rows: BadRows,
    pub out_dir: PathBuf,
    /// Fraction of the records held out for validation.
    pub val_fraction: f64,
    /// At most this many validation sequences are evaluated (each evaluation costs forwards).
    pub max_val_sequences: usize,
    /// An instruction to answer greedily with the trained model at the end.
    pub sample_prompt: Option<String>,
    pub sample_max_tokens: usize,
    pub save: SaveOptions,
    /// Continue the run saved in `out_dir` when it holds training state.
    pub resume: bool,
    /// Choose this many softmax layers by measurement (adding to `options.softmax_layers`):
    /// the layers of largest `auto_softmax_by` measure on the selection text.
    pub auto_softmax_layers: Option<usize>,
    /// What the automatic choice measures: the loss of converting each layer alone (default),
    /// or how often the base model's heads in each layer retrieve beyond the window.
    pub auto_softmax_by: LayerChoice,
    /// Validation text of its own (`.txt`/`.raw`/`.json`/`.jsonl`); `None`: a held-out
    /// `val_fraction` of the training records.
    pub val_data: Option<PathBuf>,
    /// Text the layers are measured on (`.txt`/`.raw`/`.json`/`.jsonl`, packed like the
    /// training data); `None`: the validation sequences, else the first training sequences.
    pub select_data: Option<PathBuf>,
    /// With a surprise cache (`options.attention.surprise_keys`): train with the window alone and
    /// add the cache to the saved model, as LoLA adds it to a trained model (the default trains
    /// with the cache, so the adapters learn to read what it keeps).
    pub surprise_after_training: bool,
    /// Learn the branch weights of each query head with the adapters, starting from
    /// `options.attention.alpha` and `beta` (see `liger::head_mix`).
    pub learn_head_mix: bool,
    /// `out_dir` may hold other files (the run is written beside them, never deleting them),
    /// or a run to start again (its checkpoints and model are replaced).
    pub overwrite: bool,
    /// Keep only the newest this many `checkpoint-<step>` folders (`None`: all).
    pub keep_checkpoints: Option<usize>,
}

impl LinearizeJob {
    /// A job with the paper's settings for `model_path`, `data_path` and `out_dir`.
    pub fn new(model_path: PathBuf, data_path: Option<PathBuf>, out_dir: PathBuf) -> Self {
        LinearizeJob {
            model_path,
            data_path,
            options: LigerOptions::default(),
            lora: LoraOptions::default(),
            train: TrainConfig::default(),
            prompt_format: PromptFormat::Alpaca,
            bad_rows: BadRows::Fail,
            out_dir,
            val_fraction: 0.02,
            max_val_sequences: 16,
            sample_prompt: None,
            sample_max_tokens: 64,
            save: SaveOptions::default(),
            resume: false,
            auto_softmax_layers: None,
            auto_softmax_by: LayerChoice::Loss,
            select_data: None,
            val_data: None,
            surprise_after_training: false,
            learn_head_mix: false,
            overwrite: false,
            keep_checkpoints: None,
        }
    }
}

/// What the job reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    Stage(String),
    Progress(super::trainer::TrainProgress),
    Eval { name: String, loss: f64, ppl: f64 },
    Saved(PathBuf),
    Sample(String),
}

/// Every number of a finished (or cancelled) job (camelCase for JavaScript).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinearizeReport {
    pub model_name: String,
    pub train_records: usize,
    pub val_records: usize,
    pub skipped_rows: usize,
    pub train_sequences: usize,
    pub val_sequences: usize,
    /// The softmax base model on the validation sequences.
    pub base_eval: Option<EvalResult>,
    /// The converted model before and after training, on the same sequences.
    pub untrained_eval: Option<EvalResult>,
    pub trained_eval: Option<EvalResult>,
    pub steps_done: u64,
    pub total_steps: u64,
    /// Mean training loss of every step of the run (including resumed steps).
    pub losses: Vec<f64>,
    pub train_seconds: f64,
    pub tokens_per_s: f64,
    pub cancelled: bool,
    pub out_dir: String,
    pub sample: Option<String>,
    /// Decoding memory of one sequence of the converted model, in bytes.
    pub state_bytes: usize,
    /// The layers that kept softmax attention.
    pub softmax_layers: Vec<usize>,
    /// With automatic selection by loss: per layer, the loss increase (nats per token) of
    /// converting that layer alone, untrained, over the base model on the selection text.
    pub layer_costs: Option<Vec<f64>>,
    /// With automatic selection by retrieval: per layer, the fraction of the base model's
    /// (query head, query) pairs on the selection text that retrieve one token from beyond the
    /// window (`layer_choice::layer_retrieval_rates`).
    pub layer_retrieval: Option<Vec<f64>>,
    /// The steps and validations of this run, as they were reported.
    pub history: TrainingHistory,
    /// Decoding memory of one sequence against its length (f32, as the CPU engine keeps it).
    pub memory: DecodeMemory,
    /// The attention-transfer stage before training, when the run had one.
    pub attention_transfer: Option<StageReport>,
    /// The long-context stage after training, when the run had one.
    pub long_context: Option<StageReport>,
    /// The learned branch weights per layer at the end of the run (empty when the run did
    /// not learn them; `None` for softmax layers).
    pub head_mix: Vec<Option<HeadMix>>,
}

/// A stage of a run beside its training: attention transfer before it
/// (`TrainConfig::attention_transfer_steps`), longer sequences after it (`long_context`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    pub steps_done: u64,
    /// Mean loss of every step (attention transfer: the mean squared difference per output
    /// value, averaged over the Liger layers; long context: the training loss).
    pub losses: Vec<f64>,
    pub seconds: f64,
}

/// Decoding memory of one sequence of n tokens: `constant + n * per_token` bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecodeMemory {
    /// The base model: its KV cache, every layer.
    pub base_bytes_per_token: usize,
    /// The converted model: the states of its Liger layers (constant), and the KV caches of
    /// the layers that kept softmax attention.
    pub liger_constant_bytes: usize,
    pub liger_bytes_per_token: usize,
}

/// Summed cross-entropy of the base (softmax) model on one sequence, computed over chunks of
/// the sequence with a KV cache so that only `chunk x vocab` logits exist at a time.
pub fn base_model_loss(base: &BaseModel, inputs: &[u32], labels: &[u32]) -> Result<LossOutput> {
    const CHUNK: usize = 128;
    if inputs.is_empty() || inputs.len() != labels.len() {
        return Err(Error::invalid_argument("inputs and labels must be equally long and not empty"));
    }
    let (cfg, vocab) = (&base.config, base.config.vocab_size);
    let inv_freq = cfg.rope_inv_freq();
    let mut cache = KvCache::new(cfg.num_layers);
    let mut out = LossOutput { loss_sum: 0.0, count: 0 };
    for (tokens, labels) in inputs.chunks(CHUNK).zip(labels.chunks(CHUNK)) {
        let logits = forward(cfg, &base.weights, &inv_freq, &mut cache, tokens, Logits::All)?;
        for (row, &label) in logits.chunks_exact(vocab).zip(labels) {
            if label == IGNORE {
                continue;
            }
            if label as usize >= vocab {
                return Err(Error::invalid_argument(format!("label {label} is outside the vocabulary of {vocab}")));
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
            out.loss_sum += lse - row[label as usize] as f64;
            out.count += 1;
        }
    }
    Ok(out)
}

/// Renders and tokenizes records (prompt masked, EOS appended) for `base`.
fn tokenize_all(base: &BaseModel, records: &[Record], format: PromptFormat) -> Result<Vec<Example>> {
    let eos = base.tokenizer.eos_id().or_else(|| base.config.eos_token_ids.first().copied()).ok_or_else(|| {
        Error::new(
            ErrorCode::MissingTokenizer,
            "the model names no end-of-sequence token; training needs one to end each example",
        )
    })?;
    let render = |instruction: &str, input: &str| -> Result<String> {
        match format {
            PromptFormat::Alpaca => Ok(alpaca_prompt(instruction, input)),
            PromptFormat::Chat => {
                let content =
                    if input.trim().is_empty() { instruction.to_string() } else { format!("{instruction}\n\n{input}") };
                base.apply_chat_template(&[ChatMessage { role: "user".into(), content }], true)
            }
        }
    };
    // Chat templates write their own BOS into the text.
    let add_bos = base.tokenizer.add_bos_default() && format == PromptFormat::Alpaca;
    let encode = |text: &str, at_start: bool| {
        base.encode(text, Some(at_start && add_bos), format == PromptFormat::Chat && at_start)
    };
    records.iter().map(|r| tokenize_record(r, &render, &encode, eos)).collect()
}

type LossResult = Result<LossOutput>;

/// The converted model on the engine that trains, evaluates and samples it: the CPU engine
/// ([`LigerModel`] itself) or a GPU copy that keeps the adapters on the host, where the
/// trainer updates them and checkpoints read them.
pub trait EngineModel: Trainable + CausalLm {
    /// The host model, with the current adapters.
    fn host_model(&self) -> &LigerModel;
    /// Decoding memory of one sequence on this engine, in bytes, at its largest.
    fn state_bytes(&self) -> usize {
        self.state_bytes_with(&self.host_model().options)
    }
    /// [`EngineModel::state_bytes`] of the model run with other options (e.g. the surprise
    /// cache it was trained without).
    fn state_bytes_with(&self, options: &LigerOptions) -> usize {
        self.host_model().state_bytes_with(options)
    }
    /// Whether this engine decodes the model (else the sample is drawn on the CPU).
    fn decodes(&self) -> bool {
        true
    }
    /// The attention-transfer loss of a micro-batch, and its gradients added into `grads`
    /// (see `convert/attention_transfer.rs`; the GPU engine needs
    /// [`EngineModel::set_attention_teacher`] first).
    fn attention_transfer_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut Self::Grads,
    ) -> Result<LossOutput>;
    /// Whether [`EngineModel::set_attention_teacher`] needs the base model (the CPU engine
    /// reads its own frozen weights, which are the base's).
    const ATTENTION_TEACHER_NEEDS_BASE: bool = false;
    /// Readies attention transfer with `Some(base)`; `None` ends it and frees what it held.
    fn set_attention_teacher(&mut self, _base: Option<BaseModel>) -> Result<()> {
        Ok(())
    }
    /// Whether [`EngineModel::distill_from`] works on this engine (checked before any work).
    const DISTILLS: bool = false;
    /// Trains toward `base`'s next-token distributions with this weight from now on (see
    /// `TrainConfig::distill_weight`). Engines that cannot run a teacher beside the model refuse.
    fn distill_from(&mut self, _base: BaseModel, weight: f32) -> Result<()> {
        if weight == 0.0 {
            return Ok(());
        }
        Err(Error::invalid_argument(DISTILLATION_NEEDS_GPU))
    }
}

/// Why a run with distillation cannot train on the CPU engine.
pub const DISTILLATION_NEEDS_GPU: &str =
    "distillation runs the base model beside the one in training, on the GPU engine only: train with device cuda, or set the distillation weight to 0";

impl EngineModel for LigerModel {
    fn host_model(&self) -> &LigerModel {
        self
    }
    fn attention_transfer_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut LoraGrads,
    ) -> Result<LossOutput> {
        sequence_by_sequence(inputs, labels, |i, l| self.attention_transfer_backward(i, l, grad_scale, grads))
    }
}

/// The model as the trainer sees it during attention transfer: the same adapters, trained on
/// the attention-transfer loss.
struct AttentionTransferStage<'a, M>(&'a mut M);

impl<M: EngineModel> Trainable for AttentionTransferStage<'_, M> {
    type Grads = M::Grads;
    fn new_grads(&self) -> M::Grads {
        self.0.new_grads()
    }
    fn forward_backward(&self, inputs: &[u32], labels: &[u32], grad_scale: f32, grads: &mut M::Grads) -> LossResult {
        self.0.attention_transfer_batch(&[inputs], &[labels], grad_scale, grads)
    }
    fn forward_backward_batch(
        &self,
        inputs: &[&[u32]],
        labels: &[&[u32]],
        grad_scale: f32,
        grads: &mut M::Grads,
    ) -> LossResult {
        self.0.attention_transfer_batch(inputs, labels, grad_scale, grads)
    }
    fn loss(&self, inputs: &[u32], labels: &[u32]) -> LossResult {
        let mut scratch = self.0.new_grads();
        self.0.attention_transfer_batch(&[inputs], &[labels], 0.0, &mut scratch)
    }
    fn params(&self) -> Vec<(String, &[f32])> {
        self.0.params()
    }
    fn params_mut(&mut self) -> Vec<&mut [f32]> {
        self.0.params_mut()
    }
    fn decays(&self) -> Vec<bool> {
        self.0.decays()
    }
}

/// Runs the attention-transfer stage: `steps` optimizer steps (the run's optimizer settings,
/// a constant learning rate, a fresh optimizer state) on the training sequences.
fn transfer_attention<M: EngineModel>(
    job: &LinearizeJob,
    model: &mut M,
    train: &[Sequence],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<(StageReport, bool)> {
    let steps = job.train.attention_transfer_steps;
    model.host_model().attention_transfer_layers()?;
    if M::ATTENTION_TEACHER_NEEDS_BASE {
        on_event(JobEvent::Stage("loading the base model as the attention teacher".into()));
        model.set_attention_teacher(Some(load_model(&job.model_path, &mut |_, _| {})?))?;
    } else {
        model.set_attention_teacher(None)?;
    }
    on_event(JobEvent::Stage(format!(
        "attention transfer: {steps} steps of {} sequences of {} tokens, each Liger layer toward the base's softmax attention",
        job.train.sequences_per_step(),
        job.train.seq_len
    )));
    let config = stage_config(job, steps, job.train.seq_len, job.train.micro_batch, 0.0);
    let outcome = run_stage(config, &mut AttentionTransferStage(&mut *model), train, cancel, on_event);
    // The teacher goes whatever happened: the language-model stage does not need it.
    let ended = model.set_attention_teacher(None);
    let outcome = outcome?;
    ended?;
    Ok(outcome)
}

/// The training settings of a stage beside the training: its steps, sequences and
/// micro-batch, the run's optimizer at a constant learning rate, no validation or saves.
fn stage_config(
    job: &LinearizeJob,
    steps: u64,
    seq_len: usize,
    micro_batch: usize,
    distill_weight: f32,
) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        seq_len,
        micro_batch,
        schedule: Schedule::Constant,
        eval_every: 0,
        save_every: 0,
        save_on_cancel: false,
        distill_weight,
        attention_transfer_steps: 0,
        long_context: None,
        ..job.train.clone()
    }
}

/// Trains `model` for a stage with a fresh optimizer, reporting each step; returns the stage's
/// report and whether it was cancelled.
fn run_stage<M: Trainable>(
    config: TrainConfig,
    model: &mut M,
    train: &[Sequence],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<(StageReport, bool)> {
    let sizes: Vec<usize> = model.params().iter().map(|p| p.1.len()).collect();
    let mut trainer = Trainer::new(config, train.len(), &sizes)?;
    let start = Instant::now();
    let outcome = trainer.run(model, train, &[], cancel, &mut |event, _, _| {
        if let TrainEvent::Progress(p) = event {
            on_event(JobEvent::Progress(p));
        }
        Ok(())
    })?;
    let report = StageReport {
        steps_done: outcome.steps_done,
        losses: trainer.state.losses,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((report, outcome.cancelled))
}

/// Runs the long-context stage (see [`LongContextStage`]) on the training data packed long.
fn train_long_context<M: EngineModel>(
    job: &LinearizeJob,
    stage: LongContextStage,
    model: &mut M,
    train: &[Sequence],
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<(StageReport, bool)> {
    // About as many tokens per micro-batch as the training's.
    let micro_batch = (job.train.micro_batch * job.train.seq_len / stage.seq_len).max(1);
    on_event(JobEvent::Stage(format!(
        "long context: {} steps of {} sequences of {} tokens, over {} packed sequences",
        stage.steps,
        micro_batch * job.train.grad_accum,
        stage.seq_len,
        train.len()
    )));
    let config = stage_config(job, stage.steps, stage.seq_len, micro_batch, job.train.distill_weight);
    run_stage(config, model, train, cancel, on_event)
}

/// Saves one checkpoint folder of the run (`checkpoint-<step>` or the final model), making
/// `out_dir` a run folder at the first save, then keeps the newest `keep_checkpoints`.
fn save_in_run(
    job: &LinearizeJob,
    fresh: &mut bool,
    folder: &Path,
    model: &LigerModel,
    snapshot: Option<TrainingSnapshot>,
) -> Result<()> {
    open_run_folder(&job.out_dir, std::mem::take(fresh))?;
    save_liger_checkpoint(folder, model, &job.save, snapshot)?;
    if let Some(keep) = job.keep_checkpoints {
        prune_checkpoints(&job.out_dir, keep)?;
    }
    Ok(())
}

fn eval_event(name: &str, r: &EvalResult) -> JobEvent {
    JobEvent::Eval { name: name.into(), loss: r.loss, ppl: r.ppl }
}

/// A resumed run continues with the settings it was saved with. Asking for different ones
/// (a new learning rate, mixer, rank, ...) is refused, naming each difference, rather than
/// silently ignored. How often to validate and save may change.
fn check_resumed_settings(
    job: &LinearizeJob,
    options: &LigerOptions,
    lora: &LoraOptions,
    saved: &TrainConfig,
) -> Result<()> {
    let mut asked = job.train.clone();
    (asked.eval_every, asked.save_every, asked.save_on_cancel) =
        (saved.eval_every, saved.save_every, saved.save_on_cancel);
    let mut differences = Vec::new();
    diff_json("", &json_of(saved)?, &json_of(&asked)?, &mut differences);
    // Softmax layers chosen by measurement are whatever the first run chose.
    let asked_options = if job.auto_softmax_layers.is_some() {
        LigerOptions { softmax_layers: options.softmax_layers.clone(), ..job.options.clone() }
    } else {
        job.options.clone()
    };
    let mut asked_options = asked_options;
    let cache = job.save.surprise_cache.unwrap_or(asked_options.attention.surprise_cache());
    asked_options.attention.set_surprise_cache(cache);
    // Learned branch weights are whatever the first run learned; asked for or not is a setting.
    let saved_learns = !options.head_mix.is_empty();
    if saved_learns != job.learn_head_mix {
        differences.push(format!("learned branch weights: saved {saved_learns}, asked {}", job.learn_head_mix));
    }
    asked_options.head_mix = options.head_mix.clone();
    diff_json("", &json_of(options)?, &json_of(&asked_options)?, &mut differences);
    // The adapters' seed only matters for a fresh start.
    let asked_lora = LoraOptions { seed: lora.seed, ..job.lora.clone() };
    diff_json("lora.", &json_of(lora)?, &json_of(&asked_lora)?, &mut differences);
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::invalid_argument(format!(
        "{} was saved with other settings than this run asks for ({}); resume with the saved settings, or train a new run into another folder",
        job.out_dir.display(),
        differences.join("; ")
    )))
}

fn json_of<T: Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::internal(e.to_string()))
}

/// Every leaf where `saved` and `asked` differ, as "path: saved X, asked Y".
fn diff_json(path: &str, saved: &serde_json::Value, asked: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (saved, asked) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                diff_json(&format!("{path}{key}."), value, b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        _ if saved != asked => out.push(format!("{}: saved {saved}, asked {asked}", path.trim_end_matches('.'))),
        _ => {}
    }
}

/// Runs the whole job on the CPU engine. Cancellation (checked between training steps)
/// returns a report with `cancelled: true`; a checkpoint is written then only when
/// `train.save_on_cancel` asks.
pub fn run_linearize(
    job: &LinearizeJob,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<LinearizeReport> {
    run_linearize_on(job, cancel, on_event, &mut |model| Ok(model))
}

/// Runs the whole job, evaluating, training and sampling the converted model on the engine
/// `to_engine` moves it to (the CPU: `Ok(model)`; a GPU: the bindings pass its upload).
pub fn run_linearize_on<M: EngineModel>(
    job: &LinearizeJob,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(JobEvent),
    to_engine: &mut dyn FnMut(LigerModel) -> Result<M>,
) -> Result<LinearizeReport> {
    // A cache added after training: the run converts, trains and validates without it, and
    // every checkpoint it writes runs with it.
    let surprise_cache = job.options.attention.surprise_cache();
    if job.surprise_after_training && surprise_cache.keys == 0 {
        return Err(Error::invalid_argument(
            "surprise_after_training adds a surprise cache after training: set surprise_keys too",
        ));
    }
    let mut as_run = job.clone();
    if surprise_cache.keys > 0 && job.surprise_after_training {
        as_run.options.attention.set_surprise_cache(SurpriseCache::default());
        as_run.save.surprise_cache = Some(surprise_cache);
    }
    let job = &as_run;
    job.train.validate()?;
    if job.train.distill_weight > 0.0 && !M::DISTILLS {
        return Err(Error::invalid_argument(DISTILLATION_NEEDS_GPU));
    }
    if !(0.0..1.0).contains(&job.val_fraction) {
        return Err(Error::invalid_argument(format!("val_fraction must be in [0, 1), got {}", job.val_fraction)));
    }
    // Found now rather than after training: an output folder that cannot be written, or one
    // that holds the user's own files or another run (see checkpoint::run).
    check_run_folder(&job.out_dir, job.overwrite, job.resume)?;
    if job.keep_checkpoints == Some(0) {
        return Err(Error::invalid_argument(
            "keep_checkpoints must be at least 1 (the final model is kept beside them)",
        ));
    }
    let resume_from = if job.resume { latest_checkpoint(&job.out_dir)? } else { None };
    // A run that starts over clears the checkpoints of the run before at its first save.
    let mut fresh_run = resume_from.is_none();
    on_event(JobEvent::Stage("loading model".into()));
    let base = load_model(&job.model_path, &mut |_, _| {})?;
    let mut report = LinearizeReport {
        model_name: base.name.clone(),
        out_dir: job.out_dir.display().to_string(),
        ..Default::default()
    };

    // The training data packed for the long-context stage, when the run has one.
    let mut long_seqs = Vec::new();
    let (train_seqs, val_seqs) = match &job.data_path {
        Some(path) => {
            on_event(JobEvent::Stage("reading data".into()));
            let data = read_dataset(path, job.bad_rows)?;
            report.skipped_rows = data.skipped;
            // Held-out text of its own (e.g. WikiText-2 valid) instead of a split of the data.
            let (train, val) = match &job.val_data {
                Some(val_path) => (data.records, read_dataset(val_path, job.bad_rows)?.records),
                None => split_validation(data.records, job.val_fraction, job.train.seed)?,
            };
            (report.train_records, report.val_records) = (train.len(), val.len());
            on_event(JobEvent::Stage("tokenizing".into()));
            let examples = tokenize_all(&base, &train, job.prompt_format)?;
            let train = pack(&examples, job.train.seq_len);
            long_seqs = job.train.long_context.map(|stage| pack(&examples, stage.seq_len)).unwrap_or_default();
            let mut val = pack(&tokenize_all(&base, &val, job.prompt_format)?, job.train.seq_len);
            val.truncate(job.max_val_sequences);
            (train, val)
        }
        None => (Vec::new(), Vec::new()),
    };
    (report.train_sequences, report.val_sequences) = (train_seqs.len(), val_seqs.len());
    if let (Some(stage), true, false) = (job.train.long_context, long_seqs.is_empty(), train_seqs.is_empty()) {
        return Err(Error::invalid_argument(format!(
            "the training data holds less than one sequence of {} tokens for the long-context stage; use a shorter length or more data",
            stage.seq_len
        )));
    }
    let validate = |model: &dyn Fn(&[u32], &[u32]) -> LossResult| -> Result<Option<EvalResult>> {
        if val_seqs.is_empty() {
            return Ok(None);
        }
        evaluate(&val_seqs, &mut |i, l| model(i, l)).map(Some)
    };

    if !val_seqs.is_empty() {
        on_event(JobEvent::Stage("validating the base model".into()));
        report.base_eval = validate(&|i, l| base_model_loss(&base, i, l))?;
        report.base_eval.iter().for_each(|r| on_event(eval_event("base", r)));
    }
    let mut options = job.options.clone();
    if let Some(n) = job.auto_softmax_layers.filter(|_| !job.resume) {
        let select = match &job.select_data {
            Some(path) => {
                let data = read_dataset(path, job.bad_rows)?;
                let mut seqs = pack(&tokenize_all(&base, &data.records, job.prompt_format)?, job.train.seq_len);
                seqs.truncate(job.max_val_sequences);
                seqs
            }
            None if !val_seqs.is_empty() => val_seqs.clone(),
            None => train_seqs.iter().take(job.max_val_sequences).cloned().collect(),
        };
        let measure = match job.auto_softmax_by {
            LayerChoice::Loss => {
                let costs = layer_conversion_costs(job, base.config.num_layers, &select, on_event, to_engine)?;
                report.layer_costs = Some(costs.clone());
                costs
            }
            LayerChoice::Retrieval => {
                let window = options.attention.window();
                let mut progress = |i: usize, n: usize| {
                    on_event(JobEvent::Stage(format!(
                        "measuring where the base model retrieves beyond the {}-key window: sequence {} of {n}",
                        window.keys,
                        i + 1
                    )))
                };
                let rates = layer_retrieval_rates(&base, &select, window.keys, window.sinks, &mut progress)?;
                report.layer_retrieval = Some(rates.clone());
                rates
            }
        };
        options.softmax_layers = choose_softmax_layers(&measure, &options.softmax_layers, n);
        on_event(JobEvent::Stage(format!("softmax attention kept in layers {:?}", options.softmax_layers)));
    }
    let saved_section = match &resume_from {
        Some(dir) => read_liger_section(dir)?.map(|s| (dir.clone(), s)),
        None => None,
    };
    let (host_model, resume_state) = if let Some((from, section)) = saved_section {
        on_event(JobEvent::Stage(format!("resuming from {}", from.display())));
        let (mut model, on_base) = load_liger_checkpoint_on(&from, base)?;
        model.options.attention.set_surprise_cache(job.options.attention.surprise_cache());
        on_event(JobEvent::Stage(if on_base {
            "resuming on the base model's own weights (the checkpoint's are the same values)".into()
        } else {
            format!(
                "resuming on the checkpoint's weights: {} holds other weights than the checkpoint",
                job.model_path.display()
            )
        }));
        let state = load_training_state(&from, &model)?;
        if let Some((saved, _)) = &state {
            check_resumed_settings(job, &section.options, &section.lora, &saved.config)?;
        }
        (model, state)
    } else {
        on_event(JobEvent::Stage("converting to Liger attention".into()));
        if job.learn_head_mix {
            let c = &base.config;
            options = options.with_learned_head_mix(c.num_layers, c.num_heads);
        }
        (linearize(base, options, job.lora.clone())?, None)
    };
    report.softmax_layers = host_model.options.softmax_layers.clone();
    let mut model = to_engine(host_model)?;
    report.state_bytes = model.state_bytes();
    if surprise_cache.keys > 0 {
        // What the saved model keeps on this engine: it decodes with the cache, even when the
        // run trains without it.
        let mut saved = model.host_model().options.clone();
        saved.attention.set_surprise_cache(surprise_cache);
        report.state_bytes = model.state_bytes_with(&saved);
    }
    report.memory = decode_memory(model.host_model(), surprise_cache);
    report.untrained_eval = validate(&|i, l| model.loss(i, l))?;
    report.untrained_eval.iter().for_each(|r| on_event(eval_event("liger (untrained)", r)));

    let mut trainer = None;
    // Attention transfer comes first, in a fresh run only: a resumed run is past it.
    if job.data_path.is_some() && job.train.attention_transfer_steps > 0 && resume_state.is_none() {
        let (transfer, cancelled) = transfer_attention(job, &mut model, &train_seqs, cancel, on_event)?;
        report.attention_transfer = Some(transfer);
        if cancelled {
            report.cancelled = true;
            return Ok(report);
        }
    }
    if job.data_path.is_some() {
        if job.train.distill_weight > 0.0 {
            on_event(JobEvent::Stage("loading the base model as the teacher to distill from".into()));
            model.distill_from(load_model(&job.model_path, &mut |_, _| {})?, job.train.distill_weight)?;
        }
        on_event(JobEvent::Stage("training".into()));
        let sizes: Vec<usize> = model.params().iter().map(|p| p.1.len()).collect();
        let mut t = match resume_state {
            Some((state, optimizer)) => Trainer::resume(state, optimizer, train_seqs.len(), &sizes)?,
            None => Trainer::new(job.train.clone(), train_seqs.len(), &sizes)?,
        };
        report.total_steps = t.state.total_steps;
        on_event(JobEvent::Stage(format!(
            "training: {} steps of {} sequences of {} tokens, over {} packed sequences",
            t.state.total_steps,
            job.train.sequences_per_step(),
            job.train.seq_len,
            train_seqs.len()
        )));
        let start = Instant::now();
        let save = job.save;
        let mut history = TrainingHistory::default();
        let outcome = t.run(&mut model, &train_seqs, &val_seqs, cancel, &mut |event, m, tr| {
            match event {
                TrainEvent::Progress(p) => {
                    history.steps.push(StepRecord {
                        step: p.step,
                        loss: p.loss,
                        lr: p.lr,
                        grad_norm: p.grad_norm,
                        tokens_per_s: p.tokens_per_s,
                    });
                    on_event(JobEvent::Progress(p))
                }
                TrainEvent::Eval { step, result } => {
                    history.evals.push(StepEval { step, loss: result.loss, ppl: result.ppl });
                    on_event(eval_event(&format!("step {step}"), &result))
                }
                // The final checkpoint is written after training.
                TrainEvent::Save { step } if step == tr.state.total_steps => {}
                TrainEvent::Save { step } => {
                    let snapshot =
                        (!save.merged).then_some(TrainingSnapshot { state: &tr.state, optimizer: &tr.optimizer });
                    let folder = checkpoint_dir(&job.out_dir, step);
                    save_in_run(job, &mut fresh_run, &folder, m.host_model(), snapshot)?;
                    on_event(JobEvent::Saved(folder));
                }
            }
            Ok(())
        })?;
        report.history = history;
        report.train_seconds = start.elapsed().as_secs_f64();
        report.steps_done = outcome.steps_done;
        report.cancelled = outcome.cancelled;
        report.losses = t.state.losses.clone();
        report.tokens_per_s =
            (outcome.steps_done as f64 * job.train.sequences_per_step() as f64 * job.train.seq_len as f64)
                / report.train_seconds.max(1e-9);
        // The long-context stage follows the training, unless a resumed run had finished it
        // (its model then already went through the stage).
        if let (Some(stage), false) = (job.train.long_context, report.cancelled) {
            if !(job.resume && outcome.steps_done == 0) {
                let (long, cancelled) = train_long_context(job, stage, &mut model, &long_seqs, cancel, on_event)?;
                report.long_context = Some(long);
                report.cancelled = cancelled;
            }
        }
        trainer = Some(t);
    }
    if report.cancelled {
        return Ok(report);
    }

    report.trained_eval = validate(&|i, l| model.loss(i, l))?;
    report.trained_eval.iter().for_each(|r| on_event(eval_event("liger (trained)", r)));
    report.head_mix = model.host_model().options.head_mix.clone();
    on_event(JobEvent::Stage("saving".into()));
    let snapshot = trainer
        .as_ref()
        .filter(|_| !job.save.merged)
        .map(|t| TrainingSnapshot { state: &t.state, optimizer: &t.optimizer });
    let folder = job.out_dir.join(FINAL_MODEL);
    save_in_run(job, &mut fresh_run, &folder, model.host_model(), snapshot)?;
    on_event(JobEvent::Saved(folder));

    if let Some(prompt) = &job.sample_prompt {
        on_event(JobEvent::Stage("sampling".into()));
        let text = match job.prompt_format {
            PromptFormat::Alpaca => alpaca_prompt(prompt, ""),
            PromptFormat::Chat => model
                .host_model()
                .base
                .apply_chat_template(&[ChatMessage { role: "user".into(), content: prompt.clone() }], true)?,
        };
        let ids = model.host_model().base.encode(&text, None, job.prompt_format == PromptFormat::Chat)?;
        let opts = GenerateOptions { max_tokens: job.sample_max_tokens, ..GenerateOptions::default() };
        let result = if model.decodes() {
            generate(&model, &ids, &opts, cancel, &mut |_, _| {})?
        } else {
            on_event(JobEvent::Stage("sampling on the CPU (this engine does not decode the model)".into()));
            generate(model.host_model(), &ids, &opts, cancel, &mut |_, _| {})?
        };
        on_event(JobEvent::Sample(result.text.clone()));
        report.sample = Some(result.text);
    }
    write_run_report(&job.out_dir, &report)?;
    Ok(report)
}

/// Decoding memory of the saved model (its surprise cache included) against the base's.
fn decode_memory(host: &LigerModel, surprise_cache: SurpriseCache) -> DecodeMemory {
    let c = &host.base.config;
    let per_layer = 2 * c.kv_size() * std::mem::size_of::<f32>();
    let mut options = host.options.clone();
    options.attention.set_surprise_cache(surprise_cache);
    let softmax = (0..c.num_layers).filter(|&l| options.is_softmax_layer(l)).count();
    let all = host.state_bytes_with(&options);
    DecodeMemory {
        base_bytes_per_token: per_layer * c.num_layers,
        liger_constant_bytes: all.saturating_sub(softmax * per_layer * c.max_position_embeddings),
        liger_bytes_per_token: softmax * per_layer,
    }
}
