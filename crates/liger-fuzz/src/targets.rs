//! The fuzz targets: every reader of input a user may get from elsewhere. Each takes raw
//! bytes; any `Err` is a correct answer, a panic, an abort or a hang is a defect.

use liger_core::bundle::{bundle_bytes, load_bundle, EdgeQuant};
use liger_core::chat::{render_chat, ChatMessage, CHATML_TEMPLATE};
use liger_core::config::Architecture;
use liger_core::convert::{linearize, LigerOptions, LoraOptions};
use liger_core::gguf::{load_gguf_model, GgufFile, GgufValue, GgufWriter};
use liger_core::hf::{config_to_json, parse_config, safetensors_to_bytes, SafetensorsFile, SaveDtype};
use liger_core::model::{BaseModel, ModelFormat};
use liger_core::testing::{random_weights, tiny_config};
use liger_core::tokenizer::Tokenizer;
use liger_core::train::data::{parse_records, BadRows, Dataset};
use std::path::Path;
use std::sync::Arc;

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

pub const TARGETS: [Target; 7] = [
    Target { name: "gguf", run: gguf, seeds: gguf_seeds },
    Target { name: "safetensors", run: safetensors, seeds: safetensors_seeds },
    Target { name: "hf_config", run: hf_config, seeds: hf_config_seeds },
    Target { name: "tokenizer_json", run: tokenizer_json, seeds: tokenizer_json_seeds },
    Target { name: "bundle", run: bundle, seeds: bundle_seeds },
    Target { name: "chat_template", run: chat_template, seeds: chat_template_seeds },
    Target { name: "training_data", run: training_data, seeds: training_data_seeds },
];

/// GGUF reader, model loader and the tokenizer in its metadata; a model that loads is run
/// for a few tokens.
fn gguf(bytes: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(bytes.to_vec(), "fuzz.gguf") else { return };
    let Ok((config, weights)) = load_gguf_model(&file) else { return };
    let _ = weights.check_finite();
    let Ok(tokenizer) = Tokenizer::from_gguf(&file) else { return };
    let ids = tokenizer.encode("Hello, <s> world", true, true).unwrap_or_default();
    let _ = tokenizer.decode(&ids, false);
    let model = BaseModel::new(config, weights, tokenizer, None, "fuzz".into(), ModelFormat::Gguf);
    let _ = model.all_logits(&[0, 1, 2]);
}

fn safetensors(bytes: &[u8]) {
    let Ok(file) = SafetensorsFile::from_bytes(bytes.to_vec(), "fuzz.safetensors") else { return };
    for name in file.names().to_vec() {
        let _ = file.tensor_f32(&name);
    }
}

fn hf_config(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = parse_config(text, "config.json");
    }
}

fn tokenizer_json(bytes: &[u8]) {
    if let Ok(t) = Tokenizer::from_json(bytes, "tokenizer.json") {
        let ids = t.encode("Hello, <s> world", true, true).unwrap_or_default();
        let _ = t.decode(&ids, false);
    }
}

fn bundle(bytes: &[u8]) {
    if let Ok(model) = load_bundle(Arc::new(bytes.to_vec())) {
        let _ = model.all_logits(&[0, 1, 2]);
    }
}

fn chat_template(bytes: &[u8]) {
    if let Ok(template) = std::str::from_utf8(bytes) {
        let messages = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
        let _ = render_chat(template, &messages, true, "<s>", "</s>");
    }
}

fn training_data(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        for bad_rows in [BadRows::Fail, BadRows::Skip] {
            let _ = parse_records(text, Path::new("data.jsonl"), bad_rows, &mut Dataset::default());
        }
    }
}

// ---- seeds: small valid inputs of each format --------------------------------------------

