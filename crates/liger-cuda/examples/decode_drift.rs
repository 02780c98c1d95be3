//! How far a decode state whose mixer states were kept in bf16 drifts from the f32 one: two
//! states of the same model take the same prompt and then the same tokens (the f32 state's
//! greedy choice) for `--steps` steps; after every call the second state's mixer states are
//! rounded to bf16. Prints one JSON line per model: the largest relative difference of the
//! logits (to the largest logit), at the first and last hundred steps, and how many steps
//! chose another greedy token.
//!
//!     cargo run -p liger-cuda --release --example decode_drift -- --models tiny,135m --steps 1000
//!
//! Models: random weights (scaled like a trained model's) of a tiny shape (2 layers, 4/2 heads
//! of 32) and of SmolLM2-135M's shape, converted with the default options, weights in bf16.

use half::bf16;
use liger_core::config::{Architecture, ModelConfig};
use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::model::{BaseModel, ModelFormat};
use liger_core::testing::{random_tokens, random_weights, tiny_config};
use liger_core::tokenizer::Tokenizer;
use liger_core::Result;
use liger_cuda::{GpuContext, GpuLigerModel};

fn config(name: &str) -> Option<ModelConfig> {
    let tiny = ModelConfig { hidden_size: 64, num_heads: 4, num_kv_heads: 2, head_dim: 32, intermediate_size: 96, vocab_size: 257, ..tiny_config(Architecture::Llama) };
    match name {
        "tiny" => Some(tiny),
        "135m" => Some(ModelConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            max_position_embeddings: 8192,
            ..tiny
        }),
        _ => None,
    }
}

fn model(name: &str) -> Result<GpuLigerModel<bf16>> {
    let cfg = config(name).ok_or_else(|| liger_core::Error::invalid_argument(format!("unknown model {name}; known: tiny, 135m")))?;
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
    let tokenizer = Tokenizer::from_json(json.as_bytes(), "drift tokenizer")?;
    let base = BaseModel::new(cfg.clone(), random_weights(&cfg, 11), tokenizer, None, name.into(), ModelFormat::Checkpoint);
    let host = linearize(base, LigerOptions::default(), LoraOptions::default())?;
    GpuLigerModel::new(GpuContext::new(0)?, host)
}

fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold(0, |best, (i, &v)| if v > x[best] { i } else { best })
}

fn drift(name: &str, steps: usize) -> Result<String> {
    let m = model(name)?;
    let vocab = m.config().vocab_size;
    let (mut exact, mut rounded) = (m.new_batch_state(1), m.new_batch_state(1));
    let prompt = random_tokens(16, vocab, 5);
    let mut a = m.forward_last_batch(&mut exact, &[&prompt])?;
    let mut b = m.forward_last_batch(&mut rounded, &[&prompt])?;
    m.round_mixer_states_to_bf16(&mut rounded)?;
    let (mut worst, mut first_100, mut last_100, mut changed) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for step in 0..steps {
        let err = liger_core::testing::max_rel_error(&b, &a.iter().map(|&v| v as f64).collect::<Vec<_>>());
        worst = worst.max(err);
        if step < 100 {
            first_100 = first_100.max(err);
        }
        if step + 100 >= steps {
            last_100 = last_100.max(err);
        }
        let token = argmax(&a);
        changed += usize::from(argmax(&b) != token);
        a = m.forward_last_batch(&mut exact, &[&[token as u32]])?;
        b = m.forward_last_batch(&mut rounded, &[&[token as u32]])?;
        m.round_mixer_states_to_bf16(&mut rounded)?;
    }
    Ok(format!(
        r#"{{"bench":"bf16_state_drift","model":"{name}","steps":{steps},"max_rel_logit_diff":{worst:.3e},"first_100_steps":{first_100:.3e},"last_100_steps":{last_100:.3e},"greedy_token_changed_steps":{changed}}}"#
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map_or(default.to_string(), |s| s.clone());
    let steps: usize = value("--steps", "1000").parse().unwrap_or(1000);
    for name in value("--models", "tiny,135m").split(',').filter(|s| !s.is_empty()) {
        match drift(name, steps) {
            Ok(line) => println!("{line}"),
            Err(e) => println!(r#"{{"bench":"bf16_state_drift","model":"{name}","error":"{}"}}"#, e.message.replace('"', "'")),
        }
    }
}
