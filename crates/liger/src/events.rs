//! What a job reports while it runs. Each event serializes to a plain object with a `kind`
//! (camelCase fields), the shape the TypeScript layer's `EvalEvent` and `LinearizeEvent` have.

use liger_core::eval::TaskResult;
use liger_core::train::job::JobEvent;
use serde::Serialize;

/// Events of the scoring jobs. An evaluation sends all three; perplexity and log-likelihoods
/// send only `Progress`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum EvalEvent {
    /// A task starts: the `index`-th of `count`.
    Task { task: String, index: usize, count: usize },
    /// `done` of `total` requests of `task` are scored (sent at most once per percent).
    Progress { task: String, done: usize, total: usize },
    /// A task is done.
    TaskDone { task: String, result: TaskResult },
}

/// Events of a linearize run, in order: stages, evaluations, training steps, saves, the sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum LinearizeEvent {
    Stage {
        stage: String,
    },
    #[serde(rename_all = "camelCase")]
    Step {
        step: u64,
        total_steps: u64,
        loss: f64,
        lr: f32,
        grad_norm: f32,
        tokens_per_second: f64,
        elapsed_seconds: f64,
        eta_seconds: f64,
    },
    Eval {
        name: String,
        loss: f64,
        ppl: f64,
    },
    Saved {
        path: String,
    },
    Sample {
        text: String,
    },
}

impl From<JobEvent> for LinearizeEvent {
    fn from(event: JobEvent) -> Self {
        match event {
            JobEvent::Stage(stage) => LinearizeEvent::Stage { stage },
            JobEvent::Progress(p) => LinearizeEvent::Step {
                step: p.step,
                total_steps: p.total_steps,
                loss: p.loss,
                lr: p.lr,
                grad_norm: p.grad_norm,
                tokens_per_second: p.tokens_per_s,
                elapsed_seconds: p.elapsed_s,
                eta_seconds: p.eta_s,
            },
            JobEvent::Eval { name, loss, ppl } => LinearizeEvent::Eval { name, loss, ppl },
            JobEvent::Saved(path) => LinearizeEvent::Saved { path: path.display().to_string() },
            JobEvent::Sample(text) => LinearizeEvent::Sample { text },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::train::trainer::TrainProgress;
    use serde_json::json;

    fn to_json(event: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(event).unwrap()
    }

    #[test]
    fn linearize_events_have_the_shapes_javascript_reads() {
        let step = JobEvent::Progress(TrainProgress {
            step: 2,
            total_steps: 30,
            loss: 1.5,
            lr: 0.5,
            grad_norm: 0.25,
            tokens_per_s: 100.0,
            elapsed_s: 3.0,
            eta_s: 42.0,
        });
        assert_eq!(
            to_json(&LinearizeEvent::from(step)),
            json!({ "kind": "step", "step": 2, "totalSteps": 30, "loss": 1.5, "lr": 0.5, "gradNorm": 0.25,
                    "tokensPerSecond": 100.0, "elapsedSeconds": 3.0, "etaSeconds": 42.0 })
        );
        let cases = [
            (JobEvent::Stage("training".into()), json!({ "kind": "stage", "stage": "training" })),
            (
                JobEvent::Eval { name: "base".into(), loss: 2.0, ppl: 7.5 },
                json!({ "kind": "eval", "name": "base", "loss": 2.0, "ppl": 7.5 }),
            ),
            (JobEvent::Saved("out/model".into()), json!({ "kind": "saved", "path": "out/model" })),
            (JobEvent::Sample("hi".into()), json!({ "kind": "sample", "text": "hi" })),
        ];
        for (event, expected) in cases {
            assert_eq!(to_json(&LinearizeEvent::from(event)), expected);
        }
    }

    #[test]
    fn eval_events_have_the_shapes_javascript_reads() {
        assert_eq!(
            to_json(&EvalEvent::Task { task: "arc_easy".into(), index: 0, count: 2 }),
            json!({ "kind": "task", "task": "arc_easy", "index": 0, "count": 2 })
        );
        assert_eq!(
            to_json(&EvalEvent::Progress { task: "perplexity".into(), done: 3, total: 9 }),
            json!({ "kind": "progress", "task": "perplexity", "done": 3, "total": 9 })
        );
        let result = TaskResult::new(
            liger_core::eval::Task::from_name("arc_easy").unwrap(),
            std::path::Path::new("arc.jsonl"),
            4,
            [("acc".to_string(), 0.5)].into(),
            Vec::new(),
            Default::default(),
        );
        assert_eq!(
            to_json(&EvalEvent::TaskDone { task: "arc_easy".into(), result: result.clone() }),
            json!({ "kind": "taskDone", "task": "arc_easy", "result": to_json(&result) })
        );
    }
}
