//! GGUF -> model: the q/k row permutation, config and weights from synthetic and real files.

mod gguf_common;

use gguf_common::{open_fixture, random_values};
use liger_core::gguf::{
    load_gguf_model, permute_qk_rows_from_gguf, permute_qk_rows_to_gguf, GgufFile, GgufValue, GgufWriter,
};
use liger_core::quant::quantize;
use liger_core::testing::default_model_path;
use liger_core::{ErrorCode, GgmlType, QTensor};

/// llama.cpp's converter, written as an index map: GGUF row `h*hd + 2j + s` = HF row `h*hd + s*hd/2 + j`.
fn converter_permute(hf: &[f32], rows: usize, cols: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    for h in 0..rows / hd {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let (g, r) = (h * hd + 2 * j + s, h * hd + s * hd / 2 + j);
                out[g * cols..(g + 1) * cols].copy_from_slice(&hf[r * cols..(r + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn qk_permutation_round_trips() {
    let (rows, cols, hd) = (3 * 8, 5, 8);
    let hf = random_values(1, rows * cols, 1.0);
    let hf_t = QTensor::from_f32(rows, cols, hf.clone());
    let gguf_t = permute_qk_rows_to_gguf(&hf_t, hd).unwrap();
    assert_eq!(gguf_t.to_f32().as_ref(), converter_permute(&hf, rows, cols, hd).as_slice());
    let back = permute_qk_rows_from_gguf(&gguf_t, hd).unwrap();
    assert_eq!(back.to_f32().as_ref(), hf.as_slice());
    // Quantized rows move as whole blocks.
    let q = QTensor::new(
        GgmlType::Q8_0,
        16,
        64,
        liger_core::tensor::ByteView::from_vec(quantize(GgmlType::Q8_0, &random_values(2, 16 * 64, 1.0)).unwrap()),
    )
    .unwrap();
    let there_and_back = permute_qk_rows_from_gguf(&permute_qk_rows_to_gguf(&q, 8).unwrap(), 8).unwrap();
    assert_eq!(there_and_back.data.as_slice(), q.data.as_slice());
    // Rows that are not whole heads are a shape error.
    let e = permute_qk_rows_from_gguf(&QTensor::from_f32(12, 2, vec![0.5; 24]), 8).unwrap_err();
    assert_eq!(e.code, ErrorCode::ShapeMismatch);
}

/// GGML's interleaved-pair RoPE on GGUF-ordered rows equals rotate-half RoPE on
/// Hugging Face rows (float64).
#[test]
fn interleaved_rope_on_gguf_rows_equals_rotate_half_on_hf_rows() {
    let (heads, hd, cols) = (3, 16, 7);
    let rows = heads * hd;
    let w_hf = random_values(3, rows * cols, 1.0);
    let w_gguf =
        permute_qk_rows_to_gguf(&QTensor::from_f32(rows, cols, w_hf.clone()), hd).unwrap().to_f32().into_owned();
    let x: Vec<f64> = random_values(4, cols, 1.0).iter().map(|&v| v as f64).collect();
    let project =
        |w: &[f32]| -> Vec<f64> { (0..rows).map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * x[c]).sum()).collect() };
    let (q_hf, q_gguf) = (project(&w_hf), project(&w_gguf));
    let inv_freq: Vec<f64> = (0..hd / 2).map(|j| 1.0 / 10000f64.powf(2.0 * j as f64 / hd as f64)).collect();
    let mut worst = 0.0f64;
    for pos in [0usize, 1, 17, 1000] {
        let mut rot_hf = q_hf.clone();
        let mut rot_gguf = q_gguf.clone();
        for h in 0..heads {
            for j in 0..hd / 2 {
                let (sin, cos) = (pos as f64 * inv_freq[j]).sin_cos();
                // rotate_half: pairs (j, j + hd/2).
                let (a, b) = (q_hf[h * hd + j], q_hf[h * hd + j + hd / 2]);
                rot_hf[h * hd + j] = a * cos - b * sin;
                rot_hf[h * hd + j + hd / 2] = b * cos + a * sin;
                // GGML: adjacent pairs (2j, 2j + 1).
                let (a, b) = (q_gguf[h * hd + 2 * j], q_gguf[h * hd + 2 * j + 1]);
                rot_gguf[h * hd + 2 * j] = a * cos - b * sin;
                rot_gguf[h * hd + 2 * j + 1] = b * cos + a * sin;
            }
        }
        // Bring the GGUF result into HF order and compare.
        let back =
            permute_qk_rows_from_gguf(&QTensor::from_f32(rows, 1, rot_gguf.iter().map(|&v| v as f32).collect()), hd)
                .unwrap();
        let back_f64: Vec<f64> = {
            // Reorder the f64 values with the same index map (the f32 copy above only checks the API).
            let perm: Vec<usize> = (0..rows)
                .map(|r| {
                    let (h, w) = (r / hd, r % hd);
                    h * hd + 2 * (w % (hd / 2)) + w / (hd / 2)
                })
                .collect();
            perm.iter().map(|&g| rot_gguf[g]).collect()
        };
        for (a, b) in back.to_f32().iter().zip(&back_f64) {
            assert_eq!(*a, *b as f32);
        }
        for (a, b) in back_f64.iter().zip(&rot_hf) {
            worst = worst.max((a - b).abs() / b.abs().max(1e-300));
        }
    }
    eprintln!("RoPE equivalence: max relative error {worst:.2e}");
    assert!(worst < 1e-12, "max relative error {worst:e}");
}

/// A tiny llama GGUF with random weights, written the way llama.cpp lays one out.
struct Tiny {
    writer: GgufWriter,
    wq_hf: Vec<f32>,
}

const H: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 16;
const FFN: usize = 96;
const VOCAB: usize = 10;
const LAYERS: usize = 2;

fn tiny_model(tied: bool) -> Tiny {
    let mut w = GgufWriter::new();
    let s = |v: &str| GgufValue::String(v.into());
    w.add_metadata("general.architecture", s("llama"));
    w.add_metadata("llama.block_count", GgufValue::U32(LAYERS as u32));
    w.add_metadata("llama.embedding_length", GgufValue::U32(H as u32));
    w.add_metadata("llama.feed_forward_length", GgufValue::U32(FFN as u32));
    w.add_metadata("llama.attention.head_count", GgufValue::U32(HEADS as u32));
    w.add_metadata("llama.attention.head_count_kv", GgufValue::U32(KV_HEADS as u32));
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-6));
    w.add_metadata("llama.context_length", GgufValue::U32(256));
    w.add_metadata("llama.rope.dimension_count", GgufValue::U32(HD as u32));
    let tokens = (0..VOCAB).map(|i| GgufValue::String(format!("t{i}"))).collect();
    w.add_metadata("tokenizer.ggml.tokens", GgufValue::Array(tokens));
    w.add_metadata("tokenizer.ggml.bos_token_id", GgufValue::U32(1));
    w.add_metadata("tokenizer.ggml.eos_token_id", GgufValue::U32(2));
    w.add_metadata("tokenizer.ggml.eot_token_id", GgufValue::U32(7));
    let mut seed = 10;
    let mut mat = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, ty: GgmlType| -> Vec<f32> {
        seed += 1;
        let v = random_values(seed, rows * cols, 0.5);
        w.add_tensor(name, &[cols as u64, rows as u64], ty, quantize(ty, &v).unwrap()).unwrap();
        v
    };
    mat(&mut w, "token_embd.weight", VOCAB, H, GgmlType::Q8_0);
    let mut wq_hf = Vec::new();
    for i in 0..LAYERS {
        let n = |s: &str| format!("blk.{i}.{s}");
        w.add_f32(&n("attn_norm.weight"), &[H as u64], &random_values(100 + i as u64, H, 1.0)).unwrap();
        w.add_f32(&n("ffn_norm.weight"), &[H as u64], &random_values(200 + i as u64, H, 1.0)).unwrap();
        // q and k are stored permuted, as the converter does.
        let q = random_values(300 + i as u64, HEADS * HD * H, 0.5);
        let k = random_values(400 + i as u64, KV_HEADS * HD * H, 0.5);
        if i == 0 {
            wq_hf = q.clone();
        }
        w.add_f32(&n("attn_q.weight"), &[H as u64, (HEADS * HD) as u64], &converter_permute(&q, HEADS * HD, H, HD))
            .unwrap();
        w.add_f32(
            &n("attn_k.weight"),
            &[H as u64, (KV_HEADS * HD) as u64],
            &converter_permute(&k, KV_HEADS * HD, H, HD),
        )
        .unwrap();
        mat(&mut w, &n("attn_v.weight"), KV_HEADS * HD, H, GgmlType::Q4_1);
        mat(&mut w, &n("attn_output.weight"), H, HEADS * HD, GgmlType::Q4_0);
        mat(&mut w, &n("ffn_gate.weight"), FFN, H, GgmlType::Q5_0);
        mat(&mut w, &n("ffn_up.weight"), FFN, H, GgmlType::Q5_1);
        mat(&mut w, &n("ffn_down.weight"), H, FFN, GgmlType::Q8_0);
    }
    w.add_f32("output_norm.weight", &[H as u64], &random_values(5, H, 1.0)).unwrap();
    if !tied {
        mat(&mut w, "output.weight", VOCAB, H, GgmlType::F16);
    }
    Tiny { writer: w, wq_hf }
}

fn load(w: &GgufWriter) -> liger_core::Result<(liger_core::ModelConfig, liger_core::weights::ModelWeights)> {
    let f = GgufFile::from_bytes(w.to_bytes().unwrap(), "tiny.gguf").unwrap();
    load_gguf_model(&f)
}

#[test]
fn tiny_model_loads_in_hf_order() {
    let tiny = tiny_model(true);
    let (c, w) = load(&tiny.writer).unwrap();
    assert_eq!((c.num_layers, c.hidden_size, c.intermediate_size), (LAYERS, H, FFN));
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size), (HEADS, KV_HEADS, HD, VOCAB));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (10000.0, 1e-6, 256));
    assert!(c.tie_word_embeddings && w.lm_head.is_none() && !c.attention_bias && c.rope_scaling.is_none());
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2, 7]));
    assert_eq!(w.layers[0].wq.to_f32().as_ref(), tiny.wq_hf.as_slice());
    assert_eq!(w.layers[1].wv.ty, GgmlType::Q4_1);
    let (c, w) = load(&tiny_model(false).writer).unwrap();
    assert!(!c.tie_word_embeddings);
    assert_eq!(w.lm_head.as_ref().unwrap().ty, GgmlType::F16);
}

