//! `loglikelihood` for JavaScript: the requests and options converted to the `liger` crate's.

use liger::{EvalEvent, LoglikelihoodOptions};
use liger_core::eval::LoglikRequest;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::jobs::{async_job, emit, json_text, CancelToken, EventFn, JobTask};
use crate::NativeModel;

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
    ) -> AsyncTask<JobTask> {
        let (model, cancel) = (self.model.clone(), cancel.flag.clone());
        async_job(move || {
            let requests: Vec<LoglikRequest> =
                requests.into_iter().map(|r| LoglikRequest::new(r.context, r.continuation)).collect();
            let options =
                LoglikelihoodOptions { max_length: options.max_length.map(|v| v as usize), add_bos: options.add_bos };
            let on_event = |event: EvalEvent| emit(on_event.as_ref(), &event);
            json_text(&liger::loglikelihood(&model, &requests, &options, &cancel, &on_event)?)
        })
    }
}
