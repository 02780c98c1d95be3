//! Evaluation and perplexity for JavaScript: the options converted to the `liger` crate's,
//! and the reports' comparison.

use std::path::PathBuf;

use liger::{EvalEvent, EvaluateOptions, PasskeyTest, PerplexityOptions, TextSource};
use liger_core::eval::report::compare;
use liger_core::eval::EvalReport;
use liger_core::Error;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::Value;

use crate::jobs::{async_job, emit, json_text, CancelToken, EventFn, JobTask};
use crate::{run, NativeModel};

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
    /// A text file whose sentences fill the passkey prompts (none: the standard filler).
    pub passkey_filler: Option<String>,
    /// The model's name in the report.
    pub label: String,
    /// Where scoring runs: "cpu" (default) or "cuda" (a bf16 copy on the first GPU).
    pub device: Option<String>,
}

fn evaluate_options(o: JsEvalOptions) -> liger_core::Result<EvaluateOptions> {
    let passkey = o.passkey.map(|lengths| {
        let defaults = PasskeyTest::new(lengths.into_iter().map(|l| l as usize).collect());
        PasskeyTest {
            trials: o.passkey_trials.map_or(defaults.trials, |t| t as usize),
            depths: o.passkey_depths.unwrap_or(defaults.depths),
            lengths: defaults.lengths,
            filler: o.passkey_filler.map(PathBuf::from),
        }
    });
    Ok(EvaluateOptions {
        tasks: o.tasks,
        data_dir: o.data_dir.map(PathBuf::from),
        // A pair without a path names no file.
        task_files: o
            .task_files
            .into_iter()
            .filter_map(|pair| match pair.as_slice() {
                [task, file, ..] => Some((task.clone(), PathBuf::from(file))),
                _ => None,
            })
            .collect(),
        limit: o.limit.map(|v| v as usize),
        seed: liger::parse::whole_number("seed", o.seed)?,
        max_length: o.max_length.map(|v| v as usize),
        window: o.window.map(|v| v as usize),
        add_bos: o.add_bos,
        passkey,
        label: o.label,
        device: o.device.as_deref().map_or(Ok(liger::Device::Cpu), str::parse)?,
    })
}

/// The facade's default of every evaluation setting (`EvaluateOptions::default()`, and the
/// passkey test's trials and depths): the values the TypeScript layer fills in where an option
/// is not given.
#[napi(js_name = "evalDefaults")]
pub fn eval_defaults() -> JsEvalOptions {
    let o = EvaluateOptions::default();
    let passkey = PasskeyTest::new(Vec::new());
    let count = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    JsEvalOptions {
        tasks: o.tasks,
        data_dir: o.data_dir.map(|d| d.to_string_lossy().into_owned()),
        task_files: Vec::new(),
        limit: o.limit.map(count),
        seed: o.seed as f64,
        max_length: o.max_length.map(count),
        window: o.window.map(count),
        add_bos: o.add_bos,
        passkey: None,
        passkey_trials: Some(count(passkey.trials)),
        passkey_depths: Some(passkey.depths),
        passkey_filler: None,
        label: o.label,
        device: Some(o.device.to_string()),
    }
}

/// Where the text to score comes from: exactly one of `text` and `file`.
#[napi(object)]
pub struct JsTextSource {
    pub text: Option<String>,
    pub file: Option<String>,
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
    ) -> AsyncTask<JobTask> {
        let (model, cancel) = (self.model.clone(), cancel.flag.clone());
        async_job(move || {
            let options = evaluate_options(options)?;
            let on_event = |event: EvalEvent| emit(on_event.as_ref(), &event);
            json_text(&liger::evaluate(&model, &options, &cancel, &on_event)?)
        })
    }

    /// Rolling perplexity of a text or a text file; resolves to a `PerplexityResult` object.
    #[napi]
    pub fn perplexity(
        &self,
        source: JsTextSource,
        window: Option<u32>,
        cancel: &CancelToken,
        on_event: Option<EventFn>,
    ) -> AsyncTask<JobTask> {
        let (model, cancel) = (self.model.clone(), cancel.flag.clone());
        async_job(move || {
            let source = TextSource::from_parts(source.text, source.file.map(PathBuf::from))?;
            let options = PerplexityOptions { window: window.map(|w| w as usize) };
            let on_event = |event: EvalEvent| emit(on_event.as_ref(), &event);
            json_text(&liger::perplexity(&model, &source, &options, &cancel, &on_event)?)
        })
    }
}

fn eval_report(value: Value, what: &str) -> liger_core::Result<EvalReport> {
    serde_json::from_value(value)
        .map_err(|e| Error::invalid_argument(format!("{what} is not an evaluation report: {e}")))
}

/// Recovery of `linearized` against `base` (two `EvalReport` objects): a `Comparison` object.
#[napi(js_name = "compareReports")]
pub fn compare_reports(base: Value, linearized: Value) -> Result<Value> {
    run(|| {
        let comparison =
            compare(&eval_report(base, "the base report")?, &eval_report(linearized, "the linearized report")?)?;
        serde_json::to_value(comparison).map_err(|e| Error::internal(format!("serializing a result: {e}")))
    })
}
