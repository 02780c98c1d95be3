//! CPU speed of the Liger model against its softmax base: training tokens/s (LoRA r=8 on
//! q, k, v; one sequence per step) and decode tokens/s after a prompt of each given length.
//! `cargo run --release -p liger-core --example bench_liger -- [model.gguf] [train_seq_len] [contexts,...]`
//! Prints one JSON line per measurement.

use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::generate::CausalLm;
use liger_core::model::load_model;
use liger_core::sampling::argmax;
use liger_core::testing::random_tokens;
use std::time::Instant;

fn decode_tok_s<M: CausalLm>(model: &M, prompt: &[u32], steps: usize) -> liger_core::Result<f64> {
    let mut state = model.new_state();
    let mut logits = model.forward_last(&mut state, prompt)?;
    let t = Instant::now();
    for _ in 0..steps {
        logits = model.forward_last(&mut state, &[argmax(&logits)])?;
    }
    Ok(steps as f64 / t.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(liger_core::testing::default_model_path);
    let seq_len: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let contexts: Vec<usize> = args
        .get(3)
        .map_or("512,4096".to_string(), |s| s.clone())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let threads = rayon::current_num_threads();
    let base = load_model(&path, &mut |_, _| {})?;
    let vocab = base.config.vocab_size;
    for &ctx in &contexts {
        let prompt = random_tokens(ctx, vocab, 2);
        let tok_s = decode_tok_s(&base, &prompt, 16)?;
        println!("{{\"model\":\"softmax\",\"threads\":{threads},\"context\":{ctx},\"decode_tok_s\":{tok_s:.2}}}");
    }
    let liger = linearize(base, LigerOptions::default(), LoraOptions::default())?;
    for &ctx in &contexts {
        let prompt = random_tokens(ctx, vocab, 2);
        let tok_s = decode_tok_s(&liger, &prompt, 16)?;
        println!(
            "{{\"model\":\"liger-gla\",\"threads\":{threads},\"context\":{ctx},\"decode_tok_s\":{tok_s:.2},\"state_bytes\":{}}}",
            liger.state_bytes()
        );
    }
    let inputs = random_tokens(seq_len, vocab, 3);
    let labels = random_tokens(seq_len, vocab, 4);
    let mut grads = liger.new_lora_grads();
    liger.forward_backward(&inputs, &labels, 1.0, &mut grads)?; // warm-up
    let steps = 3;
    let t = Instant::now();
    for _ in 0..steps {
        liger.forward_backward(&inputs, &labels, 1.0, &mut grads)?;
    }
    let tok_s = (steps * seq_len) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"model\":\"liger-gla\",\"threads\":{threads},\"train_seq_len\":{seq_len},\"train_tok_s\":{tok_s:.1}}}"
    );
    Ok(())
}
