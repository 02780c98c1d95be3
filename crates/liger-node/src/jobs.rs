//! Long jobs: evaluation, perplexity and linearize. Each runs on a worker thread (a napi
//! `AsyncTask`, so JavaScript gets a promise), reports events through a threadsafe function,
//! and stops when its `CancelToken` is cancelled. Results resolve as JSON text (the
//! TypeScript layer parses it): napi cannot declare a type for an arbitrary JSON value.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use liger_core::checkpoint::SaveOptions;
use liger_core::convert::{LigerOptions, LoraOptions, LoraTarget};
use liger_core::eval::passkey::{passkey_by_loglikelihood, PasskeyOptions};
use liger_core::eval::perplexity::{rolling_perplexity, ScoredText};
use liger_core::eval::report::{compare, render_html};
use liger_core::eval::{run_task, EvalOptions, EvalReport, ScoreModel, Task as EvalTaskName};
use liger_core::hf::SaveDtype;
use liger_core::liger::MixerKind;
use liger_core::model::load_model;
use liger_core::tokenizer::Tokenizer;
use liger_core::train::data::{BadRows, PromptFormat};
use liger_core::train::job::{run_linearize, JobEvent, LinearizeJob};
use liger_core::train::trainer::Schedule;
use liger_core::{Error, ErrorCode};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use serde_json::{json, Value};

use crate::models::AnyModel;
use crate::{run, NativeModel};

// ---- cancellation and events ------------------------------------------------------------

/// A flag JavaScript sets to stop a running job (checked between forwards / training steps).
#[napi]
pub struct CancelToken {
    pub(crate) flag: Arc<AtomicBool>,
}

#[napi]
impl CancelToken {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        CancelToken { flag: Arc::new(AtomicBool::new(false)) }
    }

    #[napi]
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}

/// Events of a job, as plain objects with a `kind`.
pub(crate) type EventFn = ThreadsafeFunction<Value, (), Value, Status, false>;

/// Hand one event to JavaScript and wait until its callback ran, so that no event arrives
/// after the job's promise has settled.
fn emit(callback: Option<&EventFn>, event: Value) {
    let Some(callback) = callback else { return };
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let status = callback.call_with_return_value(event, ThreadsafeFunctionCallMode::Blocking, move |_, _| {
        let _ = seen_tx.send(());
        Ok(())
    });
    if status == Status::Ok {
        let _ = seen_rx.recv();
    }
}

/// Reports `(done, total)` of a task at most once per percent (it is called per request,
/// from several threads).
pub(crate) fn throttled_progress<'a>(
    callback: Option<&'a EventFn>,
    task: &'a str,
) -> impl Fn(usize, usize) + Sync + 'a {
    let last_percent = AtomicUsize::new(usize::MAX);
    move |done, total| {
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if last_percent.swap(percent, Ordering::Relaxed) != percent {
            emit(callback, json!({ "kind": "progress", "task": task, "done": done, "total": total }));
        }
    }
}

/// A model that stops scoring once the job is cancelled: every forward checks the flag.
pub(crate) struct Cancellable<'a> {
    pub(crate) model: &'a dyn ScoreModel,
    pub(crate) cancel: &'a AtomicBool,
}

impl ScoreModel for Cancellable<'_> {
    fn all_logits(&self, tokens: &[u32]) -> liger_core::Result<Vec<f32>> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::new(ErrorCode::Aborted, "the evaluation was aborted"));
        }
        self.model.all_logits(tokens)
    }
    fn tokenizer(&self) -> &Tokenizer {
        self.model.tokenizer()
    }
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
    fn max_length(&self) -> Option<usize> {
        self.model.max_length()
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> liger_core::Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::internal(format!("serializing a result: {e}")))
}

/// A JavaScript number that must be a non-negative integer (seeds, counts).
fn whole_number(name: &str, value: f64) -> liger_core::Result<u64> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9_007_199_254_740_992.0 {
        Ok(value as u64)
    } else {
        Err(Error::invalid_argument(format!("{name} must be an integer in [0, 2^53), got {value}")))
    }
}

// ---- evaluation ---------------------------------------------------------------------------

