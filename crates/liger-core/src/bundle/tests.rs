//! Bundles: the round trip keeps the model (exactly in f32, within the quantisation error
//! in int8 and 4-bit), the int8 row format against float64, and every kind of bad input.

use super::*;
use crate::config::ModelConfig;
use crate::convert::{linearize, LigerModel, LigerOptions, LoraOptions};
use crate::linalg::matvec;
use crate::model::BaseModel;
use crate::testing::max_rel_error;
use crate::testing::random_weights;
use crate::train::fixtures::{byte_config, byte_tokenizer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A tiny Liger model whose adapters are not zero (so folding them in is tested); every
/// matrix row is a whole number of 4-bit blocks.
fn tiny_liger(seed: u64) -> LigerModel {
    let cfg = ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        ..byte_config()
    };
    let base = BaseModel::new(
        cfg.clone(),
        random_weights(&cfg, seed),
        byte_tokenizer(),
        None,
        "tiny".into(),
        ModelFormat::Checkpoint,
    );
    let mut model = linearize(base, LigerOptions::default(), LoraOptions::default()).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    for p in model.lora_params_mut() {
        p.iter_mut().for_each(|v| *v = rng.random_range(-0.05..0.05));
    }
    model
}

fn load(bytes: Vec<u8>) -> Result<LigerModel> {
    load_bundle(Arc::new(bytes))
}

fn random_tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(3..200)).collect()
}

#[test]
fn f32_bundle_reproduces_the_model() {
    let model = tiny_liger(1);
    let tokens = random_tokens(2, 24);
    let want: Vec<f64> = model.all_logits(&tokens).unwrap().iter().map(|&v| v as f64).collect();
    let loaded = load(bundle_bytes(&model, EdgeQuant::F32).unwrap()).unwrap();
    let got = loaded.all_logits(&tokens).unwrap();
    let err = max_rel_error(&got, &want);
    println!("f32 bundle: max rel error of the logits {err:.2e}");
    assert!(err < 1e-4, "f32 bundle logits differ: {err}");
    assert_eq!(
        loaded.base.tokenizer.encode("hello", false, false).unwrap(),
        model.base.tokenizer.encode("hello", false, false).unwrap()
    );
    assert_eq!(loaded.base.format, ModelFormat::Bundle);
    assert_eq!(loaded.options, model.options);
}

#[test]
fn quantized_bundles_stay_close_and_are_smaller() {
    let model = tiny_liger(3);
    let tokens = random_tokens(4, 24);
    let want: Vec<f64> = model.all_logits(&tokens).unwrap().iter().map(|&v| v as f64).collect();
    let f32_len = bundle_bytes(&model, EdgeQuant::F32).unwrap().len();
    for (quant, bound) in [(EdgeQuant::Int8, 0.05), (EdgeQuant::Q4, 0.5), (EdgeQuant::Q4_1, 0.5)] {
        let bytes = bundle_bytes(&model, quant).unwrap();
        let loaded = load(bytes.clone()).unwrap();
        let err = max_rel_error(&loaded.all_logits(&tokens).unwrap(), &want);
        println!(
            "{} bundle: {} bytes (f32 {f32_len}), max rel error of the logits {err:.2e}",
            quant.name(),
            bytes.len()
        );
        assert!(err < bound, "{}: logits error {err}", quant.name());
        assert!(bytes.len() < f32_len / 2, "{} bundle is not smaller", quant.name());
        let types = loaded.base.info().tensor_types;
        let expected: &[&str] = match quant {
            EdgeQuant::Int8 => &["I8_ROW"],
            EdgeQuant::Q4 => &["Q4_0"],
            _ => &["Q4_1", "I8_ROW"],
        };
        for ty in expected {
            assert!(types.contains_key(*ty), "{types:?}");
        }
    }
}

