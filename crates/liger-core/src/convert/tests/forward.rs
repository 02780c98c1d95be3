//! The f32 forward against the f64 model, decoding against the parallel form, generation.

use super::reference::RefModel;
use super::{attention, rel_err, rng, tiny_base, tiny_model};
use crate::config::Architecture;
use crate::convert::{linearize, LigerOptions, LigerState, LoraOptions};
use crate::generate::{generate, CausalLm, GenerateOptions};
use crate::liger::MixerKind;
use crate::testing::{random_tokens, tiny_config};
use rand::Rng;
use std::sync::atomic::AtomicBool;

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn forward_matches_f64_for_every_mixer_and_the_hybrid() {
    let mut rng = rng();
    let mut cases: Vec<(String, crate::convert::LigerModel)> = MixerKind::ALL
        .iter()
        .map(|&kind| (kind.name().to_string(), tiny_model(&mut rng, attention(kind, 8), vec![], Architecture::Llama)))
        .collect();
    cases.push(("hybrid gla".into(), tiny_model(&mut rng, attention(MixerKind::Gla, 8), vec![1], Architecture::Llama)));
    cases.push((
        "qwen2 biases".into(),
        tiny_model(&mut rng, attention(MixerKind::Gla, 65), vec![0], Architecture::Qwen2),
    ));
    cases.push((
        "qwen3 q/k norms".into(),
        tiny_model(&mut rng, attention(MixerKind::Rwkv6, 65), vec![1], Architecture::Qwen3),
    ));
    let mut no_swa = attention(MixerKind::Gla, 8);
    no_swa.use_swa = false;
    cases.push(("gla without swa".into(), tiny_model(&mut rng, no_swa, vec![], Architecture::Mistral)));
    for (name, model) in &cases {
        // 100 tokens: more than one chunk of 64 and many windows.
        let tokens = random_tokens(100, model.config().vocab_size, rng.random());
        let got = model.all_logits(&tokens).unwrap();
        let reference = RefModel::new(model);
        let want = reference.logits(&reference.params(), &tokens);
        let e = rel_err(&got, &want);
        let last = model.last_logits(&tokens).unwrap();
        let e_last = rel_err(&last, &want[want.len() - last.len()..]);
        println!("{name}: all_logits vs f64 max rel err {e:.2e}, last_logits {e_last:.2e}");
        assert!(e < 1e-4 && e_last < 1e-4, "{name}: {e:.2e} / {e_last:.2e}");
    }
}

/// Prefill of `prefill` tokens, then single steps, against the rows of one parallel forward.
fn decode_error(model: &crate::convert::LigerModel, tokens: &[u32], prefill: usize) -> f64 {
    let vocab = model.config().vocab_size;
    let want = f64s(&model.all_logits(tokens).unwrap());
    let mut state = model.new_state();
    let mut got = model.forward_last(&mut state, &tokens[..prefill]).unwrap();
    for &id in &tokens[prefill..] {
        got.extend(model.forward_last(&mut state, &[id]).unwrap());
    }
    assert_eq!(state.len(), tokens.len());
    rel_err(&got, &want[(prefill - 1) * vocab..])
}