#[test]
fn tiny_model_errors() {
    let mut t = tiny_model(true);
    t.writer.add_metadata("general.architecture", GgufValue::String("gpt2".into()));
    let e = load(&t.writer).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedArchitecture);
    assert!(e.message.contains("`gpt2`"), "{e}");

    let mut t = tiny_model(true);
    t.writer.add_metadata("llama.feed_forward_length", GgufValue::U32(128));
    let e = load(&t.writer).unwrap_err();
    assert_eq!(e.code, ErrorCode::ShapeMismatch, "{e}");
    assert!(e.message.contains("gate_proj"), "{e}");

    let mut t = tiny_model(true);
    t.writer.add_metadata("llama.attention.layer_norm_rms_epsilon", GgufValue::String("tiny".into()));
    let e = load(&t.writer).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("llama.attention.layer_norm_rms_epsilon"), "{e}");

    let mut t = tiny_model(true);
    t.writer.add_metadata("llama.rope.dimension_count", GgufValue::U32(8));
    assert_eq!(load(&t.writer).unwrap_err().code, ErrorCode::UnsupportedArchitecture);

    let mut t = tiny_model(true);
    t.writer.add_metadata("llama.rope.scaling.type", GgufValue::String("yarn".into()));
    assert_eq!(load(&t.writer).unwrap_err().code, ErrorCode::UnsupportedArchitecture);

    // A missing key is named.
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    let e = load(&w).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidFile);
    assert!(e.message.contains("llama.embedding_length"), "{e}");
}

