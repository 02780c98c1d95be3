//! Evaluation: lm-evaluation-harness tasks, then optionally passkey retrieval, on the CPU or
//! a GPU, into one report.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use liger_core::eval::passkey::{passkey_by_loglikelihood, PasskeyOptions};
use liger_core::eval::{run_task, EvalOptions, EvalReport, ScoreModel, Task, TASK_NAMES};
use liger_core::{Error, Result};

use super::{throttled_progress, Cancellable, OnEvalEvent};
use crate::{Device, EvalEvent, Model};

/// The tasks an evaluation runs when none are named.
pub const DEFAULT_TASKS: [&str; 2] = ["arc_easy", "lambada_openai"];

/// Every setting of an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateOptions {
    /// Task names as lm-eval spells them.
    pub tasks: Vec<String>,
    /// Folder laid out like the project's data (`arc_easy/ARC-Easy-Test.jsonl`, ...).
    pub data_dir: Option<PathBuf>,
    /// Explicit files per task name; they win over `data_dir`.
    pub task_files: Vec<(String, PathBuf)>,
    /// Items per task (none: all).
    pub limit: Option<usize>,
    pub seed: u64,
    /// Longest input scored at once (none: the model's context).
    pub max_length: Option<usize>,
    /// Window of rolling perplexity (wikitext).
    pub window: Option<usize>,
    /// Put BOS before every context (lm-eval's add_bos_token).
    pub add_bos: bool,
    /// Passkey retrieval after the tasks (none: no passkey test).
    pub passkey: Option<PasskeyTest>,
    /// The model's name in the report.
    pub label: String,
    /// Where scoring runs (a GPU scores a bf16 copy).
    pub device: Device,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        let core = EvalOptions::default();
        EvaluateOptions {
            tasks: DEFAULT_TASKS.map(String::from).to_vec(),
            data_dir: None,
            task_files: Vec::new(),
            limit: core.limit,
            seed: core.seed,
            max_length: core.max_length,
            window: core.perplexity_window,
            add_bos: core.add_bos,
            passkey: None,
            label: String::new(),
            device: Device::Cpu,
        }
    }
}

/// Passkey retrieval by log-likelihood: prompts of these lengths (tokens), `trials` per
/// length and depth, the key hidden at each depth (a fraction of the filler).
#[derive(Clone, Debug, PartialEq)]
pub struct PasskeyTest {
    pub lengths: Vec<usize>,
    pub trials: usize,
    pub depths: Vec<f64>,
    /// A text file whose sentences fill the prompts (each prompt from its own seeded start),
    /// instead of the standard filler: five short sentences repeated.
    pub filler: Option<PathBuf>,
}

/// Passkey prompts per length and depth.
pub const DEFAULT_PASSKEY_TRIALS: usize = 1;

impl PasskeyTest {
    /// The test at these lengths, with the default trials and depths.
    pub fn new(lengths: Vec<usize>) -> Self {
        PasskeyTest { lengths, trials: DEFAULT_PASSKEY_TRIALS, depths: PasskeyOptions::default().depths, filler: None }
    }
}

