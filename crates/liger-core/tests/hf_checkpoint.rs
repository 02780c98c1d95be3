//! Checkpoint directories: a tiny random model saved and loaded again, in every dtype,
//! sharded or not, with tokenizer files; atomic replacement; and broken directories.

use liger_core::config::{Architecture, ModelConfig};
use liger_core::hf::{
    load_hf_dir, read_safetensors_f32, save_hf_dir, save_hf_dir_with_shard_size, write_safetensors, HfExtraFiles,
    SaveDtype,
};
use liger_core::tensor::ByteView;
use liger_core::weights::{LayerWeights, ModelWeights};
use liger_core::{ErrorCode, GgmlType, QTensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("liger-ckpt-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rng() -> SmallRng {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("seed {seed}");
    SmallRng::seed_from_u64(seed)
}

/// 2 layers, hidden 64, 4 query / 2 key-value heads of 16, ffn 96, vocab 100.
fn tiny_config(arch: Architecture, tied: bool) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        vocab_size: 100,
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rope_theta: 10000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 512,
        tie_word_embeddings: tied,
        attention_bias: arch == Architecture::Qwen2,
        qk_norm: arch == Architecture::Qwen3,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// Values in ±[0.01, 1), never zero.
fn values(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(0.01f32..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect()
}

fn tiny_weights(c: &ModelConfig, rng: &mut SmallRng) -> ModelWeights {
    let mat = |rng: &mut SmallRng, r: usize, k: usize| QTensor::from_f32(r, k, values(rng, r * k));
    let (h, q, kv, f, v) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size, c.vocab_size);
    let embed = mat(rng, v, h);
    let lm_head = (!c.tie_word_embeddings).then(|| mat(rng, v, h));
    let mut layers = Vec::new();
    for _ in 0..c.num_layers {
        let (wq, wk, wv, wo) = (mat(rng, q, h), mat(rng, kv, h), mat(rng, kv, h), mat(rng, h, q));
        let (w_gate, w_up, w_down) = (mat(rng, f, h), mat(rng, f, h), mat(rng, h, f));
        let mut vecn = |n: usize| values(rng, n);
        let bias = c.attention_bias;
        let norm = c.qk_norm;
        layers.push(LayerWeights {
            attn_norm: vecn(h),
            wq,
            wk,
            wv,
            wo,
            bq: bias.then(|| vecn(q)),
            bk: bias.then(|| vecn(kv)),
            bv: bias.then(|| vecn(kv)),
            q_norm: norm.then(|| vecn(c.head_dim)),
            k_norm: norm.then(|| vecn(c.head_dim)),
            ffn_norm: vecn(h),
            w_gate,
            w_up,
            w_down,
        });
    }
    let final_norm = values(rng, h);
    let w = ModelWeights { embed, layers, final_norm, lm_head };
    w.validate(c).unwrap();
    w
}

/// Every tensor of a model in a fixed order, as (name, values), for comparisons.
fn flatten(w: &ModelWeights) -> Vec<(String, Vec<f32>)> {
    let m = |n: &str, t: &QTensor| (n.to_string(), t.to_f32().to_vec());
    let mut out = vec![m("embed", &w.embed), ("final_norm".into(), w.final_norm.clone())];
    if let Some(h) = &w.lm_head {
        out.push(m("lm_head", h));
    }
    for (i, l) in w.layers.iter().enumerate() {
        for (n, t) in [
            ("wq", &l.wq),
            ("wk", &l.wk),
            ("wv", &l.wv),
            ("wo", &l.wo),
            ("gate", &l.w_gate),
            ("up", &l.w_up),
            ("down", &l.w_down),
        ] {
            out.push(m(&format!("{i}.{n}"), t));
        }
        for (n, v) in [
            ("attn_norm", Some(&l.attn_norm)),
            ("ffn_norm", Some(&l.ffn_norm)),
            ("bq", l.bq.as_ref()),
            ("bk", l.bk.as_ref()),
            ("bv", l.bv.as_ref()),
            ("q_norm", l.q_norm.as_ref()),
            ("k_norm", l.k_norm.as_ref()),
        ] {
            if let Some(v) = v {
                out.push((format!("{i}.{n}"), v.clone()));
            }
        }
    }
    out
}

fn assert_bit_identical(a: &ModelWeights, b: &ModelWeights) {
    let (fa, fb) = (flatten(a), flatten(b));
    assert_eq!(fa.len(), fb.len());
    for ((na, va), (nb, vb)) in fa.iter().zip(&fb) {
        assert_eq!(na, nb);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(va), bits(vb), "tensor {na} differs");
    }
}

