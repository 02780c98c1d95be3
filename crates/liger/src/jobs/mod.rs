//! The jobs: each takes its options, a cancel flag (checked between forwards or training steps)
//! and an event callback, and returns a typed result. The scoring jobs call back from several
//! threads, hence `Fn + Sync`.

pub mod eval;
pub mod linearize;
pub mod loglik;
pub mod perplexity;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use liger_core::eval::ScoreModel;
use liger_core::tokenizer::Tokenizer;
use liger_core::{Error, ErrorCode};

use crate::events::EvalEvent;

/// Where a scoring job sends its events.
pub type OnEvalEvent<'a> = &'a (dyn Fn(EvalEvent) + Sync);

/// Reports `(done, total)` of a task at most once per percent (it is called per request,
/// from several threads).
fn throttled_progress<'a>(on_event: OnEvalEvent<'a>, task: &'a str) -> impl Fn(usize, usize) + Sync + 'a {
    let last_percent = AtomicUsize::new(usize::MAX);
    move |done, total| {
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if last_percent.swap(percent, Ordering::Relaxed) != percent {
            on_event(EvalEvent::Progress { task: task.to_string(), done, total });
        }
    }
}

/// A model that stops scoring once the job is cancelled: every forward checks the flag.
struct Cancellable<'a> {
    model: &'a dyn ScoreModel,
    cancel: &'a AtomicBool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn progress_is_sent_once_per_percent() {
        let seen = Mutex::new(Vec::new());
        let on_event = |e: EvalEvent| seen.lock().unwrap().push(e);
        {
            let progress = throttled_progress(&on_event, "perplexity");
            for done in [0, 1, 1, 2, 199, 200] {
                progress(done, 200);
            }
        }
        let done: Vec<usize> = seen
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|e| match e {
                EvalEvent::Progress { done, .. } => done,
                other => panic!("not a progress event: {other:?}"),
            })
            .collect();
        assert_eq!(done, [0, 2, 199, 200]);
    }
}
