//! The CPU decoder against a plain float64 re-implementation, and cached decoding against
//! one full forward.

use super::forward::{forward, forward_observed, KvCache, Logits};
use crate::config::{Architecture, Llama3RopeScaling, ModelConfig};
use crate::testing::{max_rel_error, random_tokens, random_weights, tiny_config};
use crate::weights::ModelWeights;
use crate::ErrorCode;

/// Sees the reference's attention weights: `(layer, position, head, weights)`.
type SeenWeights<'a> = dyn FnMut(usize, usize, usize, &[f64]) + 'a;

/// The decoder in float64, written as directly as possible from the definitions.
fn reference_logits(cfg: &ModelConfig, w: &ModelWeights, tokens: &[u32]) -> Vec<f64> {
    reference_forward(cfg, w, tokens, &mut |_, _, _, _| {})
}

/// [`reference_logits`], showing each query's attention weights to
/// `seen(layer, position, head, weights)`.
fn reference_forward(cfg: &ModelConfig, w: &ModelWeights, tokens: &[u32], seen: &mut SeenWeights) -> Vec<f64> {
    let f64s = |t: &crate::QTensor| t.to_f32().iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let vf = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    // y[r] = sum_c W[r, c] x[c]
    let mv = |wm: &[f64], rows: usize, x: &[f64]| -> Vec<f64> {
        let cols = x.len();
        (0..rows).map(|r| (0..cols).map(|c| wm[r * cols + c] * x[c]).sum()).collect()
    };
    let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + cfg.rms_norm_eps as f64).sqrt();
        x.iter().zip(g).map(|(a, b)| a * inv * b).collect()
    };
    let inv_freq: Vec<f64> = cfg.rope_inv_freq().iter().map(|&f| f as f64).collect();
    let hd = cfg.head_dim;
    let rope = |x: &mut [f64], pos: usize| {
        for head in x.chunks_mut(hd) {
            let orig = head.to_vec();
            for j in 0..hd / 2 {
                let a = pos as f64 * inv_freq[j];
                head[j] = orig[j] * a.cos() - orig[j + hd / 2] * a.sin();
                head[j + hd / 2] = orig[j + hd / 2] * a.cos() + orig[j] * a.sin();
            }
        }
    };
    let embed = f64s(&w.embed);
    let mut xs: Vec<Vec<f64>> =
        tokens.iter().map(|&t| embed[t as usize * cfg.hidden_size..][..cfg.hidden_size].to_vec()).collect();
    for (layer, l) in w.layers.iter().enumerate() {
        let (wq, wk, wv, wo) = (f64s(&l.wq), f64s(&l.wk), f64s(&l.wv), f64s(&l.wo));
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in xs.iter().enumerate() {
            let h = norm(x, &vf(&l.attn_norm));
            let mut q = mv(&wq, cfg.q_size(), &h);
            let mut k = mv(&wk, cfg.kv_size(), &h);
            let mut v = mv(&wv, cfg.kv_size(), &h);
            if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
                q.iter_mut().zip(bq).for_each(|(a, b)| *a += *b as f64);
                k.iter_mut().zip(bk).for_each(|(a, b)| *a += *b as f64);
                v.iter_mut().zip(bv).for_each(|(a, b)| *a += *b as f64);
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                q = q.chunks(hd).flat_map(|c| norm(c, &vf(qn))).collect();
                k = k.chunks(hd).flat_map(|c| norm(c, &vf(kn))).collect();
            }
            rope(&mut q, pos);
            rope(&mut k, pos);
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let group = cfg.num_heads / cfg.num_kv_heads;
        for (i, x) in xs.iter_mut().enumerate() {
            let mut o = vec![0.0; cfg.q_size()];
            for head in 0..cfg.num_heads {
                let kvh = head / group;
                let q = &qs[i][head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        q.iter().zip(&ks[j][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                seen(layer, i, head, &e.iter().map(|v| v / z).collect::<Vec<f64>>());
                for j in 0..=i {
                    for d in 0..hd {
                        o[head * hd + d] += e[j] / z * vs[j][kvh * hd + d];
                    }
                }
            }
            let y = mv(&wo, cfg.hidden_size, &o);
            x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        }
        let (wg, wu, wd) = (f64s(&l.w_gate), f64s(&l.w_up), f64s(&l.w_down));
        for x in xs.iter_mut() {
            let h = norm(x, &vf(&l.ffn_norm));
            let g = mv(&wg, cfg.intermediate_size, &h);
            let u = mv(&wu, cfg.intermediate_size, &h);
            let a: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let y = mv(&wd, cfg.hidden_size, &a);
            x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        }
    }
    let head = f64s(w.lm_head());
    xs.iter().flat_map(|x| mv(&head, cfg.vocab_size, &norm(x, &vf(&w.final_norm)))).collect()
}

fn check_against_reference(cfg: &ModelConfig) {
    let seed: u64 = rand::random();
    let w = random_weights(cfg, seed);
    w.validate(cfg).unwrap();
    let tokens = random_tokens(37, cfg.vocab_size, seed ^ 1);
    let mut cache = KvCache::new(cfg.num_layers);
    let ours = forward(cfg, &w, &cfg.rope_inv_freq(), &mut cache, &tokens, Logits::All).unwrap();
    let want = reference_logits(cfg, &w, &tokens);
    let err = max_rel_error(&ours, &want);
    println!("{:?}: max rel error {err:.2e} (seed {seed})", cfg.architecture);
    assert!(err < 1e-4, "{:?}: max rel error {err} (seed {seed})", cfg.architecture);
}

/// The attention weights `forward_observed` shows are the float64 reference's, one row per
/// (layer, position, head), and observing changes nothing in the logits.
#[test]
fn observed_attention_weights_match_float64_reference() {
    use std::sync::Mutex;
    let cfg = tiny_config(Architecture::Qwen2);
    let seed: u64 = rand::random();
    let w = random_weights(&cfg, seed);
    let tokens = random_tokens(23, cfg.vocab_size, seed ^ 3);
    let rows = Mutex::new(std::collections::BTreeMap::new());
    let observe = |layer: usize, pos: usize, head: usize, p: &[f32]| {
        rows.lock().unwrap().insert((layer, pos, head), p.to_vec());
    };
    let inv_freq = cfg.rope_inv_freq();
    // In two calls, so that the second one's positions continue after the cache.
    let mut cache = KvCache::new(cfg.num_layers);
    forward_observed(&cfg, &w, &inv_freq, &mut cache, &tokens[..9], Logits::Last, Some(&observe)).unwrap();
    let observed =
        forward_observed(&cfg, &w, &inv_freq, &mut cache, &tokens[9..], Logits::All, Some(&observe)).unwrap();
    let mut plain_cache = KvCache::new(cfg.num_layers);
    forward(&cfg, &w, &inv_freq, &mut plain_cache, &tokens[..9], Logits::Last).unwrap();
    let plain = forward(&cfg, &w, &inv_freq, &mut plain_cache, &tokens[9..], Logits::All).unwrap();
    assert_eq!(observed, plain);
    let mut reference = Vec::new();
    reference_forward(&cfg, &w, &tokens, &mut |layer, pos, head, p| reference.push(((layer, pos, head), p.to_vec())));
    let rows = rows.into_inner().unwrap();
    assert_eq!(rows.len(), cfg.num_layers * tokens.len() * cfg.num_heads);
    let mut worst = 0.0f64;
    for (at, want) in &reference {
        let got = &rows[at];
        assert_eq!(got.len(), at.1 + 1, "a row per key up to the query's own");
        worst = worst.max(max_rel_error(got, want));
    }
    println!("observed attention weights: max rel error {worst:.2e} (seed {seed})");
    assert!(worst < 1e-4, "max rel error {worst} (seed {seed})");
}

#[test]
fn forward_matches_float64_reference_for_each_architecture() {
    for arch in [Architecture::Llama, Architecture::Mistral, Architecture::Qwen2, Architecture::Qwen3] {
        check_against_reference(&tiny_config(arch));
    }
}

#[test]
fn forward_matches_float64_reference_with_llama3_rope_scaling() {
    let mut cfg = tiny_config(Architecture::Llama);
    cfg.rope_theta = 500000.0;
    cfg.rope_scaling = Some(Llama3RopeScaling {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    });
    check_against_reference(&cfg);
}

#[test]
fn cached_decoding_equals_one_full_forward() {
    let cfg = tiny_config(Architecture::Llama);
    let seed: u64 = rand::random();
    let w = random_weights(&cfg, seed);
    let inv = cfg.rope_inv_freq();
    let tokens = random_tokens(50, cfg.vocab_size, seed ^ 2);
    let mut full_cache = KvCache::new(cfg.num_layers);
    let full = forward(&cfg, &w, &inv, &mut full_cache, &tokens, Logits::All).unwrap();
    // Prefill 20 tokens, then a chunk of 7, then single steps.
    let mut cache = KvCache::new(cfg.num_layers);
    let v = cfg.vocab_size;
    let mut got = forward(&cfg, &w, &inv, &mut cache, &tokens[..20], Logits::All).unwrap();
    got.extend(forward(&cfg, &w, &inv, &mut cache, &tokens[20..27], Logits::All).unwrap());
    for i in 27..tokens.len() {
        got.extend(forward(&cfg, &w, &inv, &mut cache, &tokens[i..i + 1], Logits::Last).unwrap());
    }
    assert_eq!(cache.len(), tokens.len());
    let full64: Vec<f64> = full.iter().map(|&x| x as f64).collect();
    let err = max_rel_error(&got, &full64);
    assert!(err < 1e-5, "cached vs full: max rel error {err}");
    // Last-only logits equal the last row of all logits.
    let mut c2 = KvCache::new(cfg.num_layers);
    let last = forward(&cfg, &w, &inv, &mut c2, &tokens, Logits::Last).unwrap();
    let err = max_rel_error(&last, &full64[(tokens.len() - 1) * v..]);
    assert!(err < 1e-6, "last logits: {err}");
}

#[test]
fn context_overflow_and_bad_tokens_are_typed_errors() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 7);
    let inv = cfg.rope_inv_freq();
    let mut cache = KvCache::new(cfg.num_layers);
    let too_long = random_tokens(cfg.max_position_embeddings + 1, cfg.vocab_size, 3);
    let err = forward(&cfg, &w, &inv, &mut cache, &too_long, Logits::Last).unwrap_err();
    assert_eq!(err.code, ErrorCode::ContextOverflow);
    assert!(err.message.contains("context"), "{}", err.message);
    let err = forward(&cfg, &w, &inv, &mut cache, &[cfg.vocab_size as u32], Logits::Last).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    let err = forward(&cfg, &w, &inv, &mut cache, &[], Logits::Last).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

/// A model file whose weights hold a NaN or an infinity fails to load, naming the tensor,
/// instead of generating garbage.
#[test]
fn weights_that_are_not_finite_are_refused_at_load() {
    use crate::hf::SaveDtype;
    use crate::tensor::QTensor;
    let dir = std::env::temp_dir().join(format!("liger-nan-{:016x}", rand::random::<u64>()));
    let clean = crate::train::fixtures::tiny_byte_model(3);
    for (what, value) in [("q_proj", f32::NAN), ("ffn_norm", f32::INFINITY)] {
        let mut w = clean.weights.clone();
        if what == "q_proj" {
            let t = &w.layers[1].wq;
            let mut values = t.to_f32().into_owned();
            values[t.cols * 2 + 5] = value;
            w.layers[1].wq = QTensor::from_f32(t.rows, t.cols, values);
        } else {
            w.layers[1].ffn_norm[3] = value;
        }
        let model = super::BaseModel::new(
            clean.config.clone(),
            w,
            clean.tokenizer.clone(),
            None,
            "bad".into(),
            super::ModelFormat::Checkpoint,
        );
        let _ = std::fs::remove_dir_all(&dir);
        model.save_checkpoint(&dir, SaveDtype::F32).unwrap();
        let err = super::load_model(&dir, &mut |_, _| {}).err().expect("refused");
        assert_eq!(err.code, ErrorCode::InvalidFile, "{}", err.message);
        assert!(
            err.message.contains(&format!("layer 1 {what}")) && err.message.contains("NaN or infinite"),
            "{}",
            err.message
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    clean.save_checkpoint(&dir, SaveDtype::F32).unwrap();
    assert!(super::load_model(&dir, &mut |_, _| {}).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Options are checked against a model's config before the model loads: the config read
/// alone is the one the model loads with, and reading it does not touch the weights.
#[test]
fn the_config_reads_without_loading_the_weights() {
    use crate::hf::SaveDtype;
    let dir = std::env::temp_dir().join(format!("liger-config-{:016x}", rand::random::<u64>()));
    let model = crate::train::fixtures::tiny_byte_model(3);
    model.save_checkpoint(&dir, SaveDtype::F32).unwrap();
    let loaded = super::load_model(&dir, &mut |_, _| {}).unwrap();
    assert_eq!(super::read_model_config(&dir).unwrap(), loaded.config);
    // Broken weights fail the load, not the config read.
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    assert!(super::load_model(&dir, &mut |_, _| {}).is_err());
    assert_eq!(super::read_model_config(&dir).unwrap(), loaded.config);
    let missing = super::read_model_config(&dir.join("missing.gguf")).expect_err("refused");
    assert_eq!(missing.code, ErrorCode::Io);
    std::fs::remove_dir_all(&dir).unwrap();
}
