//! Tests of the converted model: forward against a float64 model written from the
//! definitions, decoding against the parallel form, gradients against finite differences of
//! the float64 model, typed errors, and the real default model.

mod attention_transfer;
mod backward;
mod errors;
mod forward;
mod real_model;
mod reference;

use super::{linearize, LigerModel, LigerOptions, LoraOptions, LoraTarget};
use crate::config::{Architecture, ModelConfig};
use crate::liger::{LigerAttentionConfig, MixerConfig, MixerKind};
use crate::model::{BaseModel, ModelFormat};
use crate::testing::{random_weights, tiny_config};
use crate::tokenizer::Tokenizer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A generator seeded from the clock (printed, so a failure can be replayed).
pub(super) fn rng() -> SmallRng {
    let seed = std::env::var("LIGER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("seed {seed} (set LIGER_TEST_SEED to replay)");
    SmallRng::seed_from_u64(seed)
}

/// A word-level tokenizer with one token per id ("t0", "t1", ...), enough to decode.
fn tiny_tokenizer(vocab: usize) -> Tokenizer {
    let entries: Vec<String> = (0..vocab).map(|i| format!("\"t{i}\": {i}")).collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {{"type": "WhitespaceSplit"}}, "post_processor": null, "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "t0"}}}}"#,
        entries.join(", ")
    );
    Tokenizer::from_json(json.as_bytes(), "tiny tokenizer").expect("a valid tokenizer.json")
}

/// A tiny random base model.
pub(super) fn tiny_base(cfg: &ModelConfig, seed: u64) -> BaseModel {
    let weights = random_weights(cfg, seed);
    BaseModel::new(cfg.clone(), weights, tiny_tokenizer(cfg.vocab_size), None, "tiny".into(), ModelFormat::Checkpoint)
}

/// Liger attention with `kind`, a window of `window_keys` and slot counts that fit head size 8.
pub(super) fn attention(kind: MixerKind, window_keys: usize) -> LigerAttentionConfig {
    let mixer = MixerConfig { kind, gsa_slots: 4, ..MixerConfig::default() };
    LigerAttentionConfig { mixer, window_keys, ..LigerAttentionConfig::default() }
}

/// A tiny converted model (Llama layout) whose adapters on every target have random,
/// non-zero B, so that every LoRA path changes the output.
pub(super) fn tiny_model(
    rng: &mut SmallRng,
    attention: LigerAttentionConfig,
    softmax_layers: Vec<usize>,
    arch: Architecture,
) -> LigerModel {
    let cfg = tiny_config(arch);
    let base = tiny_base(&cfg, rng.random());
    let lora = LoraOptions { rank: 2, alpha: 4.0, targets: LoraTarget::ALL.to_vec(), seed: rng.random() };
    let mut model =
        linearize(base, LigerOptions { attention, softmax_layers, head_mix: Vec::new() }, lora).expect("valid options");
    for p in model.lora_params_mut() {
        p.iter_mut().for_each(|x| *x = rng.random_range(-0.4..0.4));
    }
    model
}

/// `max |got - want| / max |want|`, asserting the inputs are usable.
pub(super) fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "compared tensors differ in size");
    assert!(got.iter().all(|x| x.is_finite()), "result holds non-finite values");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "the reference is all zeros: the inputs do not exercise the model");
    got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs())) / scale
}