#[test]
fn llama3_rope_scaling_from_rope_freqs_tensor() {
    let mut t = tiny_model(true);
    let theta = 500000.0f32;
    t.writer.add_metadata("llama.rope.freq_base", GgufValue::F32(theta));
    t.writer.add_metadata("llama.rope.scaling.original_context_length", GgufValue::U32(64));
    // Divisors as the converter computes them for factor 8, low 1, high 4.
    let expected = liger_core::config::Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };
    let divisors: Vec<f32> = (0..HD / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / HD as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let (low_wl, high_wl) = (64.0 / 1.0, 64.0 / 4.0);
            if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                8.0
            } else {
                let smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
                (1.0 / ((1.0 - smooth) / 8.0 + smooth)) as f32
            }
        })
        .collect();
    assert!(divisors.contains(&8.0) && divisors.contains(&1.0), "{divisors:?}");
    t.writer.add_f32("rope_freqs.weight", &[(HD / 2) as u64], &divisors).unwrap();
    let (c, _) = load(&t.writer).unwrap();
    assert_eq!(c.rope_scaling, Some(expected));

    // Divisors no llama3 parameters produce are refused.
    let mut t = tiny_model(true);
    t.writer.add_f32("rope_freqs.weight", &[(HD / 2) as u64], &[1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]).unwrap();
    assert_eq!(load(&t.writer).unwrap_err().code, ErrorCode::UnsupportedArchitecture);
}

#[test]
fn default_model_config_and_weights() {
    let file = GgufFile::open(&default_model_path()).unwrap();
    let (c, w) = load_gguf_model(&file).unwrap();
    assert_eq!((c.num_layers, c.hidden_size, c.intermediate_size), (30, 576, 1536));
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size), (9, 3, 64, 49152));
    assert_eq!(c.rope_theta, 100000.0);
    assert!(c.tie_word_embeddings && w.lm_head.is_none());
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
    assert_eq!((w.embed.ty, w.layers[0].wq.ty), (GgmlType::Q8_0, GgmlType::Q4_1));

    // The first embedding rows and layer 0's q/k match gguf-py's dequantization exactly,
    // q/k after undoing the converter's permutation.
    let reference = open_fixture("smollm2-135m-reference-v1.gguf");
    let rows = reference.tensor_f32("token_embd.rows_0_4").unwrap();
    let mut row = vec![0.0f32; 576];
    for r in 0..4 {
        w.embed.dequantize_row(r, &mut row);
        assert_eq!(row, rows[r * 576..(r + 1) * 576], "token_embd row {r}");
    }
    for (name, t, n_rows) in [("blk.0.attn_q", &w.layers[0].wq, 576), ("blk.0.attn_k", &w.layers[0].wk, 192)] {
        let gguf_order = reference.tensor_f32(name).unwrap();
        let hf = converter_permute(&t.to_f32(), n_rows, 576, 64);
        assert_eq!(hf, gguf_order, "{name}");
    }
}
