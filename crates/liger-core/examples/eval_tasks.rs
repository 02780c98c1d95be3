//! Scores a model on evaluation tasks and writes a JSON report (`liger eval --html` draws the
//! page of results).
//!
//!     cargo run --release -p liger-core --example eval_tasks -- \
//!         --model model.gguf --data ../shared/data --tasks arc_easy,lambada_openai \
//!         --limit 100 [--liger] [--max-length 2048] [--window 1024] \
//!         [--passkey 1024,2048 --depths 0.1,0.5,0.9 --trials 2] [--out report.json]
//!
//! `--liger` scores the untrained Liger conversion of the model (GLA mixer, every layer
//! converted, fresh LoRA adapters with B = 0): the starting point that linearize fine-tunes.
//! `--tasks none` runs only the passkey test.

use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::eval::passkey::{passkey_by_loglikelihood, PasskeyOptions};
use liger_core::eval::{run_task, write_json, EvalOptions, EvalReport, ScoreModel, Task};
use liger_core::model::load_model;
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn parse_list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, String> {
    value.split(',').map(|s| s.trim().parse::<T>().map_err(|_| format!("cannot parse {s:?} in {value:?}"))).collect()
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut model = liger_core::testing::cache_dir().join(liger_core::testing::DEFAULT_MODEL_FILE);
    let mut data = PathBuf::from("../shared/data");
    let mut tasks = vec!["arc_easy".to_string()];
    let mut opts = EvalOptions::default();
    let mut passkey = PasskeyOptions { trials: 1, ..Default::default() };
    let (mut out, mut run_passkey, mut liger) = (None, false, false);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()?),
            "--data" => data = PathBuf::from(value()?),
            "--tasks" => tasks = value()?.split(',').filter(|s| *s != "none").map(str::to_string).collect(),
            "--limit" => opts.limit = Some(value()?.parse()?),
            "--seed" => opts.seed = value()?.parse()?,
            "--max-length" => opts.max_length = Some(value()?.parse()?),
            "--window" => opts.perplexity_window = Some(value()?.parse()?),
            "--liger" => liger = true,
            "--passkey" => {
                passkey.lengths = parse_list(&value()?)?;
                run_passkey = true;
            }
            "--depths" => passkey.depths = parse_list(&value()?)?,
            "--trials" => passkey.trials = value()?.parse()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    passkey.seed = opts.seed;
    let base = load_model(&model, &mut |_, _| {})?;
    let label = if liger { format!("{} (liger gla, untrained)", base.name) } else { base.name.clone() };
    let scorer: Box<dyn ScoreModel> = if liger {
        Box::new(linearize(base, LigerOptions::default(), LoraOptions::default())?)
    } else {
        Box::new(base)
    };
    let scorer = scorer.as_ref();
    let mut report = EvalReport::new(label, opts.clone());
    for name in &tasks {
        let task = Task::from_name(name)?;
        let result = run_task(scorer, task, &task.default_path(&data), &opts, None)?;
        let also = ["acc_norm", "perplexity"]
            .iter()
            .filter(|m| **m != result.primary_metric)
            .filter_map(|m| result.metrics.get(*m).map(|v| format!(" {m}={v:.4}")))
            .collect::<String>();
        eprintln!(
            "{:<16} n={:<5} {}={:.4}{also}  ({:.1} s, {:.0} tokens/s, {} forwards, {} truncated)",
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
    if run_passkey {
        let started = std::time::Instant::now();
        let r = passkey_by_loglikelihood(scorer, &passkey, &opts)?;
        for c in &r.cells {
            eprintln!("passkey length {:>5} depth {:>3.0}%: {}/{}", c.length, c.depth * 100.0, c.correct, c.trials);
        }
        eprintln!(
            "passkey accuracy {:.3} over {} cells ({:.0} s)",
            r.accuracy,
            r.cells.len(),
            started.elapsed().as_secs_f64()
        );
        report.passkey = Some(r);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = out {
        write_json(&path, &report)?;
    }
    Ok(())
}
