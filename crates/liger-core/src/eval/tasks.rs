//! The zero-shot (and MMLU 5-shot) tasks: where their files are, how they are scored, which
//! metric each is known by.

use super::formats::{self, McDoc};
use super::loglik::{loglikelihood, LoglikRequest, ScoreStats};
use super::perplexity::{rolling_perplexity, ScoredText};
use super::{wikitext, EvalOptions, Progress, ScoreModel};
use crate::error::{Error, ErrorCode, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    ArcEasy,
    ArcChallenge,
    Piqa,
    Hellaswag,
    Winogrande,
    Mmlu,
    LambadaOpenai,
    Wikitext,
}

/// Task names as lm-eval spells them, in the order [`Task::ALL`] lists them.
pub const TASK_NAMES: [&str; 8] =
    ["arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "mmlu", "lambada_openai", "wikitext"];

impl Task {
    pub const ALL: [Task; 8] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Piqa,
        Task::Hellaswag,
        Task::Winogrande,
        Task::Mmlu,
        Task::LambadaOpenai,
        Task::Wikitext,
    ];

    pub fn name(self) -> &'static str {
        TASK_NAMES[Task::ALL.iter().position(|&t| t == self).expect("every task is in ALL")]
    }

    pub fn from_name(name: &str) -> Result<Task> {
        TASK_NAMES.iter().position(|&n| n == name).map(|i| Task::ALL[i]).ok_or_else(|| {
            Error::invalid_argument(format!("unknown task {name:?}; known tasks: {}", TASK_NAMES.join(", ")))
        })
    }

    /// The metric a task is usually quoted by, and whether higher is better.
    pub fn primary_metric(self) -> (&'static str, bool) {
        match self {
            Task::ArcChallenge | Task::Hellaswag => ("acc_norm", true),
            Task::Wikitext => ("word_perplexity", false),
            _ => ("acc", true),
        }
    }

    /// Where the task's file lies under a data folder laid out like the project's shared data
    /// (`arc_easy/ARC-Easy-Test.jsonl`, ...). HellaSwag prefers the original jsonl
    /// (`hellaswag/hellaswag_val.jsonl`) and falls back to the derived text version.
    pub fn default_path(self, data_dir: &Path) -> PathBuf {
        match self {
            Task::ArcEasy => data_dir.join("arc_easy/ARC-Easy-Test.jsonl"),
            Task::ArcChallenge => data_dir.join("arc_challenge/ARC-Challenge-Test.jsonl"),
            Task::Piqa => data_dir.join("piqa/valid.jsonl"),
            Task::Hellaswag => {
                let original = data_dir.join("hellaswag/hellaswag_val.jsonl");
                if original.is_file() {
                    original
                } else {
                    data_dir.join("hellaswag_klosax_derived/hellaswag_val_full.txt.bz2")
                }
            }
            Task::Winogrande => data_dir.join("winogrande/dev.jsonl"),
            Task::Mmlu => data_dir.join("mmlu/data"),
            Task::LambadaOpenai => data_dir.join("lambada_openai/lambada_test.jsonl"),
            Task::Wikitext => data_dir.join("wikitext2_raw/wiki.test.raw"),
        }
    }
}

/// A fixed subset of `limit` items drawn with `seed`, kept in file order.
pub fn subset<T>(items: Vec<T>, limit: Option<usize>, seed: u64) -> Vec<T> {
    let Some(limit) = limit.filter(|&l| l < items.len()) else { return items };
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut keep = vec![false; items.len()];
    for &i in &order[..limit] {
        keep[i] = true;
    }
    items.into_iter().zip(keep).filter_map(|(item, k)| k.then_some(item)).collect()
}

