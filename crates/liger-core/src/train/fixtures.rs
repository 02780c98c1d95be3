//! Small models for tests of training, checkpoints and the linearize job: a byte-level
//! tokenizer (any text encodes) and a tiny random Llama over it.

use crate::config::{Architecture, ModelConfig};
use crate::model::{BaseModel, ModelFormat};
use crate::testing::{random_weights, tiny_config};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

pub const BOS: u32 = 0;
pub const EOS: u32 = 1;
/// `<s>`, `</s>`, then the 256 bytes.
pub const BYTE_VOCAB: usize = 258;

/// The printable character GPT-2's byte-level BPE writes for each byte.
fn byte_char(b: u8) -> char {
    let printable = |c: u32| (0x21..=0x7e).contains(&c) || (0xa1..=0xac).contains(&c) || (0xae..=0xff).contains(&c);
    if printable(b as u32) {
        return char::from(b);
    }
    let rank = (0..b as u32).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).expect("a valid code point")
}

/// A byte-level BPE `tokenizer.json` with no merges: one token per byte, plus BOS and EOS.
pub fn byte_tokenizer_json() -> String {
    let mut vocab = Map::new();
    vocab.insert("<s>".into(), json!(BOS));
    vocab.insert("</s>".into(), json!(EOS));
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b as u32 + 2));
    }
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tok: Value = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(BOS, "<s>"), special(EOS, "</s>")],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    tok.to_string()
}

pub fn byte_tokenizer() -> Tokenizer {
    Tokenizer::from_json(byte_tokenizer_json().as_bytes(), "byte tokenizer")
        .and_then(|t| t.with_special_ids(Some(BOS), Some(EOS), true))
        .expect("a valid tokenizer")
}

pub fn byte_config() -> ModelConfig {
    ModelConfig {
        vocab_size: BYTE_VOCAB,
        bos_token_id: Some(BOS),
        eos_token_ids: vec![EOS],
        max_position_embeddings: 512,
        ..tiny_config(Architecture::Llama)
    }
}

/// A tiny random Llama over the byte tokenizer, f32 weights.
pub fn tiny_byte_model(seed: u64) -> BaseModel {
    let cfg = byte_config();
    let weights = random_weights(&cfg, seed);
    BaseModel::new(cfg, weights, byte_tokenizer(), None, "tiny-bytes".into(), ModelFormat::Checkpoint)
}
