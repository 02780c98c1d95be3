//! Evaluation on the GPU: task scores and scored tokens/s, WikiText-2 perplexity and passkey
//! retrieval for a base model and its untrained Liger-GLA conversion, both uploaded in bf16.
//! Prints one JSON line per result.
//!
//!     cargo run -p liger-cuda --release --example eval_gpu -- --model model.gguf \
//!         --data ../shared/data --tasks arc_easy,hellaswag --limit 200 --seed 1234 \
//!         --window 2048 --passkey 1024,2048,4096,8192 --depths 0.1,0.3,0.5,0.7,0.9 --trials 1
//!
//! The base model runs with every layer softmax and no adapters (`all_softmax`);
//! "liger" is `linearize` with the default options (GLA, every layer converted, LoRA B = 0),
//! the starting point that fine-tuning improves. WikiText-2 is the raw test split scored as
//! `liger_core::eval::perplexity` does (every article, rolling windows of `--window` tokens,
//! each token predicted once). `--tasks none` skips the tasks, `--window 0` the perplexity;
//! the passkey runs for the base model only (`--passkey-liger` adds the Liger model).

use half::bf16;
use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::eval::passkey::{passkey_by_loglikelihood, PasskeyOptions};
use liger_core::eval::{run_task, EvalOptions, ScoreModel, Task};
use liger_core::model::load_model;
use liger_cuda::model::{all_softmax, upload_for_scoring};
use liger_cuda::GpuLigerModel;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    model: PathBuf,
    data: PathBuf,
    tasks: Vec<String>,
    opts: EvalOptions,
    window: usize,
    passkey: Option<PasskeyOptions>,
    passkey_liger: bool,
}

fn parse_list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, String> {
    value.split(',').map(|s| s.trim().parse::<T>().map_err(|_| format!("cannot parse {s:?} in {value:?}"))).collect()
}

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut a = Args {
        model: PathBuf::new(),
        data: PathBuf::from("../shared/data"),
        tasks: vec!["arc_easy".into(), "hellaswag".into()],
        opts: EvalOptions { limit: Some(200), ..Default::default() },
        window: 2048,
        passkey: None,
        passkey_liger: false,
    };
    let mut passkey = PasskeyOptions { trials: 1, ..Default::default() };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--data" => a.data = PathBuf::from(value()?),
            "--tasks" => a.tasks = value()?.split(',').filter(|s| *s != "none").map(str::to_string).collect(),
            "--limit" => a.opts.limit = Some(value()?.parse()?),
            "--seed" => a.opts.seed = value()?.parse()?,
            "--window" => a.window = value()?.parse()?,
            "--passkey" => {
                passkey.lengths = parse_list(&value()?)?;
                a.passkey = Some(passkey.clone());
            }
            "--depths" => passkey.depths = parse_list(&value()?)?,
            "--trials" => passkey.trials = value()?.parse()?,
            "--passkey-liger" => a.passkey_liger = true,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if a.model.as_os_str().is_empty() {
        // Only now: the default model's path asserts that the file exists.
        a.model = liger_core::testing::default_model_path();
    }
    // Depths and trials may come after --passkey.
    if let Some(p) = &mut a.passkey {
        p.depths = passkey.depths;
        p.trials = passkey.trials;
        p.seed = a.opts.seed;
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    for label in ["base", "liger"] {
        let started = Instant::now();
        let base = load_model(&args.model, &mut |_, _| {})?;
        // The upload `liger eval --device cuda` makes.
        let host = if label == "base" {
            all_softmax(base)?
        } else {
            linearize(base, LigerOptions::default(), LoraOptions::default())?
        };
        let model = upload_for_scoring(0, host)?;
        let info = model.context().info().clone();
        // Kernels compile (or load from the cache) at first use: keep that out of the timings.
        model.all_logits(&[1, 2, 3, 4])?;
        println!(
            "{}",
            json!({ "model": label, "event": "loaded", "gpu": info.name, "weights": "bf16", "seconds": started.elapsed().as_secs_f64() })
        );
        evaluate(label, &model, &args)?;
    }
    Ok(())
}

fn evaluate(label: &str, model: &GpuLigerModel<bf16>, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    for name in &args.tasks {
        let task = Task::from_name(name)?;
        let r = run_task(model, task, &task.default_path(&args.data), &args.opts, None)?;
        println!(
            "{}",
            json!({ "model": label, "task": r.task, "n": r.n, "metrics": r.metrics, "tokens": r.stats.tokens_processed,
                    "forwards": r.stats.forwards, "seconds": r.stats.seconds, "tokens_per_s": r.tokens_per_second,
                    "limit": args.opts.limit, "seed": args.opts.seed })
        );
    }
    if args.window > 0 {
        let opts = EvalOptions { limit: None, perplexity_window: Some(args.window), ..args.opts.clone() };
        let path = Task::Wikitext.default_path(&args.data);
        let r = run_task(model, Task::Wikitext, &path, &opts, None)?;
        println!(
            "{}",
            json!({ "model": label, "task": "wikitext2_test", "method": format!("rolling windows of {} tokens, every article", args.window),
                    "documents": r.n, "metrics": r.metrics, "tokens": r.stats.tokens_processed, "forwards": r.stats.forwards,
                    "seconds": r.stats.seconds, "tokens_per_s": r.tokens_per_second })
        );
    }
    if let Some(passkey) = args.passkey.as_ref().filter(|_| label == "base" || args.passkey_liger) {
        let started = Instant::now();
        let r = passkey_by_loglikelihood(model, passkey, &args.opts)?;
        for c in &r.cells {
            println!(
                "{}",
                json!({ "model": label, "passkey_length": c.length, "depth": c.depth, "correct": c.correct, "trials": c.trials })
            );
        }
        println!(
            "{}",
            json!({ "model": label, "passkey": r.method, "accuracy": r.accuracy, "cells": r.cells.len(), "max_length": model.max_length(),
                    "seconds": started.elapsed().as_secs_f64() })
        );
    }
    Ok(())
}