#[test]
fn prefill_then_steps_equals_the_parallel_form() {
    let mut rng = rng();
    let steps = 5;
    let mut worst = 0.0f64;
    for window in [1, 4, 65] {
        for kind in [MixerKind::Gla, MixerKind::Gsa] {
            let model = tiny_model(&mut rng, attention(kind, window), vec![], Architecture::Llama);
            for prefill in [1, 3, 4, 5, 63, 64, 65, 66, 70] {
                let tokens = random_tokens(prefill + steps, model.config().vocab_size, rng.random());
                let e = decode_error(&model, &tokens, prefill);
                println!("{} window {window}, prefill {prefill} + {steps} steps: max rel err {e:.2e}", kind.name());
                worst = worst.max(e);
                assert!(e < 1e-4, "window {window} prefill {prefill}: {e:.2e}");
            }
        }
    }
    let hybrid = tiny_model(&mut rng, attention(MixerKind::Retention, 4), vec![0], Architecture::Qwen3);
    for prefill in [2, 64, 67] {
        let tokens = random_tokens(prefill + steps, hybrid.config().vocab_size, rng.random());
        let e = decode_error(&hybrid, &tokens, prefill);
        println!("hybrid, prefill {prefill} + {steps} steps: max rel err {e:.2e}");
        worst = worst.max(e);
        assert!(e < 1e-4);
    }
    // Several multi-token calls in a row continue the state as well.
    let model = tiny_model(&mut rng, attention(MixerKind::Mamba2, 4), vec![1], Architecture::Llama);
    let tokens = random_tokens(90, model.config().vocab_size, rng.random());
    let want = f64s(&model.all_logits(&tokens).unwrap());
    let mut state = LigerState::default();
    let vocab = model.config().vocab_size;
    for (a, b) in [(0, 30), (30, 31), (31, 90)] {
        let got = model.forward_last(&mut state, &tokens[a..b]).unwrap();
        let e = rel_err(&got, &want[(b - 1) * vocab..b * vocab]);
        println!("chunked prefill up to {b}: max rel err {e:.2e}");
        assert!(e < 1e-4);
    }
    println!("worst decoding error {worst:.2e}");
}

#[test]
fn all_softmax_hybrid_with_fresh_adapters_is_the_base_model() {
    let mut rng = rng();
    let cfg = tiny_config(Architecture::Qwen2);
    let base = tiny_base(&cfg, rng.random());
    let tokens = random_tokens(40, cfg.vocab_size, rng.random());
    let want = f64s(&base.all_logits(&tokens).unwrap());
    let options = LigerOptions::with_softmax_every(1, cfg.num_layers).unwrap();
    let model = linearize(base, options, LoraOptions::default()).unwrap();
    let e = rel_err(&model.all_logits(&tokens).unwrap(), &want);
    println!("every layer softmax, B = 0: max rel err vs the base model {e:.2e}");
    assert!(e < 1e-4);
}

#[test]
fn generation_runs_with_constant_memory() {
    let mut rng = rng();
    let model = tiny_model(&mut rng, attention(MixerKind::Gla, 4), vec![], Architecture::Llama);
    assert_eq!(model.max_tokens(), None);
    let prompt = random_tokens(7, model.config().vocab_size, rng.random());
    let opts = GenerateOptions { max_tokens: 300, ignore_eos: true, ..Default::default() };
    let mut streamed = 0;
    let out = generate(&model, &prompt, &opts, &AtomicBool::new(false), &mut |_, _| streamed += 1).unwrap();
    assert_eq!(out.tokens.len(), 300, "more tokens than the base context of 256: no limit without softmax layers");
    assert_eq!(streamed, 300);
    // Greedy decoding picked the argmax of the parallel form at every step.
    let mut seq = prompt.clone();
    seq.extend(&out.tokens[..20]);
    let logits = model.all_logits(&seq).unwrap();
    let vocab = model.config().vocab_size;
    for (i, &id) in out.tokens[..20].iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + i) * vocab..(prompt.len() + i) * vocab];
        let best = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
        assert_eq!(best as u32, id, "step {i}");
    }
    // The state stops growing once the window is full.
    let mut state = model.new_state();
    model.forward_last(&mut state, &random_tokens(10, vocab, 1)).unwrap();
    let after_10 = state.bytes();
    model.forward_last(&mut state, &random_tokens(200, vocab, 2)).unwrap();
    println!(
        "state bytes after 10 tokens {after_10}, after 210 {}, state_bytes() {}",
        state.bytes(),
        model.state_bytes()
    );
    assert_eq!(state.bytes(), after_10);
    assert_eq!(state.bytes(), model.state_bytes());
    let hybrid = tiny_model(&mut rng, attention(MixerKind::Gla, 4), vec![0], Architecture::Llama);
    assert_eq!(hybrid.max_tokens(), Some(hybrid.config().max_position_embeddings));
    assert!(hybrid.state_bytes() > model.state_bytes());
}
