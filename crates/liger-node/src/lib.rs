//! Node.js bindings for liger, built with napi-rs.
//!
//! Thin on purpose: convert values to and from the `liger` crate's types, run its jobs off the
//! JavaScript thread, stream tokens and events back, and map errors. Errors cross as `[liger:CODE] message`; the TypeScript layer turns
//! them into `LigerError`s with that code. A panic never reaches JavaScript: it becomes an
//! `INTERNAL` error.

// The exports are called from JavaScript only, so a test build of this crate sees them unused.
#![cfg_attr(test, allow(dead_code))]

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use liger_core::chat::ChatMessage;
use liger_core::generate::{GenerateOptions, GenerateResult};
use liger_core::sampling::SamplingOptions;
use liger_core::Error;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

mod eval;
mod export;
mod jobs;
mod linearize;
mod loglik;

use liger::Model;

// ---- errors and panics ------------------------------------------------------------------

pub(crate) fn tagged_message(err: &Error) -> String {
    format!("[liger:{}] {}", err.code.as_str(), err.message)
}

pub(crate) fn to_js_error(err: Error) -> napi::Error {
    napi::Error::from_reason(tagged_message(&err))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Run core work; a panic becomes an INTERNAL error instead of unwinding into Node.
pub(crate) fn guarded<T>(work: impl FnOnce() -> liger_core::Result<T>) -> liger_core::Result<T> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(Error::internal(format!(
            "liger panicked ({}); this is a bug, please report it",
            panic_message(payload.as_ref())
        )))
    })
}

/// `guarded`, with the error converted for JavaScript.
pub(crate) fn run<T>(work: impl FnOnce() -> liger_core::Result<T>) -> Result<T> {
    guarded(work).map_err(to_js_error)
}

// ---- loading ----------------------------------------------------------------------------

/// Progress of loading: a stage name and how far along it is (0..1).
#[napi(object)]
pub struct LoadProgress {
    pub stage: String,
    pub fraction: f64,
}

/// Progress callback, called from the loading thread.
type ProgressFn = ThreadsafeFunction<LoadProgress, (), LoadProgress, Status, false>;

pub struct LoadTask {
    path: PathBuf,
    device: String,
    on_progress: Option<ProgressFn>,
}

impl Task for LoadTask {
    type Output = Model;
    type JsValue = NativeModel;

    fn compute(&mut self) -> Result<Model> {
        let on_progress = self.on_progress.as_ref();
        let mut report = |stage: &str, fraction: f64| {
            if let Some(callback) = on_progress {
                report_progress(callback, stage, fraction);
            }
        };
        run(|| Model::load_on(&self.path, self.device.parse()?, &mut report))
    }

    fn resolve(&mut self, _env: Env, model: Model) -> Result<NativeModel> {
        Ok(NativeModel { model: Arc::new(model) })
    }
}

/// Hand one progress event to JavaScript and wait until its callback has run: otherwise
/// queued events could arrive after the load's promise has already resolved.
fn report_progress(callback: &ProgressFn, stage: &str, fraction: f64) {
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let event = LoadProgress { stage: stage.to_string(), fraction };
    let status = callback.call_with_return_value(event, ThreadsafeFunctionCallMode::Blocking, move |_, _| {
        let _ = seen_tx.send(());
        Ok(())
    });
    // If the call was refused, or its closure is dropped unrun (Node shutting down), the
    // channel closes and recv returns at once.
    if status == Status::Ok {
        let _ = seen_rx.recv();
    }
}

/// Load a `.gguf` file, a Hugging Face model directory or a Liger checkpoint directory on a
/// worker thread.
#[napi(js_name = "loadModel")]
pub fn load_model_js(path: String, on_progress: Option<ProgressFn>, device: Option<String>) -> AsyncTask<LoadTask> {
    let device = device.unwrap_or_else(|| "cpu".into());
    AsyncTask::new(LoadTask { path: PathBuf::from(path), device, on_progress })
}

// ---- the GPU ----------------------------------------------------------------------------

/// The first NVIDIA GPU, as the GPU engine opens it.
#[napi(object)]
pub struct GpuInfo {
    pub name: String,
    /// "9.0" for an H100.
    pub compute_capability: String,
    pub total_memory_bytes: f64,
    pub free_memory_bytes: f64,
    /// "13.0" for CUDA 13.0.
    pub driver_version: String,
}

/// The first NVIDIA GPU; throws the reason there is none to use (no driver, no device, an old
/// driver) as a DEVICE_UNAVAILABLE error.
#[napi(js_name = "gpuInfo")]
pub fn gpu_info() -> Result<GpuInfo> {
    let info = run(|| liger::gpu_info(0))?;
    Ok(GpuInfo {
        name: info.name,
        compute_capability: format!("{}.{}", info.compute_capability.0, info.compute_capability.1),
        total_memory_bytes: info.total_memory_bytes as f64,
        free_memory_bytes: info.free_memory_bytes as f64,
        driver_version: format!("{}.{}", info.driver_version / 1000, info.driver_version % 1000 / 10),
    })
}

// ---- the model --------------------------------------------------------------------------

#[napi]
pub struct NativeModel {
    pub(crate) model: Arc<Model>,
}

#[napi(object)]
pub struct JsChatMessage {
    pub role: String,
    pub content: String,
}