/// lm-eval's standard error of a mean: sample standard deviation / sqrt(n) (needs n >= 2).
fn stderr_of_mean(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Index of the largest value, the first on ties (numpy's argmax).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Per-item correctness of multiple-choice docs: (acc, acc_norm) as 0/1 values.
pub fn score_multiple_choice(
    model: &dyn ScoreModel,
    docs: &[McDoc],
    opts: &EvalOptions,
    progress: Option<Progress>,
) -> Result<(Vec<f64>, Vec<f64>, ScoreStats)> {
    let requests: Vec<LoglikRequest> = docs.iter().flat_map(|d| d.requests.iter().cloned()).collect();
    let (results, stats) = loglikelihood(model, &requests, opts, progress)?;
    let (mut acc, mut acc_norm) = (Vec::new(), Vec::new());
    let mut at = 0;
    for d in docs {
        let lls: Vec<f64> = results[at..at + d.requests.len()].iter().map(|r| r.logprob).collect();
        at += d.requests.len();
        acc.push((argmax(lls.iter().copied()) == d.gold) as u8 as f64);
        let normed = lls.iter().zip(&d.choice_lengths).map(|(ll, &len)| ll / len.max(1) as f64);
        acc_norm.push((argmax(normed) == d.gold) as u8 as f64);
    }
    Ok((acc, acc_norm, stats))
}

fn insert_mean(metrics: &mut BTreeMap<String, f64>, name: &str, values: &[f64]) {
    metrics.insert(name.to_string(), mean(values));
    if values.len() >= 2 {
        metrics.insert(format!("{name}_stderr"), stderr_of_mean(values));
    }
}

/// Runs one task on the file (or, for MMLU, the folder) at `path`.
pub fn run_task(
    model: &dyn ScoreModel,
    task: Task,
    path: &Path,
    opts: &EvalOptions,
    progress: Option<Progress>,
) -> Result<TaskResult> {
    if !path.exists() {
        return Err(Error::new(
            ErrorCode::Io,
            format!(
                "{}: no such file or directory; point {} at its data (see Task::default_path)",
                path.display(),
                task.name()
            ),
        ));
    }
    let mut metrics = BTreeMap::new();
    let mut warnings = Vec::new();
    let (n, stats) = match task {
        Task::ArcEasy | Task::ArcChallenge | Task::Piqa | Task::Hellaswag | Task::Winogrande => {
            let docs = match task {
                Task::ArcEasy | Task::ArcChallenge => formats::arc(path)?,
                Task::Piqa => formats::piqa(path)?,
                Task::Winogrande => formats::winogrande(path)?,
                _ if path.to_string_lossy().ends_with(".jsonl") => formats::hellaswag_jsonl(path)?,
                _ => {
                    warnings.push(
                        "HellaSwag read from the derived 6-line text format: its contexts use the raw ctx (ctx_b not \
                         capitalized, only some [tags] removed), so scores differ slightly from lm-eval's"
                            .to_string(),
                    );
                    formats::hellaswag_text(path)?
                }
            };
            let docs = subset(docs, opts.limit, opts.seed);
            let (acc, acc_norm, stats) = score_multiple_choice(model, &docs, opts, progress)?;
            insert_mean(&mut metrics, "acc", &acc);
            if task != Task::Winogrande {
                insert_mean(&mut metrics, "acc_norm", &acc_norm);
            }
            (docs.len(), stats)
        }
        Task::Mmlu => run_mmlu(model, path, opts, progress, &mut metrics)?,
        Task::LambadaOpenai => {
            let requests = subset(formats::lambada(path)?, opts.limit, opts.seed);
            let (results, stats) = loglikelihood(model, &requests, opts, progress)?;
            let greedy: Vec<f64> = results.iter().map(|r| r.is_greedy as u8 as f64).collect();
            insert_mean(&mut metrics, "acc", &greedy);
            metrics.insert("perplexity".into(), (-mean(&results.iter().map(|r| r.logprob).collect::<Vec<_>>())).exp());
            (requests.len(), stats)
        }
        Task::Wikitext => {
            let raw = formats::read_text(path)?;
            let docs = subset(wikitext::documents(&raw), opts.limit, opts.seed);
            let scored: Vec<ScoredText> = docs
                .iter()
                .map(|page| ScoredText {
                    text: wikitext::detokenize(page),
                    words: wikitext::count_words(page),
                    bytes: page.len(),
                })
                .collect();
            let window = opts.perplexity_window.or(opts.effective_max_length(model)).ok_or_else(|| {
                Error::invalid_argument(
                    "the model has no length limit: set perplexity_window (or max_length) for wikitext",
                )
            })?;
            let ppl = rolling_perplexity(model, &scored, window, progress)?;
            metrics.insert("word_perplexity".into(), ppl.word_perplexity);
            metrics.insert("byte_perplexity".into(), ppl.byte_perplexity);
            metrics.insert("bits_per_byte".into(), ppl.bits_per_byte);
            metrics.insert("token_perplexity".into(), ppl.token_perplexity);
            metrics.insert("window".into(), window as f64);
            (docs.len(), ppl.stats)
        }
    };
    if stats.truncated > 0 {
        warnings.push(format!(
            "{} of {} requests were longer than max_length and were cut from the left",
            stats.truncated, stats.requests
        ));
    }
    Ok(TaskResult::new(task, path, n, metrics, warnings, stats))
}

/// MMLU: every `test/<subject>_test.csv` under `dir`, 5-shot from `dev/<subject>_dev.csv`.
/// `acc` is over all questions (weighted by subject size, as lm-eval's group score);
/// `acc/<subject>` per subject. The limit applies per subject.
fn run_mmlu(
    model: &dyn ScoreModel,
    dir: &Path,
    opts: &EvalOptions,
    progress: Option<Progress>,
    metrics: &mut BTreeMap<String, f64>,
) -> Result<(usize, ScoreStats)> {
    let dir = if dir.join("test").is_dir() { dir.to_path_buf() } else { dir.join("data") };
    let test_dir = dir.join("test");
    let entries = std::fs::read_dir(&test_dir).map_err(|e| Error::io(test_dir.display(), e))?;
    let mut subjects: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix("_test.csv").map(str::to_string))
        .collect();
    subjects.sort();
    if subjects.is_empty() {
        return Err(Error::invalid_file(
            test_dir.display(),
            "no <subject>_test.csv files; expected MMLU's data/test folder",
        ));
    }
    let mut docs = Vec::new();
    let mut spans = Vec::new();
    for subject in &subjects {
        let dev = formats::mmlu_csv(&dir.join("dev").join(format!("{subject}_dev.csv")))?;
        if dev.len() < 5 {
            return Err(Error::invalid_file(
                dir.join("dev").join(format!("{subject}_dev.csv")).display(),
                "fewer than 5 rows for the 5-shot prompt",
            ));
        }
        let questions =
            subset(formats::mmlu_csv(&test_dir.join(format!("{subject}_test.csv")))?, opts.limit, opts.seed);
        spans.push((subject, docs.len(), docs.len() + questions.len()));
        docs.extend(questions.iter().map(|q| formats::mmlu_doc(subject, &dev, q)));
    }
    let (acc, _, stats) = score_multiple_choice(model, &docs, opts, progress)?;
    insert_mean(metrics, "acc", &acc);
    for (subject, from, to) in spans {
        metrics.insert(format!("acc/{subject}"), mean(&acc[from..to]));
    }
    Ok((docs.len(), stats))
}

/// One task's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    pub task: String,
    /// The file (or folder) the items came from.
    pub source: String,
    /// Items scored.
    pub n: usize,
    pub metrics: BTreeMap<String, f64>,
    /// The metric the task is quoted by (also used by comparisons).
    pub primary_metric: String,
    pub higher_is_better: bool,
    pub warnings: Vec<String>,
    pub stats: ScoreStats,
    /// Tokens fed to the model per second of wall time.
    pub tokens_per_second: f64,
}

impl TaskResult {
    pub fn new(
        task: Task,
        source: &Path,
        n: usize,
        metrics: BTreeMap<String, f64>,
        warnings: Vec<String>,
        stats: ScoreStats,
    ) -> Self {
        let (primary, higher) = task.primary_metric();
        TaskResult {
            task: task.name().to_string(),
            source: source.display().to_string(),
            n,
            metrics,
            primary_metric: primary.to_string(),
            higher_is_better: higher,
            warnings,
            tokens_per_second: stats.tokens_per_second(),
            stats,
        }
    }

    pub fn primary(&self) -> Option<f64> {
        self.metrics.get(&self.primary_metric).copied()
    }
}