#[test]
fn f32_round_trip_is_bit_identical_for_each_architecture() {
    let mut rng = rng();
    for (arch, tied) in [
        (Architecture::Llama, false),
        (Architecture::Qwen2, true),
        (Architecture::Qwen3, false),
        (Architecture::Mistral, true),
    ] {
        let dir = TempDir::new("rt");
        let out = dir.path("model");
        let c = tiny_config(arch, tied);
        let w = tiny_weights(&c, &mut rng);
        save_hf_dir(&out, &c, &w, &HfExtraFiles::default(), SaveDtype::F32).unwrap();
        let ck = load_hf_dir(&out).unwrap();
        assert_eq!(ck.config, c, "{arch:?}");
        assert_eq!(ck.weights.lm_head.is_none(), tied);
        assert_eq!(ck.weights.embed.ty, GgmlType::F32);
        assert_bit_identical(&w, &ck.weights);
        assert_eq!(ck.raw_config["torch_dtype"], "float32");
        assert_eq!(ck.tokenizer_json, None);
        assert_eq!(ck.chat_template, None);
        // Names as transformers expects them.
        let names: Vec<String> =
            read_safetensors_f32(&out.join("model.safetensors")).unwrap().into_iter().map(|t| t.0).collect();
        assert!(names.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
        assert_eq!(names.contains(&"lm_head.weight".to_string()), !tied);
        assert_eq!(names.contains(&"model.layers.0.self_attn.q_proj.bias".to_string()), arch == Architecture::Qwen2);
        assert_eq!(names.contains(&"model.layers.0.self_attn.k_norm.weight".to_string()), arch == Architecture::Qwen3);
    }
}

/// Saving in a 16-bit type rounds each value to nearest: relative error within half an ulp,
/// checked against the float64 value of the original.
#[test]
fn f16_and_bf16_round_trips_within_precision() {
    let mut rng = rng();
    let c = tiny_config(Architecture::Qwen2, false);
    let w = tiny_weights(&c, &mut rng);
    for (dtype, ty, mantissa_bits) in [(SaveDtype::F16, GgmlType::F16, 10), (SaveDtype::BF16, GgmlType::BF16, 7)] {
        let dir = TempDir::new("half");
        save_hf_dir(&dir.path("m"), &c, &w, &HfExtraFiles::default(), dtype).unwrap();
        let ck = load_hf_dir(&dir.path("m")).unwrap();
        assert_eq!(ck.weights.layers[0].wq.ty, ty);
        let bound = 2f64.powi(-(mantissa_bits + 1));
        let mut max_rel = 0.0f64;
        for ((_, a), (_, b)) in flatten(&w).iter().zip(&flatten(&ck.weights)) {
            for (x, y) in a.iter().zip(b) {
                max_rel = max_rel.max((*x as f64 - *y as f64).abs() / (*x as f64).abs());
            }
        }
        println!("{dtype:?}: max relative error {max_rel:.3e} (bound {bound:.3e})");
        assert!(max_rel <= bound && max_rel > 0.0, "{dtype:?}: {max_rel}");
        assert_eq!(ck.raw_config["torch_dtype"], if dtype == SaveDtype::F16 { "float16" } else { "bfloat16" });
    }
}

/// A Q8_0 embedding is written as its dequantized values.
#[test]
fn quantized_tensors_are_dequantized_on_save() {
    let mut rng = rng();
    let c = tiny_config(Architecture::Llama, true);
    let mut w = tiny_weights(&c, &mut rng);
    // Q8_0 block: f16 scale, 32 signed bytes.
    let mut bytes = Vec::new();
    for _ in 0..c.vocab_size * c.hidden_size / 32 {
        bytes.extend_from_slice(&half::f16::from_f32(rng.random_range(0.001f32..0.01)).to_le_bytes());
        bytes.extend((0..32).map(|_| rng.random::<i8>() as u8));
    }
    w.embed = QTensor::new(GgmlType::Q8_0, c.vocab_size, c.hidden_size, ByteView::from_vec(bytes)).unwrap();
    let dir = TempDir::new("q8");
    save_hf_dir(&dir.path("m"), &c, &w, &HfExtraFiles::default(), SaveDtype::F32).unwrap();
    let ck = load_hf_dir(&dir.path("m")).unwrap();
    assert_eq!(ck.weights.embed.ty, GgmlType::F32);
    assert_eq!(ck.weights.embed.to_f32().to_vec(), w.embed.to_f32().to_vec());
}

#[test]
fn sharded_checkpoint_loads() {
    let mut rng = rng();
    let c = tiny_config(Architecture::Qwen3, false);
    let w = tiny_weights(&c, &mut rng);
    let dir = TempDir::new("shard");
    let out = dir.path("m");
    save_hf_dir_with_shard_size(&out, &c, &w, &HfExtraFiles::default(), SaveDtype::F32, 40_000).unwrap();
    assert!(!out.join("model.safetensors").exists());
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let shards: std::collections::BTreeSet<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() >= 3, "{shards:?}");
    assert!(shards.contains(format!("model-00001-of-{:05}.safetensors", shards.len()).as_str()));
    let total: u64 = index["metadata"]["total_size"].as_u64().unwrap();
    assert_eq!(total as usize, w.num_params() * 4);
    let ck = load_hf_dir(&out).unwrap();
    assert_bit_identical(&w, &ck.weights);
}

