//! `loglikelihood`: the log-probability of continuations after contexts, scored the way the
//! evaluation tasks score them (lm-evaluation-harness's tokenization, left truncation), with
//! the tokens each request was split into, so a caller can score the same tokens elsewhere.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use liger_core::eval::loglik::{encode_pair, score_tokens, TokenRequest};
use liger_core::eval::{EvalOptions, ScoreModel};
use liger_core::Error;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::{json, Value};

use crate::jobs::{throttled_progress, CancelToken, Cancellable, EventFn};
use crate::models::AnyModel;
use crate::{run, NativeModel};

#[napi(object)]
pub struct JsLoglikRequest {
    pub context: String,
    pub continuation: String,
}

#[napi(object)]
pub struct JsLoglikOptions {
    /// Longest input scored at once (longer ones are cut from the left); none: the model's.
    pub max_length: Option<u32>,
    /// Put BOS before every non-empty context (lm-eval's add_bos_token).
    pub add_bos: bool,
}

pub struct LoglikTask {
    model: Arc<AnyModel>,
    requests: Vec<JsLoglikRequest>,
    options: JsLoglikOptions,
    cancel: Arc<AtomicBool>,
    on_event: Option<EventFn>,
}

impl LoglikTask {
    fn score(&self) -> liger_core::Result<Value> {
        if self.requests.is_empty() {
            return Err(Error::invalid_argument("loglikelihood needs at least one request"));
        }
        let options = EvalOptions {
            max_length: self.options.max_length.map(|v| v as usize),
            add_bos: self.options.add_bos,
            ..Default::default()
        };
        let scorer = Cancellable { model: self.model.scorer(), cancel: &self.cancel };
        let tok = scorer.tokenizer();
        let encoded = self
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                encode_pair(tok, &r.context, &r.continuation, options.add_bos)
                    .map_err(|e| e.context(format!("request {i}")))
            })
            .collect::<liger_core::Result<Vec<TokenRequest>>>()?;
        let max_length = options.effective_max_length(&scorer);
        let progress = throttled_progress(self.on_event.as_ref(), "loglikelihood");
        let (results, stats) = score_tokens(&scorer, &encoded, max_length, Some(&progress))?;
        let rows: Vec<Value> = results
            .iter()
            .zip(&encoded)
            .map(|(r, t)| {
                let length = t.context.len() + t.continuation.len() - 1;
                json!({
                    "logprob": r.logprob,
                    "isGreedy": r.is_greedy,
                    "contextTokens": t.context,
                    "continuationTokens": t.continuation,
                    "truncated": max_length.is_some_and(|m| length > m),
                })
            })
            .collect();
        Ok(json!({ "results": rows, "stats": crate::jobs::to_json(&stats)? }))
    }
}

impl Task for LoglikTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<String> {
        run(|| self.score().map(|v| v.to_string()))
    }
    fn resolve(&mut self, _env: Env, result: String) -> Result<String> {
        Ok(result)
    }
}

#[napi]
impl NativeModel {
    /// Log-likelihoods of (context, continuation) pairs; resolves to a `LoglikelihoodResult`.
    #[napi]
    pub fn loglikelihood(
        &self,
        requests: Vec<JsLoglikRequest>,
        options: JsLoglikOptions,
        cancel: &CancelToken,
        on_event: Option<EventFn>,
    ) -> AsyncTask<LoglikTask> {
        AsyncTask::new(LoglikTask {
            model: self.model.clone(),
            requests,
            options,
            cancel: cancel.flag.clone(),
            on_event,
        })
    }
}
