//! What a linearize run leaves beside its checkpoints: `report.json` (every number of the
//! [`LinearizeReport`]) and `report.html`, a self-contained page with plain SVG charts of the
//! training loss, the learning rate, the validation perplexity over the steps, and the decoding
//! memory of one sequence against the context length, base model against the converted one.

use super::job::LinearizeReport;
use crate::error::{Error, Result};
use crate::eval::report::{escape, fmt_value, write_json, COLORS};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

/// One training step as it was reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens_per_s: f64,
}

/// A validation during training.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEval {
    pub step: u64,
    pub loss: f64,
    pub ppl: f64,
}

/// The steps this run trained (not those of a run it resumed) and its validations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingHistory {
    pub steps: Vec<StepRecord>,
    pub evals: Vec<StepEval>,
}

/// Writes `report.json` and `report.html` into the run folder.
pub fn write_run_report(dir: &Path, report: &LinearizeReport) -> Result<()> {
    write_json(&dir.join("report.json"), report)?;
    let html = render_run_html(report);
    let path = dir.join("report.html");
    crate::hf::fsutil::write_atomically(&path, |w| {
        w.write_all(html.as_bytes()).map_err(|e| Error::io(path.display(), e))
    })
}

/// The run's page: a summary table and the charts.
pub fn render_run_html(r: &LinearizeReport) -> String {
    let mut h = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>liger linearize</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}\
         td:first-child{text-align:left}svg{margin:0.5em 1em 0.5em 0}</style></head><body>",
    );
    let _ = write!(h, "<h1>{}: Liger conversion</h1><table>", escape(&r.model_name));
    let mut row = |name: &str, value: String| {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", escape(name), escape(&value));
    };
    row("steps", format!("{} of {}{}", r.steps_done, r.total_steps, if r.cancelled { " (cancelled)" } else { "" }));
    row("training sequences / validation sequences", format!("{} / {}", r.train_sequences, r.val_sequences));
    row("training time", format!("{:.1} s at {:.0} tokens/s", r.train_seconds, r.tokens_per_s));
    for (name, e) in [
        ("validation perplexity: base", &r.base_eval),
        ("converted, untrained", &r.untrained_eval),
        ("trained", &r.trained_eval),
    ] {
        row(name, e.as_ref().map_or("–".into(), |e| fmt_value(e.ppl)));
    }
    row("softmax layers", if r.softmax_layers.is_empty() { "none".into() } else { format!("{:?}", r.softmax_layers) });
    row("decoding state per sequence", format!("{:.2} MiB", r.state_bytes as f64 / (1 << 20) as f64));
    h.push_str("</table>");

    let steps = &r.history.steps;
    let losses: Vec<(f64, f64)> = r.losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect();
    if !losses.is_empty() {
        h.push_str(&line_chart(
            "training loss",
            "step",
            &[("loss per step", losses.clone()), ("mean of the last 20", moving_mean(&losses, 20))],
        ));
    }
    if !steps.is_empty() {
        h.push_str(&line_chart(
            "learning rate",
            "step",
            &[("learning rate", steps.iter().map(|s| (s.step as f64, s.lr as f64)).collect())],
        ));
    }
    let evals: Vec<(f64, f64)> = r.history.evals.iter().map(|e| (e.step as f64, e.ppl)).collect();
    if !evals.is_empty() {
        let span = (0.0, r.total_steps.max(1) as f64);
        let level = |e: &Option<super::trainer::EvalResult>| {
            e.as_ref().map(|e| vec![(span.0, e.ppl), (span.1, e.ppl)]).unwrap_or_default()
        };
        h.push_str(&line_chart(
            "validation perplexity",
            "step",
            &[
                ("trained so far", evals),
                ("base (softmax)", level(&r.base_eval)),
                ("converted, untrained", level(&r.untrained_eval)),
            ],
        ));
    }
    if r.memory.base_bytes_per_token > 0 {
        h.push_str(&memory_chart(r));
    }
    h.push_str("</body></html>\n");
    h
}

/// The mean of each point and the `n - 1` before it.
fn moving_mean(points: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let window = &points[(i + 1).saturating_sub(n)..=i];
            (points[i].0, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
        })
        .collect()
}

/// Decoding memory of one sequence (MiB, f32) against the context length: the base model's KV
/// cache grows with it; the converted model's state does not (a hybrid's softmax layers grow).
fn memory_chart(r: &LinearizeReport) -> String {
    let m = &r.memory;
    let contexts: Vec<f64> = (9..=15).map(|p| (1u64 << p) as f64).collect();
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    let base = contexts.iter().map(|&n| (n, mib(n * m.base_bytes_per_token as f64))).collect();
    let liger = contexts
        .iter()
        .map(|&n| (n, mib(m.liger_constant_bytes as f64 + n * m.liger_bytes_per_token as f64)))
        .collect();
    line_chart(
        "decoding memory per sequence (MiB, f32)",
        "context length (tokens)",
        &[("base: KV cache", base), ("Liger", liger)],
    )
}

/// A line chart as inline SVG: each series a polyline over shared linear axes, with the axes'
/// ranges labelled and a legend.
fn line_chart(title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let (width, height, left, top, bottom) = (560.0, 220.0, 64.0, 28.0, 40.0);
    let points = series.iter().flat_map(|(_, p)| p.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return String::new();
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let plot_w = width - left - 16.0;
    let plot_h = height - top - bottom;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * plot_h;
    let legend_h = 16.0 * series.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\"><text x=\"{left}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        height + legend_h,
        escape(title)
    );
    for tick in 0..=4 {
        let f = tick as f64 / 4.0;
        let (y, value) = (top + (1.0 - f) * plot_h, y0 + f * (y1 - y0));
        let _ = write!(svg, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"4\" y=\"{:.1}\">{}</text>", left + plot_w, y + 4.0, fmt_value(value));
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        top + plot_h + 14.0,
        fmt_value(x0),
        left + plot_w,
        top + plot_h + 14.0,
        fmt_value(x1),
        left + plot_w / 2.0,
        top + plot_h + 30.0,
        escape(x_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let coords: Vec<String> = pts
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(svg, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>", coords.join(" "), escape(name));
        let y = height + 16.0 * i as f64;
        let _ = write!(svg, "<rect x=\"{left}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>", y - 4.0, left + 18.0, y, escape(name));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::job::DecodeMemory;

    #[test]
    fn the_page_plots_what_there_is_and_stays_finite() {
        // A run that trained nothing: no loss or learning-rate chart, the memory chart only.
        let empty = LinearizeReport {
            model_name: "m <&>".into(),
            memory: DecodeMemory { base_bytes_per_token: 1000, liger_constant_bytes: 5000, liger_bytes_per_token: 0 },
            ..Default::default()
        };
        let html = render_run_html(&empty);
        assert_eq!(html.matches("<svg").count(), 1);
        assert!(html.contains("m &lt;&amp;&gt;") && !html.contains("m <&>"));
        // Non-finite points are left out; a flat series still gets a range.
        let mut r = empty.clone();
        r.losses = vec![2.0, f64::NAN, 2.0, 2.0];
        let html = render_run_html(&r);
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(!html.contains("NaN") && !html.contains("inf"));
        assert_eq!(moving_mean(&[(1.0, 1.0), (2.0, 3.0), (3.0, 5.0)], 2), vec![(1.0, 1.0), (2.0, 2.0), (3.0, 4.0)]);
    }
}