#[napi(object)]
pub struct JsEvalOptions {
    /// Task names as lm-eval spells them.
    pub tasks: Vec<String>,
    /// Folder laid out like the project's data (`arc_easy/ARC-Easy-Test.jsonl`, ...).
    pub data_dir: Option<String>,
    /// Explicit files per task, `[task, path]` pairs; they win over `data_dir`.
    pub task_files: Vec<Vec<String>>,
    pub limit: Option<u32>,
    pub seed: f64,
    pub max_length: Option<u32>,
    pub window: Option<u32>,
    pub add_bos: bool,
    /// Passkey lengths in tokens (none: no passkey test).
    pub passkey: Option<Vec<u32>>,
    /// Passkey prompts per length and depth (default 1) and the depths (default 5 of them).
    pub passkey_trials: Option<u32>,
    pub passkey_depths: Option<Vec<f64>>,
    /// The model's name in the report.
    pub label: String,
    /// Where scoring runs: "cpu" (default) or "cuda" (a bf16 copy on the first GPU).
    pub device: Option<String>,
}

pub struct EvalTask {
    model: Arc<AnyModel>,
    options: JsEvalOptions,
    cancel: Arc<AtomicBool>,
    on_event: Option<EventFn>,
}

impl EvalTask {
    /// Every task with the file (or folder) it is read from.
    fn task_paths(&self) -> liger_core::Result<Vec<(EvalTaskName, PathBuf)>> {
        let o = &self.options;
        if o.tasks.is_empty() && o.passkey.is_none() {
            return Err(Error::invalid_argument(format!(
                "no tasks given; known tasks: {}",
                liger_core::eval::TASK_NAMES.join(", ")
            )));
        }
        let mut out = Vec::new();
        for name in &o.tasks {
            let task = EvalTaskName::from_name(name)?;
            let explicit = o.task_files.iter().find(|pair| pair.first() == Some(name)).and_then(|pair| pair.get(1));
            let path = match (explicit, &o.data_dir) {
                (Some(file), _) => PathBuf::from(file),
                (None, Some(dir)) => task.default_path(Path::new(dir)),
                (None, None) => {
                    return Err(Error::invalid_argument(format!(
                        "no data folder for task {name}: pass dataDir (the CLI's --data) or a file for it in taskFiles"
                    )))
                }
            };
            out.push((task, path));
        }
        Ok(out)
    }

    fn evaluate(&self) -> liger_core::Result<Value> {
        let o = &self.options;
        let options = EvalOptions {
            max_length: o.max_length.map(|v| v as usize),
            limit: o.limit.map(|v| v as usize),
            seed: whole_number("seed", o.seed)?,
            add_bos: o.add_bos,
            perplexity_window: o.window.map(|v| v as usize),
        };
        let tasks = self.task_paths()?;
        let gpu = match o.device.as_deref().unwrap_or("cpu") {
            "cpu" => None,
            "cuda" => Some(self.model.upload_for_scoring(0)?),
            other => return Err(Error::invalid_argument(format!("unknown device {other:?}; known: cpu, cuda"))),
        };
        let scorer = Cancellable {
            model: gpu.as_deref().map_or(self.model.scorer(), |g| g as &dyn ScoreModel),
            cancel: &self.cancel,
        };
        let on_event = self.on_event.as_ref();
        let mut report = EvalReport::new(o.label.clone(), options.clone());
        for (index, (task, path)) in tasks.iter().enumerate() {
            emit(on_event, json!({ "kind": "task", "task": task.name(), "index": index, "count": tasks.len() }));
            let progress = throttled_progress(on_event, task.name());
            let result = run_task(&scorer, *task, path, &options, Some(&progress))?;
            emit(on_event, json!({ "kind": "taskDone", "task": task.name(), "result": to_json(&result)? }));
            report.push(result);
        }
        if let Some(lengths) = &o.passkey {
            emit(
                on_event,
                json!({ "kind": "task", "task": "passkey", "index": tasks.len(), "count": tasks.len() + 1 }),
            );
            let defaults = PasskeyOptions::default();
            let passkey = PasskeyOptions {
                lengths: lengths.iter().map(|&l| l as usize).collect(),
                trials: o.passkey_trials.map_or(1, |t| t as usize),
                depths: o.passkey_depths.clone().unwrap_or(defaults.depths),
                seed: options.seed,
                corpus: None,
            };
            report.passkey = Some(passkey_by_loglikelihood(&scorer, &passkey, &options)?);
        }
        to_json(&report)
    }
}

