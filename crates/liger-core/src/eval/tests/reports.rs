//! Reports: comparison arithmetic, JSON round trip.

use super::temp_dir;
use crate::error::ErrorCode;
use crate::eval::loglik::ScoreStats;
use crate::eval::report::{compare, write_json, EvalReport};
use crate::eval::tasks::Task;
use crate::eval::tasks::TaskResult;
use crate::eval::EvalOptions;
use std::collections::BTreeMap;
use std::path::Path;

fn result(task: Task, metrics: &[(&str, f64)]) -> TaskResult {
    let stats = ScoreStats { requests: 10, forwards: 8, tokens_processed: 400, truncated: 0, seconds: 2.0 };
    let metrics: BTreeMap<String, f64> = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    TaskResult::new(task, Path::new("data.jsonl"), 10, metrics, vec!["a <warning>".into()], stats)
}

fn report(model: &str, arc_e: f64, hs: f64, ppl: f64) -> EvalReport {
    let mut r = EvalReport::new(model, EvalOptions { limit: Some(10), ..Default::default() });
    r.push(result(Task::ArcEasy, &[("acc", arc_e), ("acc_norm", 0.1)]));
    r.push(result(Task::Hellaswag, &[("acc", 0.2), ("acc_norm", hs)]));
    r.push(result(Task::Wikitext, &[("word_perplexity", ppl)]));
    r
}

#[test]
fn comparison_ratios_are_as_defined() {
    let base = report("base", 0.6, 0.4, 20.0);
    let lin = report("liger", 0.3, 0.4, 25.0);
    let c = compare(&base, &lin).unwrap();
    let rec: Vec<(&str, f64)> = c.rows.iter().map(|r| (r.task.as_str(), r.recovery)).collect();
    assert_eq!(rec, [("arc_easy", 0.5), ("hellaswag", 1.0), ("wikitext", 0.8)]);
    assert_eq!(c.rows[1].metric, "acc_norm");
    assert!((c.ratio_of_averages.unwrap() - 0.7 / 1.0).abs() < 1e-12);
    assert!((c.mean_of_ratios.unwrap() - 0.75).abs() < 1e-12);
    assert!(c.definitions.contains_key("ratioOfAverages") && c.definitions.contains_key("meanOfRatios"));
    let other = EvalReport::new("empty", EvalOptions::default());
    assert_eq!(compare(&base, &other).unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(base.tokens_processed, 1200);
    assert!((base.tokens_per_second - 200.0).abs() < 1e-9);
}

#[test]
fn report_json_round_trips_atomically() {
    let dir = temp_dir("report");
    let base = report("base", 0.6, 0.4, 20.0);
    let path = dir.join("base.json");
    write_json(&path, &base).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"tokensPerSecond\"") && text.contains("\"primaryMetric\": \"acc\""));
    assert_eq!(EvalReport::from_json(&text, "base.json").unwrap(), base);
    assert_eq!(EvalReport::from_json("{}", "x.json").unwrap_err().code, ErrorCode::InvalidFile);
    let left: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "no temporary files left behind");
}
