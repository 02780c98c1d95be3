//! The default model (SmolLM2-135M-Instruct, Q4_1) converted with the default options.

use crate::convert::{linearize, LigerOptions, LoraOptions};
use crate::generate::{generate, CausalLm, GenerateOptions};
use crate::model::load_model;
use crate::testing::default_model_path;
use std::sync::atomic::AtomicBool;

#[test]
fn default_model_converts_decodes_and_generates() {
    let base = load_model(&default_model_path(), &mut |_, _| {}).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(12);
    let tokens: Vec<u32> = base.encode(&text, None, false).unwrap().into_iter().take(100).collect();
    assert_eq!(tokens.len(), 100);
    let model = linearize(base, LigerOptions::default(), LoraOptions::default()).unwrap();
    let vocab = model.config().vocab_size;
    let logits = model.all_logits(&tokens).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");

    // Prefill 60 tokens, then 40 single steps, against the parallel form.
    let mut state = model.new_state();
    let mut got = model.forward_last(&mut state, &tokens[..60]).unwrap();
    let bytes_at_70 = {
        for &id in &tokens[60..70] {
            got.extend(model.forward_last(&mut state, &[id]).unwrap());
        }
        state.bytes()
    };
    for &id in &tokens[70..] {
        got.extend(model.forward_last(&mut state, &[id]).unwrap());
    }
    let want = &logits[59 * vocab..];
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let diff = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    println!("default model: prefill 60 + 40 steps vs all_logits, max rel err {:.2e}", diff / scale);
    assert!(diff / scale < 1e-4);
    println!(
        "state bytes after 70 tokens {bytes_at_70}, after 100 {}, state_bytes() {}",
        state.bytes(),
        model.state_bytes()
    );
    assert_eq!(state.bytes(), bytes_at_70, "the state must not grow once the window is full");
    assert_eq!(state.bytes(), model.state_bytes());
    assert_eq!(model.max_tokens(), None);

    let opts = GenerateOptions { max_tokens: 8, ignore_eos: true, ..Default::default() };
    let out = generate(&model, &tokens[..20], &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    println!("greedy continuation: {:?}", out.text);
    assert_eq!(out.tokens.len(), 8);
}