#[test]
fn q4_1_bundles_keep_embeddings_in_int8() {
    let bytes = bundle_bytes(&tiny_liger(2), EdgeQuant::Q4_1).unwrap();
    let header = read_header(&bytes, bytes.len() as u64).unwrap();
    assert_eq!(header.quantization, "q4_1");
    for e in &header.tensors {
        let want = match e.name.as_str() {
            "embed" | "lm_head" => "I8_ROW",
            _ if e.rows == 1 => "F32",
            _ if e.cols % 32 == 0 => "Q4_1",
            _ => "I8_ROW",
        };
        assert_eq!(e.dtype, want, "{}", e.name);
    }
}

#[test]
fn int8_rows_against_float64() {
    let mut rng = SmallRng::seed_from_u64(7);
    let (rows, cols) = (37, 100);
    let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
    let mut bytes = Vec::new();
    for r in values.chunks_exact(cols) {
        bytes.extend_from_slice(&crate::quant::quantize(GgmlType::I8Row, r).unwrap());
    }
    let t = QTensor::new(GgmlType::I8Row, rows, cols, ByteView::from_vec(bytes)).unwrap();
    // Rounding error at most half a step per value.
    let deq = t.to_f32();
    for (r, (a, b)) in values.chunks_exact(cols).zip(deq.chunks_exact(cols)).enumerate() {
        let step = a.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst <= step * 0.5 + 1e-6, "row {r}: error {worst} > half step {step}");
    }
    // matvec against float64 over the dequantized values.
    let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    let want: Vec<f64> =
        deq.chunks_exact(cols).map(|row| row.iter().zip(&x).map(|(&w, &v)| w as f64 * v as f64).sum()).collect();
    let mut y = vec![f32::NAN; rows];
    matvec(&t, &x, &mut y);
    let err = max_rel_error(&y, &want);
    println!("I8_ROW matvec: max rel error {err:.2e}");
    assert!(err < 1e-4, "I8_ROW matvec error {err}");
}

#[test]
fn truncated_and_foreign_bundles_are_refused() {
    let bytes = bundle_bytes(&tiny_liger(5), EdgeQuant::Int8).unwrap();
    for cut in [0, 10, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = load(bytes[..cut].to_vec()).err().expect("a truncated bundle loads");
        assert_eq!(err.code, ErrorCode::InvalidFile, "cut at {cut}: {err}");
        println!("cut at {cut}: {err}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(load(longer).err().unwrap().code, ErrorCode::InvalidFile);
    let mut gguf = b"GGUF\x03\0\0\0".to_vec();
    gguf.resize(4096, 7);
    let err = load(gguf).err().unwrap();
    assert_eq!(err.code, ErrorCode::InvalidFile);
    assert!(err.message.contains("not a liger bundle"), "{err}");
    let mut newer = bytes.clone();
    newer[8] = 9;
    let err = load(newer).err().unwrap();
    assert!(err.message.contains("version 9"), "{err}");
    let mut garbled = bytes.clone();
    garbled[PREAMBLE_BYTES] = b'#';
    assert_eq!(load(garbled).err().unwrap().code, ErrorCode::InvalidFile);
}

/// Rewrites the JSON header of `bytes` with `edit`, keeping the data.
fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut BundleHeader)) -> Vec<u8> {
    let h = read_preamble(bytes).unwrap();
    let mut header = read_header(bytes, bytes.len() as u64).unwrap();
    let data = bytes[data_start(h)..].to_vec();
    edit(&mut header);
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = bytes[..16].to_vec();
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(data_start(json.len()), 0);
    out.extend_from_slice(&data);
    out
}

