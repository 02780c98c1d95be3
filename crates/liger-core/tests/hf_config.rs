//! config.json parsing against the published configs of real checkpoints, the defaults of
//! transformers, writing back, and every kind of bad input.

use liger_core::config::Llama3RopeScaling;
use liger_core::hf::{config_to_json, parse_config};
use liger_core::{Architecture, ErrorCode, ModelConfig};
use serde_json::json;

const LLAMA_3_2_1B: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001,
  "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256
}"#;

const SMOLLM2_135M: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192,
  "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
  "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
  "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
  "use_cache": true, "vocab_size": 49152
}"#;

const MISTRAL_7B: &str = r#"{
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
  "use_cache": true, "vocab_size": 32000
}"#;

const QWEN2_5_0_5B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
  "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
  "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
  "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
  "use_mrope": false, "use_sliding_window": false, "vocab_size": 151936
}"#;

const QWEN3_0_6B: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
  "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
}"#;

fn parse(text: &str) -> ModelConfig {
    parse_config(text, "config.json").unwrap_or_else(|e| panic!("parse failed: {e}"))
}

#[test]
fn llama_3_2_1b() {
    let c = parse(LLAMA_3_2_1B);
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers), (128256, 2048, 8192, 16));
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 64));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (500000.0, 1e-5, 131072));
    assert_eq!(
        c.rope_scaling,
        Some(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(128000), vec![128001]));
}

#[test]
fn smollm2_135m() {
    let c = parse(SMOLLM2_135M);
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers), (49152, 576, 1536, 30));
    // No head_dim key: hidden / heads.
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (100000.0, 1e-5, 8192));
    assert_eq!(c.rope_scaling, None);
    assert!(c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
}

#[test]
fn mistral_7b() {
    let c = parse(MISTRAL_7B);
    assert_eq!(c.architecture, Architecture::Mistral);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers), (32000, 4096, 14336, 32));
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (10000.0, 1e-5, 32768));
    assert!(!c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
}

#[test]
fn qwen2_5_0_5b() {
    let c = parse(QWEN2_5_0_5B);
    assert_eq!(c.architecture, Architecture::Qwen2);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers), (151936, 896, 4864, 24));
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (14, 2, 64));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (1e6, 1e-6, 32768));
    assert!(c.tie_word_embeddings && c.attention_bias && !c.qk_norm);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(151643), vec![151643]));
}

#[test]
fn qwen3_0_6b() {
    let c = parse(QWEN3_0_6B);
    assert_eq!(c.architecture, Architecture::Qwen3);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers), (151936, 1024, 3072, 28));
    // head_dim 128 although hidden / heads = 64.
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (16, 8, 128));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (1e6, 1e-6, 40960));
    assert!(c.tie_word_embeddings && !c.attention_bias && c.qk_norm);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(151643), vec![151645]));
}

