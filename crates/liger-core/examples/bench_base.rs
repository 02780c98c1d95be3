//! CPU prefill and decode speed of the base model.
//! `cargo run --release -p liger-core --example bench_base -- [model.gguf] [prompt_tokens] [decode_tokens]`
//! Prints one JSON line.

use liger_core::generate::CausalLm;
use liger_core::model::load_model;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(std::path::PathBuf::from).unwrap_or_else(liger_core::testing::default_model_path);
    let prompt_len: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let decode_len: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let model = load_model(&path, &mut |_, _| {})?;
    let prompt = liger_core::testing::random_tokens(prompt_len, model.config.vocab_size, 1);
    let mut state = model.new_state();
    let t0 = Instant::now();
    let mut logits = model.forward_last(&mut state, &prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..decode_len {
        let next = liger_core::sampling::argmax(&logits);
        logits = model.forward_last(&mut state, &[next])?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    println!(
        "{{\"engine\":\"liger-cpu\",\"threads\":{},\"prompt_tokens\":{prompt_len},\"prefill_tok_s\":{:.1},\"decode_tokens\":{decode_len},\"decode_tok_s\":{:.2}}}",
        rayon::current_num_threads(),
        prompt_len as f64 / prefill_s,
        decode_len as f64 / decode_s
    );
    Ok(())
}
