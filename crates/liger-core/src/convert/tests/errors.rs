//! Bad options and bad inputs end in typed errors that name what to fix.

use super::{attention, rng, tiny_base, tiny_model};
use crate::config::Architecture;
use crate::convert::{linearize, LigerOptions, LigerState, LoraOptions, LoraTarget};
use crate::error::{Error, ErrorCode};
use crate::generate::CausalLm;
use crate::liger::MixerKind;
use crate::nn::loss::IGNORE;
use crate::testing::{random_tokens, tiny_config};
use rand::Rng;

fn expect(result: Result<impl Sized, Error>, code: ErrorCode, words: &str) {
    match result {
        Ok(_) => panic!("expected a {code} error mentioning {words:?}"),
        Err(e) => {
            println!("{}: {}", e.code, e.message);
            assert_eq!(e.code, code, "{}", e.message);
            assert!(e.message.contains(words), "{:?} should mention {words:?}", e.message);
        }
    }
}

#[test]
fn invalid_options_are_rejected_by_name() {
    let cfg = tiny_config(Architecture::Llama);
    let ok = LigerOptions::default();
    let check = |o: LigerOptions, words: &str| expect(o.validate(&cfg), ErrorCode::InvalidArgument, words);
    check(LigerOptions { attention: attention(MixerKind::Gla, 0), ..ok.clone() }, "window_keys");
    let mut a = ok.attention;
    a.alpha = f32::NAN;
    check(LigerOptions { attention: a, ..ok.clone() }, "alpha");
    a.alpha = 0.5;
    a.beta = f32::INFINITY;
    check(LigerOptions { attention: a, ..ok.clone() }, "beta");
    check(LigerOptions { softmax_layers: vec![2], ..ok.clone() }, "the model has 2 layers");
    check(LigerOptions { softmax_layers: vec![1, 1], ..ok.clone() }, "listed twice");
    check(
        LigerOptions {
            attention: crate::liger::LigerAttentionConfig {
                mixer: crate::liger::MixerConfig::new(MixerKind::Gsa),
                ..Default::default()
            },
            ..ok.clone()
        },
        "gsa_slots",
    );
    expect(LigerOptions::with_softmax_every(0, 4), ErrorCode::InvalidArgument, "softmax_every");
    assert_eq!(LigerOptions::with_softmax_every(8, 30).unwrap().softmax_layers, vec![7, 15, 23]);
    assert!(ok.validate(&cfg).is_ok());

    let lora = LoraOptions::default();
    expect(LoraOptions { rank: 0, ..lora.clone() }.validate(), ErrorCode::InvalidArgument, "rank");
    expect(LoraOptions { alpha: f32::NAN, ..lora.clone() }.validate(), ErrorCode::InvalidArgument, "alpha");
    expect(
        LoraOptions { targets: vec![LoraTarget::Q, LoraTarget::O, LoraTarget::Q], ..lora.clone() }.validate(),
        ErrorCode::InvalidArgument,
        "q_proj is listed twice",
    );
    // linearize checks both.
    expect(
        linearize(tiny_base(&cfg, 1), LigerOptions { softmax_layers: vec![5], ..ok }, lora.clone()),
        ErrorCode::InvalidArgument,
        "softmax_layers",
    );
    expect(
        linearize(tiny_base(&cfg, 1), LigerOptions::default(), LoraOptions { rank: 0, ..lora.clone() }),
        ErrorCode::InvalidArgument,
        "rank",
    );
    // A rank that would size adapters from the option alone (100000 x hidden) is refused first.
    expect(
        linearize(tiny_base(&cfg, 1), LigerOptions::default(), LoraOptions { rank: 100_000, ..lora.clone() }),
        ErrorCode::InvalidArgument,
        "smaller rank",
    );
    assert!(linearize(
        tiny_base(&cfg, 1),
        LigerOptions::default(),
        LoraOptions { rank: cfg.hidden_size.min(cfg.kv_size()), ..lora }
    )
    .is_ok());
}

#[test]
fn options_read_from_json() {
    let o: LigerOptions =
        serde_json::from_str(r#"{"softmaxLayers": [3], "attention": {"window_keys": 64, "mixer": {"kind": "hgrn2"}}}"#)
            .unwrap();
    assert_eq!(o.softmax_layers, vec![3]);
    assert_eq!(o.attention.window_keys, 64);
    assert_eq!(o.attention.mixer.kind, MixerKind::Hgrn2);
    let l: LoraOptions = serde_json::from_str(r#"{"rank": 4, "targets": ["q", "o_proj"]}"#).unwrap();
    assert_eq!((l.rank, l.alpha, l.targets), (4, 8.0, vec![LoraTarget::Q, LoraTarget::O]));
}

#[test]
fn bad_inputs_give_typed_errors() {
    let mut rng = rng();
    let model = tiny_model(&mut rng, attention(MixerKind::Gla, 4), vec![1], Architecture::Llama);
    let vocab = model.config().vocab_size as u32;
    expect(model.all_logits(&[]), ErrorCode::InvalidArgument, "at least one token");
    expect(model.all_logits(&[3, vocab]), ErrorCode::InvalidArgument, "outside the vocabulary");
    let mut grads = model.new_lora_grads();
    expect(model.forward_backward(&[1, 2, 3], &[2, 3], 1.0, &mut grads), ErrorCode::InvalidArgument, "equally long");
    expect(model.forward_backward(&[1, 2], &[IGNORE, vocab], 1.0, &mut grads), ErrorCode::InvalidArgument, "label");
    expect(model.loss(&[1, 2], &[vocab + 5, 1]), ErrorCode::InvalidArgument, "label");
    let other = tiny_model(&mut rng, attention(MixerKind::Gla, 4), vec![], Architecture::Llama);
    let mut no_o = other.new_lora_grads();
    no_o.layers[0][3] = None;
    expect(model.forward_backward(&[1, 2], &[2, 3], 1.0, &mut no_o), ErrorCode::ShapeMismatch, "new_lora_grads");
    // A state of the other model (its layer 1 is not softmax attention).
    let mut state = LigerState::default();
    other.forward_last(&mut state, &[1, 2]).unwrap();
    expect(model.forward_last(&mut state, &[3]), ErrorCode::ShapeMismatch, "new_state");
    // The hybrid's softmax layers bound the context.
    let limit = model.config().max_position_embeddings;
    let mut state = model.new_state();
    model.forward_last(&mut state, &random_tokens(limit, vocab as usize, rng.random())).unwrap();
    expect(model.forward_last(&mut state, &[1]), ErrorCode::ContextOverflow, "context");
    // Options edited after conversion are checked on use.
    let mut edited = other;
    edited.options.attention.window_keys = 0;
    expect(edited.all_logits(&[1]), ErrorCode::InvalidArgument, "window_keys");
    edited.options.attention.window_keys = 4;
    edited.lora.layers[1].q.as_mut().unwrap().b.pop();
    expect(edited.all_logits(&[1]), ErrorCode::ShapeMismatch, "q_proj");
}