#[napi(object)]
pub struct JsGenerateOptions {
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    /// A JavaScript number: an integer in [0, 2^53).
    pub seed: f64,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

#[napi(object)]
pub struct JsGenerateResult {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// One event of a generation, delivered in order on a single channel: `token`s, then one
/// `done` (with `result`) or `error` (with `message`).
#[napi(object)]
pub struct GenerateEvent {
    pub kind: String,
    pub id: Option<u32>,
    pub text: Option<String>,
    pub result: Option<JsGenerateResult>,
    pub message: Option<String>,
}

type EventFn = ThreadsafeFunction<GenerateEvent, (), GenerateEvent, Status, false>;

impl From<GenerateResult> for JsGenerateResult {
    fn from(r: GenerateResult) -> Self {
        JsGenerateResult {
            tokens: r.tokens,
            text: r.text,
            finish_reason: r.finish_reason.as_str().to_string(),
            prompt_tokens: r.prompt_tokens as u32,
            prefill_ms: r.prefill_ms,
            decode_ms: r.decode_ms,
        }
    }
}

fn core_generate_options(o: JsGenerateOptions) -> liger_core::Result<GenerateOptions> {
    let seed = liger::parse::whole_number("seed", o.seed)?;
    Ok(GenerateOptions {
        max_tokens: o.max_tokens as usize,
        sampling: SamplingOptions {
            temperature: o.temperature as f32,
            top_k: o.top_k as usize,
            top_p: o.top_p as f32,
            seed,
        },
        stop: o.stop,
        ignore_eos: o.ignore_eos,
    })
}

#[napi]
impl NativeModel {
    /// Facts about the model (name, sizes, tensor types, Liger settings), as a plain object.
    #[napi]
    pub fn info(&self) -> Result<serde_json::Value> {
        run(|| self.model.info())
    }

    #[napi]
    pub fn encode(&self, text: String, add_bos: Option<bool>, parse_special: bool) -> Result<Uint32Array> {
        run(|| self.model.base().encode(&text, add_bos, parse_special)).map(Uint32Array::new)
    }

    #[napi]
    pub fn decode(&self, ids: Uint32Array, skip_special: bool) -> Result<String> {
        run(|| self.model.base().decode(&ids, skip_special))
    }

    #[napi]
    pub fn apply_chat_template(&self, messages: Vec<JsChatMessage>, add_generation_prompt: bool) -> Result<String> {
        run(|| self.model.base().apply_chat_template(&chat_messages(messages), add_generation_prompt))
    }

    /// `apply_chat_template` on a worker thread: a template is untrusted input, and its budget
    /// may take a moment to run out.
    #[napi]
    pub fn render_chat(
        &self,
        messages: Vec<JsChatMessage>,
        add_generation_prompt: bool,
    ) -> AsyncTask<ChatTemplateTask> {
        AsyncTask::new(ChatTemplateTask {
            model: self.model.clone(),
            messages: chat_messages(messages),
            add_generation_prompt,
        })
    }

    /// Logits of the token after `tokens`, computed on a worker thread.
    #[napi]
    pub fn last_logits(&self, tokens: Uint32Array) -> AsyncTask<LogitsTask> {
        AsyncTask::new(LogitsTask { model: self.model.clone(), tokens: tokens.to_vec() })
    }

    /// Start generating on a thread of its own; events arrive through `on_event`.
    #[napi]
    pub fn generate(
        &self,
        prompt: Uint32Array,
        options: JsGenerateOptions,
        on_event: EventFn,
    ) -> Result<NativeGeneration> {
        let options = core_generate_options(options).map_err(to_js_error)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (model, prompt, flag) = (self.model.clone(), prompt.to_vec(), cancel.clone());
        std::thread::Builder::new()
            .name("liger-generate".into())
            .spawn(move || run_generation(&model, &prompt, &options, &flag, &on_event))
            .map_err(|e| to_js_error(Error::internal(format!("could not start a generation thread: {e}"))))?;
        Ok(NativeGeneration { cancel })
    }
}

fn run_generation(model: &Model, prompt: &[u32], options: &GenerateOptions, cancel: &AtomicBool, on_event: &EventFn) {
    let send = |event: GenerateEvent| {
        on_event.call(event, ThreadsafeFunctionCallMode::NonBlocking);
    };
    let mut on_token = |id: u32, text: &str| {
        send(GenerateEvent {
            kind: "token".into(),
            id: Some(id),
            text: Some(text.to_string()),
            result: None,
            message: None,
        });
    };
    let outcome = guarded(|| model.generate(prompt, options, cancel, &mut on_token));
    send(match outcome {
        Ok(result) => {
            GenerateEvent { kind: "done".into(), id: None, text: None, result: Some(result.into()), message: None }
        }
        Err(err) => GenerateEvent {
            kind: "error".into(),
            id: None,
            text: None,
            result: None,
            message: Some(tagged_message(&err)),
        },
    });
}

pub struct LogitsTask {
    model: Arc<Model>,
    tokens: Vec<u32>,
}

impl Task for LogitsTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;

    fn compute(&mut self) -> Result<Vec<f32>> {
        run(|| self.model.last_logits(&self.tokens))
    }

    fn resolve(&mut self, _env: Env, logits: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(logits))
    }
}

fn chat_messages(messages: Vec<JsChatMessage>) -> Vec<ChatMessage> {
    messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect()
}

pub struct ChatTemplateTask {
    model: Arc<Model>,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
}

impl Task for ChatTemplateTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<String> {
        run(|| self.model.base().apply_chat_template(&self.messages, self.add_generation_prompt))
    }

    fn resolve(&mut self, _env: Env, text: String) -> Result<String> {
        Ok(text)
    }
}

/// A running generation; `abort()` makes the loop stop after the current token.
#[napi]
pub struct NativeGeneration {
    cancel: Arc<AtomicBool>,
}

#[napi]
impl NativeGeneration {
    #[napi]
    pub fn abort(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
