//! The reference format: export then load gives the same model, the files carry the
//! reference's names, and what it cannot express is refused.

use super::*;
use crate::checkpoint::{load_liger_checkpoint, read_liger_section};
use crate::convert::{linearize, LoraTarget};
use crate::hf::SafetensorsFile;
use crate::testing::random_tokens;
use crate::testing::TempDir;
use crate::train::fixtures::tiny_byte_model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A tiny Liger model with the reference's options and random (non-zero) adapters on q/k/v/o.
fn model(seed: u64, options: LigerOptions) -> LigerModel {
    let lora = LoraOptions { rank: 2, alpha: 4.0, targets: LoraTarget::ALL.to_vec(), seed };
    let mut model = linearize(tiny_byte_model(seed), options, lora).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for p in model.lora_params_mut() {
        p.iter_mut().for_each(|x| *x = rng.random_range(-0.3..0.3));
    }
    model
}

fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn an_export_loads_back_with_the_same_logits() {
    let seed: u64 = rand::random();
    let tmp = TempDir::new("export");
    let dir = tmp.0.join("hf");
    let original = model(seed, reference_options());
    export_reference_hf(&dir, &original, &ExportOptions::default()).unwrap();

    let loaded = load_liger_checkpoint(&dir).unwrap();
    assert_eq!(loaded.options, reference_options());
    assert!(loaded.lora_params().is_empty(), "the adapters are merged, none are loaded");
    let tokens = random_tokens(40, original.base.config.vocab_size, seed);
    let (want, got) = (original.all_logits(&tokens).unwrap(), loaded.all_logits(&tokens).unwrap());
    let err = max_rel_err(&want, &got);
    assert!(err < 2e-6, "seed {seed}: max relative error {err}");
    assert_eq!(
        loaded.base.tokenizer.encode("liger", false, false).unwrap(),
        original.base.tokenizer.encode("liger", false, false).unwrap()
    );
}

#[test]
fn an_export_has_the_reference_config_and_tensor_names() {
    let tmp = TempDir::new("export-names");
    let dir = tmp.0.join("hf");
    let m = model(7, reference_options());
    export_reference_hf(&dir, &m, &ExportOptions::default()).unwrap();
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], REFERENCE_MODEL_TYPE);
    assert_eq!(config["architectures"], json!([REFERENCE_ARCHITECTURE]));
    assert!(config.get("liger").is_none(), "the reference reads no liger section");
    for key in ["hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps"] {
        assert!(config.get(key).is_some(), "config.json lacks {key}");
    }
    assert!(dir.join("tokenizer.json").is_file());
    assert!(!dir.join("adapter_model.safetensors").exists());
    let file = SafetensorsFile::open(&dir.join("model.safetensors")).unwrap();
    let cfg = &m.base.config;
    let mut want = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if !cfg.tie_word_embeddings {
        want.push("lm_head.weight".into());
    }
    for l in 0..cfg.num_layers {
        for n in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        ] {
            want.push(format!("model.layers.{l}.{n}.weight"));
        }
    }
    let mut got = file.names().to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The merged q projection is W + scale * B A, not the base weight.
    let (_, q) = file.tensor_f32("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_ne!(q, m.base.weights.layers[0].wq.to_f32().to_vec());
}

#[test]
fn options_the_reference_cannot_express_are_refused_by_name() {
    let tmp = TempDir::new("export-refused");
    let base = reference_options();
    let cases: Vec<(LigerOptions, &str)> = vec![
        (LigerOptions { softmax_layers: vec![1], ..base.clone() }, "softmax attention kept in layers [1]"),
        (
            LigerOptions { attention: LigerAttentionConfig { surprise_keys: 4, ..base.attention }, ..base.clone() },
            "surprise cache",
        ),
        (LigerOptions { attention: LigerAttentionConfig { sink_keys: 4, ..base.attention }, ..base.clone() }, "sinks"),
        (
            LigerOptions {
                attention: LigerAttentionConfig { mixer: MixerConfig::new(MixerKind::Hgrn2), ..base.attention },
                ..base.clone()
            },
            "mixer hgrn2",
        ),
        (
            LigerOptions { attention: LigerAttentionConfig { window_keys: 33, ..base.attention }, ..base.clone() },
            "33 keys",
        ),
        (
            LigerOptions {
                attention: LigerAttentionConfig { alpha: 1.0, beta: 0.0, ..base.attention },
                ..base.clone()
            },
            "mix weights",
        ),
    ];
    for (i, (options, named)) in cases.into_iter().enumerate() {
        let dir = tmp.0.join(format!("out{i}"));
        let err = export_reference_hf(&dir, &model(3, options), &ExportOptions::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains(named), "{named:?} not in {}", err.message);
        assert!(!dir.exists(), "a refused export writes nothing");
    }
}

#[test]
fn an_existing_folder_is_replaced_only_with_overwrite_and_user_files_are_kept() {
    let tmp = TempDir::new("export-overwrite");
    let m = model(5, reference_options());
    let dir = tmp.0.join("hf");
    export_reference_hf(&dir, &m, &ExportOptions::default()).unwrap();
    let err = export_reference_hf(&dir, &m, &ExportOptions::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("not empty"), "{}", err.message);
    export_reference_hf(&dir, &m, &ExportOptions { overwrite: true, ..ExportOptions::default() }).unwrap();

    let user = tmp.0.join("mine");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "keep me").unwrap();
    for overwrite in [false, true] {
        let err = export_reference_hf(&user, &m, &ExportOptions { overwrite, ..ExportOptions::default() }).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
    assert_eq!(std::fs::read_to_string(user.join("notes.txt")).unwrap(), "keep me");
    let entries: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 2, "no temporary folders are left: {entries:?}");
}

#[test]
fn a_reference_checkpoint_is_read_as_the_reference_options() {
    let tmp = TempDir::new("export-read");
    let dir = tmp.0.join("hf");
    export_reference_hf(&dir, &model(9, reference_options()), &ExportOptions::default()).unwrap();
    let section = read_liger_section(&dir).unwrap().unwrap();
    assert!(section.merged);
    assert_eq!(section.options, reference_options());
    // Unmerged adapters beside it would be silently dropped: refused instead.
    std::fs::write(dir.join("adapter_config.json"), "{}").unwrap();
    let Err(err) = load_liger_checkpoint(&dir) else { panic!("loaded with adapter files beside it") };
    assert_eq!(err.code, ErrorCode::InvalidFile);
    assert!(err.message.contains("merge"), "{}", err.message);
}