#[test]
fn unknown_types_and_bad_tables_are_refused() {
    let bytes = bundle_bytes(&tiny_liger(6), EdgeQuant::Int8).unwrap();
    let unknown = edit_header(&bytes, |h| h.tensors[0].dtype = "Q3_HYPER".into());
    let err = load(unknown).err().unwrap();
    assert_eq!(err.code, ErrorCode::UnsupportedTensorType);
    assert!(err.message.contains("Q3_HYPER"), "{err}");
    let outside = edit_header(&bytes, |h| h.tensors[1].offset = h.data_bytes - 8);
    assert_eq!(load(outside).err().unwrap().code, ErrorCode::InvalidFile);
    let missing = edit_header(&bytes, |h| {
        h.tensors.retain(|t| t.name != "layers.0.wq");
    });
    assert_eq!(load(missing).err().unwrap().code, ErrorCode::ShapeMismatch);
    let twice = edit_header(&bytes, |h| {
        let first = h.tensors[0].clone();
        h.tensors.push(first);
    });
    assert_eq!(load(twice).err().unwrap().code, ErrorCode::InvalidFile);
    // Two tensors sharing bytes, and a tensor off the 64-byte grid, as safetensors refuses them.
    let overlap = edit_header(&bytes, |h| h.tensors[2].offset = h.tensors[1].offset);
    let err = load(overlap).err().unwrap();
    assert!(err.code == ErrorCode::InvalidFile && err.message.contains("overlap"), "{err}");
    let unaligned = edit_header(&bytes, |h| h.tensors[1].offset += 4);
    let err = load(unaligned).err().unwrap();
    assert!(
        err.code == ErrorCode::InvalidFile
            && (err.message.contains("multiple of 64") || err.message.contains("overlap")),
        "{err}"
    );
    let err = EdgeQuant::parse("int3").unwrap_err();
    assert_eq!(err.code, ErrorCode::UnsupportedTensorType);
    for name in EdgeQuant::NAMES {
        assert_eq!(EdgeQuant::parse(name).unwrap().name(), name);
    }
}

#[test]
fn bundle_file_is_written_atomically() {
    let dir = std::env::temp_dir().join(format!("liger-bundle-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.bundle");
    let model = tiny_liger(8);
    write_bundle(&path, &model, EdgeQuant::Q4).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, bundle_bytes(&model, EdgeQuant::Q4).unwrap());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a temporary file was left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chunked_prefill_generates_the_same_tokens() {
    use crate::generate::{GenerateOptions, Generator};
    let model = load(bundle_bytes(&tiny_liger(9), EdgeQuant::Int8).unwrap()).unwrap();
    let prompt = random_tokens(10, 150);
    let opts = GenerateOptions { max_tokens: 12, ignore_eos: true, ..GenerateOptions::default() };
    let run = |chunk: usize| {
        let mut g = Generator::with_prefill_chunk(&model, &prompt, &opts, chunk).unwrap();
        while g.step().unwrap().is_some() {}
        g.into_result().tokens
    };
    let whole = run(usize::MAX);
    assert_eq!(whole.len(), 12);
    assert_eq!(run(16), whole);
    assert_eq!(run(1), whole);
}

#[test]
fn a_bundle_loaded_tensor_by_tensor_equals_one_loaded_whole() {
    let model = tiny_liger(5);
    let tokens = random_tokens(6, 20);
    let bytes = bundle_bytes(&model, EdgeQuant::Q4_1).unwrap();
    let whole = load(bytes.clone()).unwrap().all_logits(&tokens).unwrap();
    // What a streaming reader has once the header is in: the prefix up to the data.
    let pending = PendingBundle::from_prefix(&bytes[..PREAMBLE_BYTES + read_preamble(&bytes).unwrap()]).unwrap();
    assert!(pending.header.tokenizer.is_empty());
    let data = &bytes[pending.data_start..];
    let tensors: Vec<Vec<u8>> = pending.spans().iter().map(|&(o, n)| data[o..o + n].to_vec()).collect();
    let mut short = tensors.clone();
    short[0].pop();
    let Err(err) = PendingBundle::from_prefix(&bytes).unwrap().finish_with_tensors(short) else {
        panic!("a short tensor buffer was taken");
    };
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let streamed = pending.finish_with_tensors(tensors).unwrap().all_logits(&tokens).unwrap();
    assert_eq!(streamed, whole);
}
