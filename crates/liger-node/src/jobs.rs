//! How the long jobs of the `liger` crate run for JavaScript: on a worker thread (a napi
//! `AsyncTask`, so JavaScript gets a promise), with events through a threadsafe function, and
//! stopped by a `CancelToken`. Results resolve as JSON text (the TypeScript layer parses it):
//! napi cannot declare a type for an arbitrary JSON value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use liger_core::Error;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use serde::Serialize;
use serde_json::Value;

use crate::run;

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
pub(crate) fn emit(callback: Option<&EventFn>, event: &impl Serialize) {
    let Some(callback) = callback else { return };
    // Events are plain data: serializing one cannot fail.
    let Ok(event) = serde_json::to_value(event) else { return };
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let status = callback.call_with_return_value(event, ThreadsafeFunctionCallMode::Blocking, move |_, _| {
        let _ = seen_tx.send(());
        Ok(())
    });
    if status == Status::Ok {
        let _ = seen_rx.recv();
    }
}

/// A result as the JSON text JavaScript parses. It goes through a JSON value, as events do,
/// so that an f32 reads as the same number in both.
pub(crate) fn json_text<T: Serialize>(value: &T) -> liger_core::Result<String> {
    serde_json::to_value(value)
        .map(|v| v.to_string())
        .map_err(|e| Error::internal(format!("serializing a result: {e}")))
}

type Work = Box<dyn FnOnce() -> liger_core::Result<String> + Send>;

/// One job on a worker thread; resolves to its result as JSON text.
pub struct JobTask {
    work: Option<Work>,
}

/// `work` as a task napi runs on a worker thread (JavaScript gets a promise of its result).
pub(crate) fn async_job(work: impl FnOnce() -> liger_core::Result<String> + Send + 'static) -> AsyncTask<JobTask> {
    AsyncTask::new(JobTask { work: Some(Box::new(work)) })
}

impl Task for JobTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<String> {
        let work = self.work.take();
        run(|| work.ok_or_else(|| Error::internal("a job was run twice"))?())
    }
    fn resolve(&mut self, _env: Env, result: String) -> Result<String> {
        Ok(result)
    }
}