/// A config with only the required sizes: everything else takes transformers' defaults.
fn minimal(arch: &str) -> String {
    json!({ "architectures": [arch], "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 2, "num_attention_heads": 4 })
    .to_string()
}

#[test]
fn defaults_follow_transformers() {
    let llama = parse(&minimal("LlamaForCausalLM"));
    assert_eq!((llama.num_kv_heads, llama.head_dim, llama.max_position_embeddings), (4, 64, 2048));
    assert_eq!((llama.rope_theta, llama.rms_norm_eps, llama.tie_word_embeddings), (10000.0, 1e-6, false));
    assert_eq!((llama.bos_token_id, llama.eos_token_ids.clone()), (Some(1), vec![2]));

    let mistral = parse(&minimal("MistralForCausalLM"));
    assert_eq!((mistral.head_dim, mistral.max_position_embeddings), (64, 131072));
    assert_eq!((mistral.bos_token_id, mistral.eos_token_ids.clone()), (Some(1), vec![2]));

    let qwen2 = parse(&minimal("Qwen2ForCausalLM"));
    assert_eq!((qwen2.head_dim, qwen2.max_position_embeddings, qwen2.tie_word_embeddings), (64, 32768, false));
    assert_eq!((qwen2.bos_token_id, qwen2.eos_token_ids.clone()), (None, vec![]));
    assert!(qwen2.attention_bias);

    let qwen3 = parse(&minimal("Qwen3ForCausalLM"));
    assert_eq!((qwen3.head_dim, qwen3.max_position_embeddings), (128, 32768));
    assert!(qwen3.qk_norm);
}

#[test]
fn token_id_forms_and_model_type_fallback() {
    let mut v: serde_json::Value = serde_json::from_str(&minimal("LlamaForCausalLM")).unwrap();
    v["eos_token_id"] = json!([128001, 128008, 128009]);
    v["bos_token_id"] = json!(null);
    let c = parse(&v.to_string());
    assert_eq!((c.bos_token_id, c.eos_token_ids), (None, vec![128001, 128008, 128009]));

    // No "architectures": the model_type decides.
    v.as_object_mut().unwrap().remove("architectures");
    v["model_type"] = json!("qwen3");
    assert_eq!(parse(&v.to_string()).architecture, Architecture::Qwen3);

    // transformers 5 keeps rope_theta and the scaling in "rope_parameters".
    let mut v5: serde_json::Value = serde_json::from_str(LLAMA_3_2_1B).unwrap();
    let params = json!({ "rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192 });
    let obj = v5.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("rope_scaling");
    obj.insert("rope_parameters".into(), params);
    assert_eq!(parse(&v5.to_string()), parse(LLAMA_3_2_1B));
}

#[test]
fn written_config_reads_back_identically() {
    for text in [LLAMA_3_2_1B, SMOLLM2_135M, MISTRAL_7B, QWEN2_5_0_5B, QWEN3_0_6B] {
        let c = parse(text);
        let written = config_to_json(&c, Some(json!({ "liger": { "mixer": "gla" } })));
        assert_eq!(written["liger"]["mixer"], "gla");
        assert_eq!(written["rms_norm_eps"], json!(c.rms_norm_eps.to_string().parse::<f64>().unwrap()));
        let back = parse(&written.to_string());
        assert_eq!(back, c, "round trip of {}", c.architecture.name());
    }
    // Exact decimals in the file, as Python would write them.
    let written = config_to_json(&parse(LLAMA_3_2_1B), None);
    assert_eq!(written["rms_norm_eps"], json!(1e-5));
    assert_eq!(written["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(written["rope_scaling"]["rope_type"], "llama3");
}

fn expect_error(text: &str, code: ErrorCode, needles: &[&str]) {
    match parse_config(text, "some/dir/config.json") {
        Ok(c) => panic!("expected {code} for {text}, parsed {c:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            assert!(e.message.contains("some/dir/config.json"), "message names the file: {e}");
            for n in needles {
                assert!(e.message.contains(n), "message {:?} should mention {n:?}", e.message);
            }
        }
    }
}

fn with(key: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&minimal("LlamaForCausalLM")).unwrap();
    v[key] = value;
    v.to_string()
}

fn without(key: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&minimal("LlamaForCausalLM")).unwrap();
    v.as_object_mut().unwrap().remove(key);
    v.to_string()
}

#[test]
fn bad_configs_give_clear_errors() {
    use ErrorCode::*;
    expect_error("{\"architectures\": [", InvalidFile, &["not valid JSON"]);
    expect_error("[1, 2]", InvalidFile, &["JSON object"]);
    expect_error(
        &with("architectures", json!(["GPT2LMHeadModel"])),
        UnsupportedArchitecture,
        &["GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM"],
    );
    expect_error(&with("architectures", json!("LlamaForCausalLM")), InvalidFile, &["architectures"]);
    expect_error(&without("architectures"), InvalidFile, &["architecture"]);
    expect_error(&without("hidden_size"), InvalidFile, &["hidden_size", "missing"]);
    expect_error(&with("hidden_size", json!("576")), InvalidFile, &["hidden_size", "integer"]);
    expect_error(&with("num_hidden_layers", json!(-3)), InvalidFile, &["num_hidden_layers"]);
    expect_error(&with("rms_norm_eps", json!("small")), InvalidFile, &["rms_norm_eps"]);
    expect_error(&with("tie_word_embeddings", json!(1)), InvalidFile, &["tie_word_embeddings"]);
    expect_error(&with("eos_token_id", json!([2, "x"])), InvalidFile, &["eos_token_id"]);
    expect_error(&with("eos_token_id", json!(-1)), InvalidFile, &["eos_token_id"]);
    expect_error(&with("num_key_value_heads", json!(3)), InvalidFile, &["multiple"]);
    expect_error(&with("num_attention_heads", json!(0)), InvalidFile, &["positive"]);
    expect_error(&with("rope_theta", json!(0)), InvalidFile, &["rope_theta"]);
    expect_error(
        &with("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0})),
        UnsupportedArchitecture,
        &["yarn", "llama3"],
    );
    expect_error(&with("rope_scaling", json!({"type": "linear", "factor": 2.0})), UnsupportedArchitecture, &["linear"]);
    expect_error(
        &with("rope_scaling", json!({"rope_type": "llama3", "factor": 8.0})),
        InvalidFile,
        &["low_freq_factor", "missing"],
    );
    expect_error(
        &with(
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
        ),
        InvalidFile,
        &["low_freq_factor < high_freq_factor"],
    );
    expect_error(&with("rope_scaling", json!("llama3")), InvalidFile, &["rope_scaling"]);
    expect_error(&with("hidden_act", json!("gelu")), UnsupportedArchitecture, &["gelu"]);
    expect_error(&with("mlp_bias", json!(true)), UnsupportedArchitecture, &["mlp_bias"]);
    expect_error(&with("attention_bias", json!(true)), UnsupportedArchitecture, &["attention_bias"]);
    expect_error(&with("use_sliding_window", json!(true)), UnsupportedArchitecture, &["sliding"]);
    // Sizes that would size allocations beyond any memory: refused before anything is allocated.
    expect_error(
        &with("num_hidden_layers", json!(4_000_000_000u64)),
        InvalidFile,
        &["layers", "4000000000", "corrupt"],
    );
    expect_error(&with("vocab_size", json!(1u64 << 40)), InvalidFile, &["vocabulary"]);
    expect_error(&with("max_position_embeddings", json!(1u64 << 40)), InvalidFile, &["context length"]);
}

/// transformers' `_compute_llama3_parameters`, re-derived in float64 in its own form:
/// masks over the whole frequency vector rather than a branch per frequency.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // kept as `~(w < high) & ~(w > low)`, as written there
fn llama3_inv_freq_f64(theta: f64, dim: usize, s: &Llama3RopeScaling) -> Vec<f64> {
    let (factor, low, high, old) = (
        s.factor as f64,
        s.low_freq_factor as f64,
        s.high_freq_factor as f64,
        s.original_max_position_embeddings as f64,
    );
    let inv_freq: Vec<f64> = (0..dim).step_by(2).map(|i| 1.0 / theta.powf(i as f64 / dim as f64)).collect();
    let low_freq_wavelen = old / low;
    let high_freq_wavelen = old / high;
    let wavelen: Vec<f64> = inv_freq.iter().map(|f| 2.0 * std::f64::consts::PI / f).collect();
    // Step 1: long wavelengths are divided by the factor.
    let scaled: Vec<f64> =
        inv_freq.iter().zip(&wavelen).map(|(f, w)| if *w > low_freq_wavelen { f / factor } else { *f }).collect();
    // Step 2: the medium band is interpolated between scaled and unscaled.
    let smooth: Vec<f64> = wavelen.iter().map(|w| (old / w - low) / (high - low)).collect();
    let smoothed: Vec<f64> = scaled.iter().zip(&smooth).map(|(f, s)| (1.0 - s) * f / factor + s * f).collect();
    let is_medium: Vec<bool> = wavelen.iter().map(|w| !(*w < high_freq_wavelen) && !(*w > low_freq_wavelen)).collect();
    (0..inv_freq.len()).map(|i| if is_medium[i] { smoothed[i] } else { scaled[i] }).collect()
}

#[test]
fn llama3_rope_inv_freq_matches_float64_reference() {
    let c = parse(LLAMA_3_2_1B);
    let s = c.rope_scaling.unwrap();
    let got = c.rope_inv_freq();
    let want = llama3_inv_freq_f64(c.rope_theta as f64, c.head_dim, &s);
    assert_eq!(got.len(), 32);
    let mut max_rel = 0.0f64;
    for (g, w) in got.iter().zip(&want) {
        max_rel = max_rel.max((*g as f64 - w).abs() / w.abs());
    }
    println!("llama3 rope inv_freq: max relative error {max_rel:.3e}");
    assert!(max_rel < 1e-6, "max relative error {max_rel}");

    // The Llama-3.2 values exercise all three bands: unscaled, interpolated, divided.
    let unscaled: Vec<f64> = (0..32).map(|i| 1.0 / 500000f64.powf(2.0 * i as f64 / 64.0)).collect();
    let bands = want.iter().zip(&unscaled).fold((0, 0, 0), |(hi, mid, lo), (w, u)| {
        let r = w / u;
        if (r - 1.0).abs() < 1e-12 {
            (hi + 1, mid, lo)
        } else if (r - 1.0 / 32.0).abs() < 1e-12 {
            (hi, mid, lo + 1)
        } else {
            (hi, mid + 1, lo)
        }
    });
    assert!(bands.0 > 0 && bands.1 > 0 && bands.2 > 0, "bands {bands:?}");
}