fn tokenizer_json_text() -> String {
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<|endoftext|>", "special": true},
            {"id": 1, "content": "<|im_start|>", "special": true},
            {"id": 2, "content": "<|im_end|>", "special": true}
        ],
        "model": {"type": "BPE", "vocab": {"a": 3, "b": 4}, "merges": []}
    })
    .to_string()
}

#[test]
fn tokenizer_files_chat_template_and_extra_config() {
    let mut rng = rng();
    let c = tiny_config(Architecture::Llama, true);
    let w = tiny_weights(&c, &mut rng);
    let dir = TempDir::new("tok");
    let out = dir.path("m");
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    let files = HfExtraFiles {
        tokenizer_json: Some(tokenizer_json_text()),
        chat_template: Some(template.into()),
        add_bos_token: Some(true),
        extra_config: Some(json!({ "liger": { "mixer": "gla", "window": 64 } })),
    };
    save_hf_dir(&out, &c, &w, &files, SaveDtype::BF16).unwrap();
    let ck = load_hf_dir(&out).unwrap();
    assert_eq!(ck.chat_template.as_deref(), Some(template));
    assert_eq!(ck.add_bos_token, Some(true));
    assert_eq!(ck.tokenizer_json.as_deref(), Some(out.join("tokenizer.json").as_path()));
    assert_eq!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap(), tokenizer_json_text());
    assert_eq!(ck.raw_config["liger"]["window"], 64);
    let tok_cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tok_cfg["bos_token"], "<|im_start|>");
    assert_eq!(tok_cfg["eos_token"], "<|im_end|>");
    assert_eq!(tok_cfg["tokenizer_class"], "PreTrainedTokenizerFast");
    let gen: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!((gen["bos_token_id"].clone(), gen["eos_token_id"].clone()), (json!(1), json!(2)));

    // A list of named templates: "default" is used. chat_template.jinja wins when present.
    std::fs::write(
        out.join("tokenizer_config.json"),
        json!({ "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}] })
            .to_string(),
    )
    .unwrap();
    assert_eq!(load_hf_dir(&out).unwrap().chat_template.as_deref(), Some("D"));
    std::fs::write(out.join("chat_template.jinja"), "J").unwrap();
    assert_eq!(load_hf_dir(&out).unwrap().chat_template.as_deref(), Some("J"));

    // End-of-turn ids listed only in generation_config.json are added to the stop ids.
    std::fs::write(out.join("generation_config.json"), json!({ "eos_token_id": [2, 0] }).to_string()).unwrap();
    assert_eq!(load_hf_dir(&out).unwrap().config.eos_token_ids, vec![2, 0]);
}

#[test]
fn saving_replaces_a_directory_atomically() {
    let mut rng = rng();
    let c = tiny_config(Architecture::Llama, false);
    let w1 = tiny_weights(&c, &mut rng);
    let w2 = tiny_weights(&c, &mut rng);
    let dir = TempDir::new("atomic");
    let out = dir.path("m");
    save_hf_dir(&out, &c, &w1, &HfExtraFiles::default(), SaveDtype::F32).unwrap();

    // Load (memory-mapped), then save other weights over the same directory.
    let first = load_hf_dir(&out).unwrap();
    save_hf_dir(&out, &c, &w2, &HfExtraFiles::default(), SaveDtype::F32).unwrap();
    assert_bit_identical(&w2, &load_hf_dir(&out).unwrap().weights);
    assert_bit_identical(&w1, &first.weights); // the old maps stay readable

    // Saving a model loaded from the directory back into it.
    save_hf_dir(&out, &first.config, &first.weights, &HfExtraFiles::default(), SaveDtype::F32).unwrap();
    assert_bit_identical(&w1, &load_hf_dir(&out).unwrap().weights);

    // A save that fails halfway (a value beyond F16) leaves the directory as it was.
    let mut bad = w2.clone();
    let mut v = bad.layers[1].w_down.to_f32().to_vec();
    v[7] = 1e6;
    bad.layers[1].w_down = QTensor::from_f32(c.hidden_size, c.intermediate_size, v);
    let err = save_hf_dir(&out, &c, &bad, &HfExtraFiles::default(), SaveDtype::F16).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(err.message.contains("model.layers.1.mlp.down_proj.weight"), "{err}");
    assert_bit_identical(&w1, &load_hf_dir(&out).unwrap().weights);
    let entries: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("m")], "no temporary directories left");
}

