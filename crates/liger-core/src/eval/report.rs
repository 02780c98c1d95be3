//! Reports: one `EvalReport` per model (JSON), a base-vs-linearized comparison, and a small
//! self-contained HTML page with an inline SVG bar chart.

use super::passkey::PasskeyReport;
use super::tasks::TaskResult;
use super::EvalOptions;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
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

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(crate) fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

pub(crate) const COLORS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"];

/// Grouped bars of each accuracy task's primary metric (0..1), one color per model.
fn bar_chart(reports: &[&EvalReport]) -> String {
    let mut tasks: Vec<&str> = Vec::new();
    for r in reports {
        for t in r.tasks.iter().filter(|t| t.higher_is_better) {
            if !tasks.contains(&t.task.as_str()) {
                tasks.push(&t.task);
            }
        }
    }
    let (bar, gap, height, top, left) = (18.0, 24.0, 200.0, 20.0, 40.0);
    let group = bar * reports.len() as f64 + gap;
    let width = left + group * tasks.len() as f64 + 20.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">",
        top + height + 70.0 + 18.0 * reports.len() as f64
    );
    for tick in 0..=4 {
        let y = top + height * (1.0 - tick as f64 / 4.0);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"4\" y=\"{}\">{:.2}</text>",
            width - 10.0,
            y + 4.0,
            tick as f64 / 4.0
        );
    }
    for (ti, task) in tasks.iter().enumerate() {
        let x0 = left + gap / 2.0 + group * ti as f64;
        for (mi, r) in reports.iter().enumerate() {
            let Some(v) = r.task(task).and_then(TaskResult::primary) else { continue };
            let h = height * v.clamp(0.0, 1.0);
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                x0 + bar * mi as f64,
                top + height - h,
                COLORS[mi % COLORS.len()],
                escape(&r.model),
                escape(task),
                fmt_value(v)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{x0}\" y=\"{}\" transform=\"rotate(30 {x0} {})\">{}</text>",
            top + height + 14.0,
            top + height + 14.0,
            escape(task)
        );
    }
    for (mi, r) in reports.iter().enumerate() {
        let y = top + height + 60.0 + 18.0 * mi as f64;
        let _ = write!(
            svg,
            "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{}</text>",
            y - 10.0,
            COLORS[mi % COLORS.len()],
            left + 18.0,
            escape(&r.model)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A self-contained HTML page (no external assets): per-model tables, warnings, the optional
/// comparison, and a bar chart of the accuracy tasks.
pub fn render_html(reports: &[&EvalReport], comparison: Option<&Comparison>) -> String {
    let mut h = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>liger evaluation</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}\
         td:first-child{text-align:left}.warn{color:#a60}</style></head><body><h1>Evaluation</h1>",
    );
    h.push_str(&bar_chart(reports));
    for r in reports {
        let _ = write!(
            h,
            "<h2>{}</h2><p>{:.1} s, {} tokens, {:.1} tokens/s</p>",
            escape(&r.model),
            r.seconds,
            r.tokens_processed,
            r.tokens_per_second
        );
        h.push_str("<table><tr><th>task</th><th>n</th><th>metric</th><th>value</th><th>tokens/s</th></tr>");
        for t in &r.tasks {
            for (name, value) in t.metrics.iter().filter(|(k, _)| !k.contains('/')) {
                let bold = if *name == t.primary_metric { " style=\"font-weight:bold\"" } else { "" };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td{bold}>{}</td><td>{:.1}</td></tr>",
                    escape(&t.task),
                    t.n,
                    escape(name),
                    fmt_value(*value),
                    t.tokens_per_second
                );
            }
        }
        h.push_str("</table>");
        for t in &r.tasks {
            for w in &t.warnings {
                let _ = write!(h, "<p class=\"warn\">{}: {}</p>", escape(&t.task), escape(w));
            }
        }
        if let Some(p) = &r.passkey {
            h.push_str("<h3>Passkey retrieval</h3><table><tr><th>length</th><th>depth</th><th>accuracy</th><th>trials</th></tr>");
            for c in &p.cells {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{:.0}%</td><td>{}</td><td>{}</td></tr>",
                    c.length,
                    c.depth * 100.0,
                    fmt_value(c.accuracy),
                    c.trials
                );
            }
            h.push_str("</table>");
        }
    }
    if let Some(c) = comparison {
        let _ = write!(h, "<h2>{} vs {}</h2><table><tr><th>task</th><th>metric</th><th>base</th><th>linearized</th><th>recovery</th></tr>", escape(&c.base_model), escape(&c.linearized_model));
        for row in &c.rows {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&row.task),
                escape(&row.metric),
                fmt_value(row.base),
                fmt_value(row.linearized),
                fmt_value(row.recovery)
            );
        }
        let _ = write!(
            h,
            "</table><p>ratio of averages: {} &middot; mean of ratios: {}</p><ul>",
            fmt_value(c.ratio_of_averages.unwrap_or(f64::NAN)),
            fmt_value(c.mean_of_ratios.unwrap_or(f64::NAN))
        );
        for (k, v) in &c.definitions {
            let _ = write!(h, "<li><b>{}</b>: {}</li>", escape(k), escape(v));
        }
        h.push_str("</ul>");
    }
    h.push_str("</body></html>\n");
    h
}

/// Writes the HTML page atomically.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_html(path: &Path, reports: &[&EvalReport], comparison: Option<&Comparison>) -> Result<()> {
    let html = render_html(reports, comparison);
    crate::hf::fsutil::write_atomically(path, |w| {
        std::io::Write::write_all(w, html.as_bytes()).map_err(|e| Error::io(path.display(), e))
    })
}