/// GPT-2's byte-to-character map: the 256 tokens of a byte-level BPE vocabulary.
fn byte_level_tokens() -> Vec<String> {
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    let cfg = liger_core::ModelConfig { vocab_size: 259, ..tiny_config(Architecture::Llama) };
    let w = random_weights(&cfg, 7);
    let mut g = GgufWriter::new();
    let s = |v: &str| GgufValue::String(v.into());
    let u = |v: usize| GgufValue::U32(v as u32);
    g.add_metadata("general.architecture", s("llama"));
    g.add_metadata("llama.block_count", u(cfg.num_layers));
    g.add_metadata("llama.embedding_length", u(cfg.hidden_size));
    g.add_metadata("llama.feed_forward_length", u(cfg.intermediate_size));
    g.add_metadata("llama.attention.head_count", u(cfg.num_heads));
    g.add_metadata("llama.attention.head_count_kv", u(cfg.num_kv_heads));
    g.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
    g.add_metadata("llama.context_length", u(64));
    g.add_metadata("llama.rope.dimension_count", u(cfg.head_dim));
    let mut tokens: Vec<GgufValue> = byte_level_tokens().into_iter().map(GgufValue::String).collect();
    for special in ["<s>", "</s>", "He"] {
        tokens.push(s(special));
    }
    g.add_metadata("tokenizer.ggml.model", s("gpt2"));
    g.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(tokens));
    g.add_metadata("tokenizer.ggml.merges", GgufValue::Array(vec![s("H e")]));
    g.add_metadata("tokenizer.ggml.bos_token_id", u(256));
    g.add_metadata("tokenizer.ggml.eos_token_id", u(257));
    g.add_metadata("tokenizer.chat_template", s(CHATML_TEMPLATE));
    let mut add = |name: &str, t: &liger_core::QTensor| g.add_qtensor(name, t).expect("a valid tensor");
    add("token_embd.weight", &w.embed);
    for (i, l) in w.layers.iter().enumerate() {
        for (name, t) in [
            ("attn_q", &l.wq),
            ("attn_k", &l.wk),
            ("attn_v", &l.wv),
            ("attn_output", &l.wo),
            ("ffn_gate", &l.w_gate),
            ("ffn_up", &l.w_up),
            ("ffn_down", &l.w_down),
        ] {
            add(&format!("blk.{i}.{name}.weight"), t);
        }
    }
    for (i, l) in w.layers.iter().enumerate() {
        g.add_f32(&format!("blk.{i}.attn_norm.weight"), &[l.attn_norm.len() as u64], &l.attn_norm).unwrap();
        g.add_f32(&format!("blk.{i}.ffn_norm.weight"), &[l.ffn_norm.len() as u64], &l.ffn_norm).unwrap();
    }
    g.add_f32("output_norm.weight", &[w.final_norm.len() as u64], &w.final_norm).unwrap();
    vec![g.to_bytes().expect("a tiny GGUF")]
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let b = [1.0f32, -2.0];
    let tensors = [
        ("a".to_string(), vec![3, 4], SaveDtype::F32, a.as_slice()),
        ("b".to_string(), vec![2], SaveDtype::BF16, b.as_slice()),
        ("c".to_string(), vec![2, 1], SaveDtype::F16, b.as_slice()),
    ];
    vec![safetensors_to_bytes(&tensors, None).expect("a tiny safetensors file")]
}

fn hf_config_seeds() -> Vec<Vec<u8>> {
    [Architecture::Llama, Architecture::Qwen3]
        .into_iter()
        .map(|a| serde_json::to_vec_pretty(&config_to_json(&tiny_config(a), None)).unwrap())
        .collect()
}

fn tokenizer_json_seeds() -> Vec<Vec<u8>> {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_level_tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .chain([("He".to_string(), serde_json::json!(256))])
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 257, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": ["H e"]}
    });
    vec![serde_json::to_vec(&json).unwrap()]
}

fn bundle_seeds() -> Vec<Vec<u8>> {
    let tokenizer_json = tokenizer_json_seeds().remove(0);
    let cfg = liger_core::ModelConfig { vocab_size: 258, ..tiny_config(Architecture::Llama) };
    let tokenizer = Tokenizer::from_json(&tokenizer_json, "seed").expect("the seed tokenizer");
    let base = BaseModel::new(
        cfg.clone(),
        random_weights(&cfg, 3),
        tokenizer,
        Some(CHATML_TEMPLATE.into()),
        "seed".into(),
        ModelFormat::Checkpoint,
    );
    let model = linearize(base, LigerOptions::default(), LoraOptions::default()).expect("a tiny Liger model");
    [EdgeQuant::F32, EdgeQuant::Int8].into_iter().map(|q| bundle_bytes(&model, q).expect("a tiny bundle")).collect()
}

fn chat_template_seeds() -> Vec<Vec<u8>> {
    [
        CHATML_TEMPLATE,
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content.strip() + ' [/INST]' }}{% elif m.role == 'system' %}{{ raise_exception('no system') }}{% else %}{{ m.content + eos_token }}{% endif %}{% endfor %}",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

fn training_data_seeds() -> Vec<Vec<u8>> {
    vec![
        b"[{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hi\"}, {\"instruction\": \"Add\", \"input\": \"1+1\", \"output\": \"2\"}]".to_vec(),
        b"{\"text\": \"plain text\"}\n{\"instruction\": \"i\", \"output\": \"o\"}\n".to_vec(),
    ]
}
