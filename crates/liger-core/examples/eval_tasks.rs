//! Scores a model on evaluation tasks and writes a JSON report (and optionally HTML).
//!
//!     cargo run --release -p liger-core --example eval_tasks -- \
//!         --model model.gguf --data ../shared/data --tasks arc_easy,lambada_openai \
//!         --limit 100 [--max-length 2048] [--window 1024] [--passkey 1024,2048] \
//!         [--out report.json] [--html report.html]

use liger_core::eval::passkey::{passkey_by_loglikelihood, PasskeyOptions};
use liger_core::eval::report::write_html;
use liger_core::eval::{run_task, write_json, EvalOptions, EvalReport, Task};
use liger_core::model::load_model;
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut model = liger_core::testing::cache_dir().join(liger_core::testing::DEFAULT_MODEL_FILE);
    let mut data = PathBuf::from("../shared/data");
    let mut tasks = vec!["arc_easy".to_string()];
    let mut opts = EvalOptions::default();
    let (mut out, mut html, mut passkey) = (None, None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()?),
            "--data" => data = PathBuf::from(value()?),
            "--tasks" => tasks = value()?.split(',').map(str::to_string).collect(),
            "--limit" => opts.limit = Some(value()?.parse()?),
            "--seed" => opts.seed = value()?.parse()?,
            "--max-length" => opts.max_length = Some(value()?.parse()?),
            "--window" => opts.perplexity_window = Some(value()?.parse()?),
            "--passkey" => passkey = Some(value()?.split(',').map(|s| s.parse()).collect::<Result<Vec<usize>, _>>()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--html" => html = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let model = load_model(&model, &mut |_, _| {})?;
    let mut report = EvalReport::new(model.name.clone(), opts.clone());
    for name in &tasks {
        let task = Task::from_name(name)?;
        let result = run_task(&model, task, &task.default_path(&data), &opts, None)?;
        eprintln!(
            "{:<16} n={:<5} {}={:.4}  ({:.1} s, {:.0} tokens/s, {} forwards, {} truncated)",
            result.task,
            result.n,
            result.primary_metric,
            result.primary().unwrap_or(f64::NAN),
            result.stats.seconds,
            result.tokens_per_second,
            result.stats.forwards,
            result.stats.truncated
        );
        report.push(result);
    }
    if let Some(lengths) = passkey {
        let p = PasskeyOptions { lengths, trials: 1, ..Default::default() };
        let r = passkey_by_loglikelihood(&model, &p, &opts)?;
        eprintln!("passkey accuracy {:.3} over {} cells", r.accuracy, r.cells.len());
        report.passkey = Some(r);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = out {
        write_json(&path, &report)?;
    }
    if let Some(path) = html {
        write_html(&path, &[&report], None)?;
    }
    Ok(())
}