impl Task for EvalTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<String> {
        run(|| self.evaluate().map(|v| v.to_string()))
    }
    fn resolve(&mut self, _env: Env, report: String) -> Result<String> {
        Ok(report)
    }
}

/// Where the text to score comes from: exactly one of `text` and `file`.
#[napi(object)]
pub struct JsTextSource {
    pub text: Option<String>,
    pub file: Option<String>,
}

pub struct PerplexityTask {
    model: Arc<AnyModel>,
    source: JsTextSource,
    window: Option<u32>,
    cancel: Arc<AtomicBool>,
    on_event: Option<EventFn>,
}

impl PerplexityTask {
    fn perplexity(&self) -> liger_core::Result<Value> {
        let text = match (&self.source.text, &self.source.file) {
            (Some(text), None) => text.clone(),
            (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?,
            _ => return Err(Error::invalid_argument("give either a text or a file to score, not both")),
        };
        // The same windows for a base model and its Liger version, so their numbers compare:
        // the base model's context unless the caller says otherwise.
        let window = match self.window {
            Some(w) => w as usize,
            None => self.model.base().config.max_position_embeddings,
        };
        let scorer = Cancellable { model: self.model.scorer(), cancel: &self.cancel };
        let progress = throttled_progress(self.on_event.as_ref(), "perplexity");
        to_json(&rolling_perplexity(&scorer, &[ScoredText::plain(text)], window, Some(&progress))?)
    }
}

impl Task for PerplexityTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<String> {
        run(|| self.perplexity().map(|v| v.to_string()))
    }
    fn resolve(&mut self, _env: Env, result: String) -> Result<String> {
        Ok(result)
    }
}

#[napi]
impl NativeModel {
    /// Score the model on tasks; resolves to an `EvalReport` object.
    #[napi]
    pub fn evaluate(
        &self,
        options: JsEvalOptions,
        cancel: &CancelToken,
        on_event: Option<EventFn>,
    ) -> AsyncTask<EvalTask> {
        AsyncTask::new(EvalTask { model: self.model.clone(), options, cancel: cancel.flag.clone(), on_event })
    }

    /// Rolling perplexity of a text or a text file; resolves to a `PerplexityResult` object.
    #[napi]
    pub fn perplexity(
        &self,
        source: JsTextSource,
        window: Option<u32>,
        cancel: &CancelToken,
        on_event: Option<EventFn>,
    ) -> AsyncTask<PerplexityTask> {
        AsyncTask::new(PerplexityTask {
            model: self.model.clone(),
            source,
            window,
            cancel: cancel.flag.clone(),
            on_event,
        })
    }
}

/// Recovery of `linearized` against `base` (two `EvalReport` objects): a `Comparison` object.
#[napi(js_name = "compareReports")]
pub fn compare_reports(base: Value, linearized: Value) -> Result<Value> {
    run(|| {
        let parse = |v: Value, what: &str| {
            serde_json::from_value::<EvalReport>(v)
                .map_err(|e| Error::invalid_argument(format!("{what} is not an evaluation report: {e}")))
        };
        to_json(&compare(&parse(base, "the base report")?, &parse(linearized, "the linearized report")?)?)
    })
}

/// A self-contained HTML page of reports (and an optional comparison).
#[napi(js_name = "renderEvalHtml")]
pub fn render_eval_html(reports: Vec<Value>, comparison: Option<Value>) -> Result<String> {
    run(|| {
        let reports = reports
            .into_iter()
            .map(|r| {
                serde_json::from_value::<EvalReport>(r)
                    .map_err(|e| Error::invalid_argument(format!("not an evaluation report: {e}")))
            })
            .collect::<liger_core::Result<Vec<_>>>()?;
        let comparison = comparison
            .map(|c| serde_json::from_value(c).map_err(|e| Error::invalid_argument(format!("not a comparison: {e}"))))
            .transpose()?;
        Ok(render_html(&reports.iter().collect::<Vec<_>>(), comparison.as_ref()))
    })
}

// ---- linearize ----------------------------------------------------------------------------