#[test]
fn save_refuses_inconsistent_input() {
    let mut rng = rng();
    let dir = TempDir::new("refuse");
    let c = tiny_config(Architecture::Llama, true);
    let mut w = tiny_weights(&c, &mut rng);
    let files = HfExtraFiles { extra_config: Some(json!([1, 2])), ..Default::default() };
    assert_eq!(
        save_hf_dir(&dir.path("a"), &c, &w, &files, SaveDtype::F32).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    w.lm_head = Some(w.embed.clone());
    assert_eq!(
        save_hf_dir(&dir.path("b"), &c, &w, &HfExtraFiles::default(), SaveDtype::F32).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    w.lm_head = None;
    w.final_norm.pop();
    assert_eq!(
        save_hf_dir(&dir.path("c"), &c, &w, &HfExtraFiles::default(), SaveDtype::F32).unwrap_err().code,
        ErrorCode::ShapeMismatch
    );
    std::fs::write(dir.path("file"), "x").unwrap();
    w.final_norm.push(1.0);
    assert_eq!(
        save_hf_dir(&dir.path("file"), &c, &w, &HfExtraFiles::default(), SaveDtype::F32).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert!(!dir.path("a").exists() && !dir.path("b").exists() && !dir.path("c").exists());
}

/// A saved tiny model whose `model.safetensors` is rewritten by `edit`.
fn edited_checkpoint(edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> (TempDir, PathBuf) {
    let mut rng = rng();
    let c = tiny_config(Architecture::Llama, false);
    let w = tiny_weights(&c, &mut rng);
    let dir = TempDir::new("edit");
    let out = dir.path("m");
    save_hf_dir(&out, &c, &w, &HfExtraFiles::default(), SaveDtype::F32).unwrap();
    let file = out.join("model.safetensors");
    let mut tensors = read_safetensors_f32(&file).unwrap();
    edit(&mut tensors);
    let refs: Vec<(String, Vec<usize>, SaveDtype, &[f32])> =
        tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), SaveDtype::F32, v.as_slice())).collect();
    write_safetensors(&file, &refs, None).unwrap();
    (dir, out)
}

fn expect_load_error(dir: &Path, code: ErrorCode, needles: &[&str]) {
    match load_hf_dir(dir) {
        Ok(_) => panic!("expected {code}"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            for n in needles {
                assert!(e.message.contains(n), "{:?} should mention {n:?}", e.message);
            }
        }
    }
}

#[test]
fn broken_checkpoints_give_clear_errors() {
    use ErrorCode::*;
    let (_d, out) = edited_checkpoint(|t| t.retain(|x| x.0 != "model.layers.1.self_attn.v_proj.weight"));
    expect_load_error(&out, InvalidFile, &["model.layers.1.self_attn.v_proj.weight", "missing", "model.safetensors"]);

    let (_d, out) = edited_checkpoint(|t| t.retain(|x| x.0 != "lm_head.weight"));
    expect_load_error(&out, InvalidFile, &["lm_head.weight"]);

    let (_d, out) =
        edited_checkpoint(|t| t.push(("model.layers.0.self_attn.o_proj.bias".into(), vec![64], vec![0.5; 64])));
    expect_load_error(&out, InvalidFile, &["o_proj.bias", "do not match"]);

    let (_d, out) = edited_checkpoint(|t| {
        let x = t.iter_mut().find(|x| x.0 == "model.layers.0.mlp.up_proj.weight").unwrap();
        x.1 = vec![64, 96]; // transposed
    });
    expect_load_error(&out, ShapeMismatch, &["up_proj", "[96, 64]"]);

    let (_d, out) = edited_checkpoint(|t| {
        let x = t.iter_mut().find(|x| x.0 == "model.norm.weight").unwrap();
        x.1 = vec![8, 8];
    });
    expect_load_error(&out, ShapeMismatch, &["model.norm.weight", "1-D"]);

    // A weight stored as integers.
    let (_d, out) = edited_checkpoint(|_| {});
    let mut tensors = read_safetensors_f32(&out.join("model.safetensors")).unwrap();
    tensors.retain(|t| t.0 != "model.embed_tokens.weight");
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    header.insert(
        "model.embed_tokens.weight".into(),
        json!({"dtype": "I32", "shape": [100, 64], "data_offsets": [0, 25600]}),
    );
    data.resize(25600, 1u8);
    for (n, s, v) in &tensors {
        let start = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(n.clone(), json!({"dtype": "F32", "shape": s, "data_offsets": [start, data.len()]}));
    }
    let header = Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(&data);
    std::fs::write(out.join("model.safetensors"), bytes).unwrap();
    expect_load_error(&out, UnsupportedTensorType, &["model.embed_tokens.weight", "I32"]);

    // Truncated weights file.
    let (_d, out) = edited_checkpoint(|_| {});
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    std::fs::write(out.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    expect_load_error(&out, InvalidFile, &["model.safetensors", "truncated"]);

    // Config problems.
    let (_d, out) = edited_checkpoint(|_| {});
    std::fs::write(out.join("config.json"), "{ not json").unwrap();
    expect_load_error(&out, InvalidFile, &["config.json", "JSON"]);
    std::fs::write(out.join("config.json"), json!({"architectures": ["BertModel"]}).to_string()).unwrap();
    expect_load_error(&out, UnsupportedArchitecture, &["BertModel"]);
    let mut cfg = liger_core::hf::config_to_json(&tiny_config(Architecture::Llama, false), None);
    cfg["hidden_size"] = json!(32);
    cfg["head_dim"] = json!(8);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    expect_load_error(&out, ShapeMismatch, &["do not match config.json"]);
    std::fs::remove_file(out.join("config.json")).unwrap();
    expect_load_error(&out, InvalidFile, &["config.json"]);

    expect_load_error(Path::new("/nonexistent/model"), Io, &["/nonexistent/model"]);
}

#[test]
fn broken_sharded_checkpoints_give_clear_errors() {
    let mut rng = rng();
    let c = tiny_config(Architecture::Llama, true);
    let w = tiny_weights(&c, &mut rng);
    let dir = TempDir::new("badshard");
    let out = dir.path("m");
    save_hf_dir_with_shard_size(&out, &c, &w, &HfExtraFiles::default(), SaveDtype::F32, 40_000).unwrap();
    let index_path = out.join("model.safetensors.index.json");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();

    let first_shard = index["weight_map"]["model.embed_tokens.weight"].clone();
    let mut moved = index.clone();
    moved["weight_map"]["model.norm.weight"] = first_shard;
    std::fs::write(&index_path, moved.to_string()).unwrap();
    expect_load_error(&out, ErrorCode::InvalidFile, &["model.norm.weight", "does not hold it"]);

    let mut missing = index.clone();
    missing["weight_map"]["model.norm.weight"] = json!("model-99999.safetensors");
    std::fs::write(&index_path, missing.to_string()).unwrap();
    expect_load_error(&out, ErrorCode::InvalidFile, &["model-99999.safetensors", "does not exist"]);

    let mut escape = index.clone();
    escape["weight_map"]["model.norm.weight"] = json!("../elsewhere.safetensors");
    std::fs::write(&index_path, escape.to_string()).unwrap();
    expect_load_error(&out, ErrorCode::InvalidFile, &["same directory"]);

    let mut dropped = index.clone();
    dropped["weight_map"].as_object_mut().unwrap().remove("model.layers.0.mlp.up_proj.weight");
    std::fs::write(&index_path, dropped.to_string()).unwrap();
    expect_load_error(&out, ErrorCode::InvalidFile, &["model.layers.0.mlp.up_proj.weight", "missing"]);

    std::fs::write(&index_path, json!({"metadata": {}}).to_string()).unwrap();
    expect_load_error(&out, ErrorCode::InvalidFile, &["weight_map"]);

    std::fs::remove_file(&index_path).unwrap();
    expect_load_error(&out, ErrorCode::InvalidFile, &["model.safetensors.index.json"]);
}