impl EvaluateOptions {
    /// Every task with the file (or folder) it is read from.
    pub fn task_paths(&self) -> Result<Vec<(Task, PathBuf)>> {
        if self.tasks.is_empty() && self.passkey.is_none() {
            return Err(Error::invalid_argument(format!("no tasks given; known tasks: {}", TASK_NAMES.join(", "))));
        }
        let mut out = Vec::new();
        for name in &self.tasks {
            let task = Task::from_name(name)?;
            let explicit = self.task_files.iter().find(|(task, _)| task == name).map(|(_, file)| file);
            let path = match (explicit, &self.data_dir) {
                (Some(file), _) => file.clone(),
                (None, Some(dir)) => task.default_path(dir),
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

    fn core_options(&self) -> EvalOptions {
        EvalOptions {
            max_length: self.max_length,
            limit: self.limit,
            seed: self.seed,
            add_bos: self.add_bos,
            perplexity_window: self.window,
        }
    }
}

/// Scores `model` on the tasks (and the passkey test) of `options`.
pub fn evaluate(
    model: &Model,
    options: &EvaluateOptions,
    cancel: &AtomicBool,
    on_event: OnEvalEvent,
) -> Result<EvalReport> {
    let core = options.core_options();
    let tasks = options.task_paths()?;
    // Read before any scoring, so that a bad file fails first.
    let filler = options.passkey.as_ref().and_then(|t| t.filler.as_deref()).map(read_filler).transpose()?;
    let gpu = model.upload_for_scoring(options.device)?;
    let scorer = Cancellable { model: gpu.as_deref().map_or(model.scorer(), |g| g as &dyn ScoreModel), cancel };
    let mut report = EvalReport::new(options.label.clone(), core.clone());
    for (index, (task, path)) in tasks.iter().enumerate() {
        on_event(EvalEvent::Task { task: task.name().into(), index, count: tasks.len() });
        let progress = throttled_progress(on_event, task.name());
        let result = run_task(&scorer, *task, path, &core, Some(&progress))?;
        on_event(EvalEvent::TaskDone { task: task.name().into(), result: result.clone() });
        report.push(result);
    }
    if let Some(test) = &options.passkey {
        on_event(EvalEvent::Task { task: "passkey".into(), index: tasks.len(), count: tasks.len() + 1 });
        let passkey = PasskeyOptions {
            lengths: test.lengths.clone(),
            trials: test.trials,
            depths: test.depths.clone(),
            seed: core.seed,
            corpus: filler,
        };
        report.passkey = Some(passkey_by_loglikelihood(&scorer, &passkey, &core)?);
    }
    Ok(report)
}

/// Largest passkey filler file: far more text than any prompt takes.
const MAX_FILLER_BYTES: u64 = 64 << 20;

/// The text of a passkey filler file (UTF-8, at most [`MAX_FILLER_BYTES`]).
fn read_filler(path: &Path) -> Result<String> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?.len();
    if size > MAX_FILLER_BYTES {
        return Err(Error::invalid_argument(format!(
            "the passkey filler {} is {size} bytes; give a text file of at most {} MiB",
            path.display(),
            MAX_FILLER_BYTES >> 20
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    #[test]
    fn defaults() {
        let o = EvaluateOptions::default();
        assert_eq!(o.tasks, ["arc_easy", "lambada_openai"]);
        assert_eq!((o.seed, o.add_bos, o.device), (1234, false, Device::Cpu));
        assert_eq!((o.limit, o.max_length, o.window), (None, None, None));
        let passkey = PasskeyTest::new(vec![1024]);
        assert_eq!(passkey.trials, 1);
        assert_eq!(passkey.depths, [0.1, 0.3, 0.5, 0.7, 0.9]);
    }

    #[test]
    fn a_passkey_filler_is_a_utf8_text_file_of_bounded_size() {
        let dir = std::env::temp_dir().join(format!("liger-filler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("filler.txt");
        std::fs::write(&text, "One sentence. Another one. ").unwrap();
        assert_eq!(read_filler(&text).unwrap(), "One sentence. Another one. ");
        let err = read_filler(&dir.join("missing.txt")).unwrap_err();
        assert_eq!(err.code, ErrorCode::Io, "{}", err.message);
        assert!(err.message.contains("missing.txt"), "{}", err.message);
        let binary = dir.join("binary.bin");
        std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        assert_eq!(read_filler(&binary).unwrap_err().code, ErrorCode::Io);
        // A sparse file past the limit: refused by its size, before it is read.
        let huge = dir.join("huge.txt");
        std::fs::File::create(&huge).unwrap().set_len(MAX_FILLER_BYTES + 1).unwrap();
        let err = read_filler(&huge).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("at most 64 MiB"), "{}", err.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tasks_are_read_from_their_file_or_the_data_folder() {
        let o = EvaluateOptions {
            tasks: vec!["arc_easy".into(), "lambada_openai".into()],
            data_dir: Some("data".into()),
            task_files: vec![("lambada_openai".into(), "mine.jsonl".into())],
            ..Default::default()
        };
        let paths = o.task_paths().unwrap();
        let arc = Task::from_name("arc_easy").unwrap();
        assert_eq!(paths[0], (arc, arc.default_path(Path::new("data"))));
        assert_eq!(paths[1], (Task::from_name("lambada_openai").unwrap(), PathBuf::from("mine.jsonl")));
    }

    #[test]
    fn bad_task_lists_are_invalid_argument() {
        let none = EvaluateOptions { tasks: Vec::new(), ..Default::default() };
        let err = none.task_paths().unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.starts_with("no tasks given; known tasks: "), "{}", err.message);
        // Passkey lengths alone are an evaluation.
        let passkey_only = EvaluateOptions { passkey: Some(PasskeyTest::new(vec![256])), ..none };
        assert_eq!(passkey_only.task_paths().unwrap(), []);

        let no_data = EvaluateOptions { tasks: vec!["arc_easy".into()], ..Default::default() };
        let err = no_data.task_paths().unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.starts_with("no data folder for task arc_easy"), "{}", err.message);

        let unknown = EvaluateOptions { tasks: vec!["bogus".into()], data_dir: Some("d".into()), ..Default::default() };
        assert_eq!(unknown.task_paths().unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
