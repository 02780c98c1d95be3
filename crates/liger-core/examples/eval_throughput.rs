//! Scored tokens per second on the CPU: log-likelihood requests of a fixed length (WikiText-2
//! text, so the tokens are real), scored by the base model and by its untrained Liger
//! conversion through the same evaluation path the tasks use.
//!
//!     cargo run --release -p liger-core --example eval_throughput -- \
//!         [--model model.gguf] [--data ../shared/data] [--lengths 128,512,1024] [--requests 8]
//!
//! Each length runs `--requests` distinct requests (parallel over the cores, like a task run)
//! after one warm-up request; tokens/s = model input tokens / wall time.

use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::eval::loglik::{score_tokens, TokenRequest};
use liger_core::eval::ScoreModel;
use liger_core::model::load_model;
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `count` requests of `length` model-input tokens each, cut from consecutive stretches of
/// `tokens`: the last 8 tokens of each are the continuation.
fn requests(tokens: &[u32], length: usize, count: usize) -> Result<Vec<TokenRequest>, String> {
    if tokens.len() < (length + 1) * count {
        return Err(format!("the text holds {} tokens; {count} requests of {length} need more", tokens.len()));
    }
    Ok(tokens
        .chunks_exact(length + 1)
        .take(count)
        .map(|chunk| TokenRequest {
            context: chunk[..length + 1 - 8].to_vec(),
            continuation: chunk[length + 1 - 8..].to_vec(),
        })
        .collect())
}

fn measure(
    name: &str,
    model: &dyn ScoreModel,
    tokens: &[u32],
    lengths: &[usize],
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    for &length in lengths {
        let warmup = requests(tokens, length, 1)?;
        score_tokens(model, &warmup, None, None)?;
        let batch = requests(&tokens[length + 1..], length, count)?;
        let (_, stats) = score_tokens(model, &batch, None, None)?;
        println!(
            "{name:<18} length {length:>5}  {count} requests  {:>7} tokens  {:>7.2} s  {:>7.1} tokens/s",
            stats.tokens_processed,
            stats.seconds,
            stats.tokens_per_second()
        );
    }
    Ok(())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut model = liger_core::testing::cache_dir().join(liger_core::testing::DEFAULT_MODEL_FILE);
    let mut data = PathBuf::from("../shared/data");
    let mut lengths = vec![128usize, 512, 1024];
    let mut count = 8usize;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()?),
            "--data" => data = PathBuf::from(value()?),
            "--lengths" => lengths = value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?,
            "--requests" => count = value()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if lengths.iter().any(|&l| l <= 8) || count == 0 {
        return Err("lengths must exceed 8 tokens and --requests must be at least 1".into());
    }
    let text_path = data.join("wikitext2_raw/wiki.valid.raw");
    let text = std::fs::read_to_string(&text_path).map_err(|e| format!("{}: {e}", text_path.display()))?;
    let base = load_model(&model, &mut |_, _| {})?;
    let tokens = base.tokenizer.encode(&text, false, false)?;
    println!("threads {}, model {}", rayon::current_num_threads(), model.display());
    measure("base (softmax)", &base, &tokens, &lengths, count)?;
    let liger = linearize(base, LigerOptions::default(), LoraOptions::default())?;
    measure("liger gla", &liger, &tokens, &lengths, count)?;
    Ok(())
}