/// Every setting of a linearize run, defaults already filled in by the TypeScript layer.
#[napi(object)]
pub struct JsLinearizeOptions {
    pub model_path: String,
    pub data_path: Option<String>,
    pub out_dir: String,
    pub mixer: String,
    pub window: u32,
    /// First tokens every query of the window branch also sees (attention sinks; 0 = none).
    pub sinks: u32,
    /// Normalise the recurrent branch by the same recurrence over values of one.
    pub grm_norm: bool,
    /// Tokens per key-value head that left the window and stay visible to it, chosen by
    /// surprise (0 = none); trained with, unless `surprise_after_training`.
    pub surprise_keys: u32,
    /// Train with the window alone and add the surprise cache to the saved model.
    pub surprise_after_training: bool,
    pub alpha: f64,
    pub beta: f64,
    pub use_swa: bool,
    pub softmax_layers: Vec<u32>,
    /// Keep softmax attention in one layer of every n (wins over `softmax_layers` when set).
    pub softmax_every: Option<u32>,
    /// Also keep softmax attention in this many layers chosen by measurement.
    pub softmax_auto: Option<u32>,
    /// Text the automatic choice measures the layers on (default: the validation split).
    pub select_data: Option<String>,
    /// Validation text of its own instead of a split of the training data.
    pub val_data: Option<String>,
    /// AdamW's decoupled weight decay on the adapters (default 0).
    pub weight_decay: f64,
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

fn parse_name<T: serde::de::DeserializeOwned>(what: &str, name: &str, known: &str) -> liger_core::Result<T> {
    serde_json::from_value(Value::String(name.to_string()))
        .map_err(|_| Error::invalid_argument(format!("unknown {what} {name:?}; known: {known}")))
}

/// Build the core job from the options. The model is loaded once here to check the
/// conversion options against it before any data is read (and for `softmax_every`, which
/// needs the number of layers); the job loads it again itself.
fn build_job(o: &JsLinearizeOptions) -> liger_core::Result<LinearizeJob> {
    let mixer_names: Vec<&str> = MixerKind::ALL.iter().map(|m| m.name()).collect();
    let kind: MixerKind = parse_name("mixer", &o.mixer, &mixer_names.join(", "))?;
    let base = load_model(Path::new(&o.model_path), &mut |_, _| {})?;
    let mut options = match o.softmax_every {
        Some(n) => LigerOptions::with_softmax_every(n as usize, base.config.num_layers)?,
        None => LigerOptions {
            softmax_layers: o.softmax_layers.iter().map(|&l| l as usize).collect(),
            ..Default::default()
        },
    };
    let attention = &mut options.attention;
    attention.mixer.kind = kind;
    attention.window_keys = o.window as usize;
    attention.sink_keys = o.sinks as usize;
    attention.grm_norm = o.grm_norm;
    attention.surprise_keys = o.surprise_keys as usize;
    attention.use_swa = o.use_swa;
    (attention.alpha, attention.beta) = (o.alpha as f32, o.beta as f32);
    options.validate(&base.config)?;
    let seed = whole_number("seed", o.seed)?;
    let targets = o
        .lora_targets
        .iter()
        .map(|t| parse_name::<LoraTarget>("LoRA target", t, "q, k, v, o"))
        .collect::<liger_core::Result<Vec<_>>>()?;
    let lora = LoraOptions { rank: o.lora_rank as usize, alpha: o.lora_alpha as f32, targets, seed };
    lora.validate()?;

    let mut job = LinearizeJob::new(
        PathBuf::from(&o.model_path),
        o.data_path.as_ref().map(PathBuf::from),
        PathBuf::from(&o.out_dir),
    );
    job.options = options;
    job.lora = lora;
    let train = &mut job.train;
    train.steps = o.steps.map(u64::from);
    train.epochs = o.epochs;
    train.seq_len = o.seq_len as usize;
    train.micro_batch = o.batch as usize;
    train.grad_accum = o.grad_accum as usize;
    train.optimizer.lr = o.lr as f32;
    train.optimizer.weight_decay = o.weight_decay as f32;
    train.schedule = match o.schedule.as_str() {
        "constant" => Schedule::Constant,
        "cosine" => Schedule::WarmupCosine { warmup_steps: o.warmup_steps.into(), min_ratio: 0.1 },
        other => return Err(Error::invalid_argument(format!("unknown schedule {other:?}; known: constant, cosine"))),
    };
    train.seed = seed;
    train.eval_every = o.eval_every.into();
    train.save_every = o.save_every.into();
    train.validate()?;
    job.prompt_format = match o.prompt_format.as_str() {
        "alpaca" => PromptFormat::Alpaca,
        "chat" => PromptFormat::Chat,
        other => return Err(Error::invalid_argument(format!("unknown prompt format {other:?}; known: alpaca, chat"))),
    };
    job.bad_rows = if o.skip_bad_rows { BadRows::Skip } else { BadRows::Fail };
    job.val_fraction = o.val_fraction;
    job.max_val_sequences = o.max_val_sequences as usize;
    job.sample_prompt = o.sample_prompt.clone();
    job.sample_max_tokens = o.sample_max_tokens as usize;
    let dtype = match o.dtype.as_str() {
        "f32" => SaveDtype::F32,
        "f16" => SaveDtype::F16,
        "bf16" => SaveDtype::BF16,
        other => return Err(Error::invalid_argument(format!("unknown dtype {other:?}; known: f32, f16, bf16"))),
    };
    job.save = SaveOptions { dtype, merged: o.merged, surprise_keys: None };
    job.resume = o.resume;
    job.overwrite = o.overwrite;
    job.keep_checkpoints = o.keep_checkpoints.map(|n| n as usize);
    if let Some(n) = o.softmax_auto {
        let free = base.config.num_layers - job.options.softmax_layers.len();
        if n as usize > free {
            return Err(Error::invalid_argument(format!(
                "softmax_auto: {n} layers asked, but only {free} of the model's {} layers are converted",
                base.config.num_layers
            )));
        }
        job.auto_softmax_layers = Some(n as usize);
    }
    job.select_data = o.select_data.as_ref().map(PathBuf::from);
    job.val_data = o.val_data.as_ref().map(PathBuf::from);
    job.surprise_after_training = o.surprise_after_training;
    Ok(job)
}

fn event_json(event: JobEvent) -> Value {
    match event {
        JobEvent::Stage(stage) => json!({ "kind": "stage", "stage": stage }),
        JobEvent::Progress(p) => json!({
            "kind": "step",
            "step": p.step,
            "totalSteps": p.total_steps,
            "loss": p.loss,
            "lr": p.lr,
            "gradNorm": p.grad_norm,
            "tokensPerSecond": p.tokens_per_s,
            "elapsedSeconds": p.elapsed_s,
            "etaSeconds": p.eta_s,
        }),
        JobEvent::Eval { name, loss, ppl } => {
            json!({ "kind": "eval", "name": name, "loss": loss, "ppl": ppl })
        }
        JobEvent::Saved(path) => json!({ "kind": "saved", "path": path.display().to_string() }),
        JobEvent::Sample(text) => json!({ "kind": "sample", "text": text }),
    }
}

pub struct LinearizeTask {
    options: JsLinearizeOptions,
    cancel: Arc<AtomicBool>,
    on_event: Option<EventFn>,
}

impl LinearizeTask {
    fn linearize(&self) -> liger_core::Result<Value> {
        let job = build_job(&self.options)?;
        let on_event = self.on_event.as_ref();
        let mut emit_event = |event| emit(on_event, event_json(event));
        let report = match self.options.device.as_str() {
            "cpu" => run_linearize(&job, &self.cancel, &mut emit_event)?,
            "cuda" => liger_cuda::run_linearize_on_gpu(&job, 0, &self.cancel, &mut emit_event)?,
            other => return Err(Error::invalid_argument(format!("unknown device {other:?}; known: cpu, cuda"))),
        };
        if report.cancelled {
            return Err(Error::new(
                ErrorCode::Aborted,
                format!(
                    "linearize was aborted after {} of {} training steps; no final checkpoint was written",
                    report.steps_done, report.total_steps
                ),
            ));
        }
        to_json(&report)
    }
}

impl Task for LinearizeTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<String> {
        run(|| self.linearize().map(|v| v.to_string()))
    }
    fn resolve(&mut self, _env: Env, report: String) -> Result<String> {
        Ok(report)
    }
}

/// Convert a model to Liger attention and train its LoRA adapters; resolves to the report.
#[napi(js_name = "linearize")]
pub fn linearize_js(
    options: JsLinearizeOptions,
    cancel: &CancelToken,
    on_event: Option<EventFn>,
) -> AsyncTask<LinearizeTask> {
    AsyncTask::new(LinearizeTask { options, cancel: cancel.flag.clone(), on_event })
}
