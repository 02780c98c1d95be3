//! Reports: one `EvalReport` per model (JSON) and a base-vs-linearized comparison. The page
//! of `liger eval --html` is drawn from them by the TypeScript API (ts/src/report/html.ts).

use super::passkey::PasskeyReport;
use super::tasks::TaskResult;
use super::EvalOptions;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// Every result for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    pub model: String,
    pub options: EvalOptions,
    pub tasks: Vec<TaskResult>,
    pub passkey: Option<PasskeyReport>,
    /// Total scoring time and tokens over all tasks.
    pub seconds: f64,
    pub tokens_processed: usize,
    pub tokens_per_second: f64,
}

impl EvalReport {
    pub fn new(model: impl Into<String>, options: EvalOptions) -> Self {
        EvalReport {
            model: model.into(),
            options,
            tasks: Vec::new(),
            passkey: None,
            seconds: 0.0,
            tokens_processed: 0,
            tokens_per_second: 0.0,
        }
    }

    /// Adds a task's result and updates the totals.
    pub fn push(&mut self, result: TaskResult) {
        self.seconds += result.stats.seconds;
        self.tokens_processed += result.stats.tokens_processed;
        self.tokens_per_second = if self.seconds > 0.0 { self.tokens_processed as f64 / self.seconds } else { 0.0 };
        self.tasks.push(result);
    }

    pub fn task(&self, name: &str) -> Option<&TaskResult> {
        self.tasks.iter().find(|t| t.task == name)
    }

    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid_file(source, format!("not an evaluation report: {e}")))
    }
}

/// One task of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComparisonRow {
    pub task: String,
    pub metric: String,
    pub higher_is_better: bool,
    pub base: f64,
    pub linearized: f64,
    /// linearized / base for higher-is-better metrics, base / linearized for perplexities.
    pub recovery: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub base_model: String,
    pub linearized_model: String,
    pub rows: Vec<ComparisonRow>,
    /// mean(linearized) / mean(base) over the higher-is-better rows (the paper's "recovery");
    /// `None` when no accuracy task is shared.
    pub ratio_of_averages: Option<f64>,
    /// mean of `recovery` over the higher-is-better rows.
    pub mean_of_ratios: Option<f64>,
    /// What each number means, written out for readers of the JSON.
    pub definitions: BTreeMap<String, String>,
}

/// Compares the primary metric of every task both reports share.
pub fn compare(base: &EvalReport, linearized: &EvalReport) -> Result<Comparison> {
    let mut rows = Vec::new();
    for b in &base.tasks {
        let Some(l) = linearized.task(&b.task) else { continue };
        let (Some(bv), Some(lv)) = (b.primary(), l.metrics.get(&b.primary_metric).copied()) else { continue };
        let recovery = if b.higher_is_better { lv / bv } else { bv / lv };
        rows.push(ComparisonRow {
            task: b.task.clone(),
            metric: b.primary_metric.clone(),
            higher_is_better: b.higher_is_better,
            base: bv,
            linearized: lv,
            recovery,
        });
    }
    if rows.is_empty() {
        return Err(Error::invalid_argument(format!(
            "the reports of {} and {} share no task with a primary metric; evaluate both on the same tasks",
            base.model, linearized.model
        )));
    }
    let acc: Vec<&ComparisonRow> = rows.iter().filter(|r| r.higher_is_better).collect();
    let avg = |f: &dyn Fn(&ComparisonRow) -> f64| acc.iter().map(|r| f(r)).sum::<f64>() / acc.len().max(1) as f64;
    let ratio_of_averages = (!acc.is_empty()).then(|| avg(&|r| r.linearized) / avg(&|r| r.base));
    let mean_of_ratios = (!acc.is_empty()).then(|| avg(&|r| r.recovery));
    let definitions = BTreeMap::from([
        (
            "recovery".to_string(),
            "per task: linearized / base for accuracies, base / linearized for perplexities (1 = fully recovered)"
                .to_string(),
        ),
        (
            "ratioOfAverages".to_string(),
            "mean of the linearized scores / mean of the base scores, over the accuracy tasks".to_string(),
        ),
        ("meanOfRatios".to_string(), "mean of the per-task recovery ratios, over the accuracy tasks".to_string()),
    ]);
    Ok(Comparison {
        base_model: base.model.clone(),
        linearized_model: linearized.model.clone(),
        rows,
        ratio_of_averages,
        mean_of_ratios,
        definitions,
    })
}

/// Writes `value` as pretty JSON, atomically (temporary file, then rename).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::internal(format!("serializing the report: {e}")))?;
    crate::hf::fsutil::write_atomically(path, |w| {
        std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(path.display(), e))
    })
}
