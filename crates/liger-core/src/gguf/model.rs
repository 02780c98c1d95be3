//! Building the model configuration and weights from a GGUF file (llama architecture).
//!
//! llama.cpp's converter reorders the rows of the q and k projections for the llama
//! architecture: Hugging Face checkpoints rotate the two halves of each head in RoPE
//! ("rotate_half"), GGML rotates adjacent pairs. Within each head of `hd` rows, GGUF row
//! `2 * j + s` (`j < hd / 2`, `s` in {0, 1}) is Hugging Face row `s * hd / 2 + j`. We undo
//! this at load, so `ModelWeights` is in Hugging Face order whatever file it came from.

use super::GgufFile;
use crate::config::{Architecture, Llama3RopeScaling, ModelConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::tensor::{ByteView, QTensor};
use crate::weights::{LayerWeights, ModelWeights};

/// Reads the config and weights of a llama-architecture GGUF model.
pub fn load_gguf_model(file: &GgufFile) -> Result<(ModelConfig, ModelWeights)> {
    let config = read_gguf_config(file)?;
    let weights = read_weights(file, &config)?;
    weights.validate(&config).map_err(|e| e.context(file.name()))?;
    Ok((config, weights))
}

/// Reads and checks the config of a llama-architecture GGUF model, without its weights.
pub fn read_gguf_config(file: &GgufFile) -> Result<ModelConfig> {
    let config = read_config(file)?;
    config.validate().map_err(|e| e.context(file.name()))?;
    Ok(config)
}

fn read_config(f: &GgufFile) -> Result<ModelConfig> {
    let arch = f.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::new(
            ErrorCode::UnsupportedArchitecture,
            format!("{}: architecture `{arch}` is not supported from GGUF; only `llama` (Llama, SmolLM, Mistral-style) models are", f.name()),
        ));
    }
    let usize_key = |key: &str| -> Result<usize> {
        let v = f.get_u64(&format!("llama.{key}"))?;
        usize::try_from(v).map_err(|_| Error::invalid_file(f.name(), format!("llama.{key} = {v} is too large")))
    };
    let optional = |key: &str| f.get(&format!("llama.{key}")).is_some();
    let hidden_size = usize_key("embedding_length")?;
    let num_heads = usize_key("attention.head_count")?;
    let num_kv_heads =
        if optional("attention.head_count_kv") { usize_key("attention.head_count_kv")? } else { num_heads };
    if num_heads == 0 {
        return Err(Error::invalid_file(f.name(), "llama.attention.head_count is 0"));
    }
    let head_dim =
        if optional("attention.key_length") { usize_key("attention.key_length")? } else { hidden_size / num_heads };
    if optional("rope.dimension_count") {
        let rope_dims = usize_key("rope.dimension_count")?;
        if rope_dims != head_dim {
            return Err(Error::new(
                ErrorCode::UnsupportedArchitecture,
                format!(
                    "{}: RoPE over {rope_dims} of {head_dim} head dimensions (partial rotary) is not supported",
                    f.name()
                ),
            ));
        }
    }
    let vocab_size = if optional("vocab_size") {
        usize_key("vocab_size")?
    } else if f.get("tokenizer.ggml.tokens").is_some() {
        f.get_str_array("tokenizer.ggml.tokens")?.len()
    } else {
        f.tensor_info("token_embd.weight").map_or(0, |t| t.dims.get(1).copied().unwrap_or(0) as usize)
    };
    let rope_theta = if optional("rope.freq_base") { f.get_f32("llama.rope.freq_base")? } else { 10000.0 };

    let token_id = |key: &str| -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(None),
            Some(_) => {
                let v = f.get_u64(key)?;
                u32::try_from(v)
                    .map(Some)
                    .map_err(|_| Error::invalid_file(f.name(), format!("{key} = {v} is not a token id")))
            }
        }
    };
    let mut eos_token_ids = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = token_id(key)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    let mut config = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size,
        intermediate_size: usize_key("feed_forward_length")?,
        num_layers: usize_key("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta,
        rope_scaling: None,
        rms_norm_eps: f.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        max_position_embeddings: usize_key("context_length")?,
        tie_word_embeddings: !f.has_tensor("output.weight"),
        attention_bias: f.has_tensor("blk.0.attn_q.bias"),
        qk_norm: false,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    config.rope_scaling = read_rope_scaling(f, &config)?;
    Ok(config)
}

/// Llama-3 RoPE scaling. GGUF files record it either with `llama.rope.scaling.*` keys or,
/// as llama.cpp's converter does, as a `rope_freqs.weight` tensor of per-frequency divisors;
/// in the second case we recover the llama3 parameters and check they reproduce the tensor.
fn read_rope_scaling(f: &GgufFile, config: &ModelConfig) -> Result<Option<Llama3RopeScaling>> {
    let kind = match f.get("llama.rope.scaling.type") {
        Some(_) => f.get_str("llama.rope.scaling.type")?,
        None => "none",
    };
    let has_freqs = f.has_tensor("rope_freqs.weight");
    if kind != "none" && kind != "llama3" {
        return Err(Error::new(
            ErrorCode::UnsupportedArchitecture,
            format!("{}: RoPE scaling `{kind}` is not supported (only llama3-style scaling is)", f.name()),
        ));
    }
    if kind == "none" && !has_freqs {
        return Ok(None);
    }
    let key_or = |key: &str, default: f32| -> Result<f32> {
        if f.get(key).is_some() {
            f.get_f32(key)
        } else {
            Ok(default)
        }
    };
    let original = match f.get("llama.rope.scaling.original_context_length") {
        Some(_) => f.get_u64("llama.rope.scaling.original_context_length")? as usize,
        None => 8192, // Llama 3.1's value, which the converter does not always record
    };
    let divisors = if has_freqs { Some(f.tensor_f32("rope_freqs.weight")?) } else { None };
    let default_factor = divisors.as_ref().map_or(1.0, |d| d.iter().copied().fold(1.0f32, f32::max));
    let scaling = Llama3RopeScaling {
        factor: key_or("llama.rope.scaling.factor", default_factor)?,
        low_freq_factor: key_or("llama.rope.scaling.low_freq_factor", 1.0)?,
        high_freq_factor: key_or("llama.rope.scaling.high_freq_factor", 4.0)?,
        original_max_position_embeddings: original,
    };
    if let Some(divisors) = divisors {
        let plain = ModelConfig { rope_scaling: None, ..config.clone() }.rope_inv_freq();
        let scaled = ModelConfig { rope_scaling: Some(scaling), ..config.clone() }.rope_inv_freq();
        let matches = divisors.len() == plain.len()
            && plain.iter().zip(&scaled).zip(&divisors).all(|((p, s), d)| ((p / d) - s).abs() <= 1e-4 * s.abs());
        if !matches {
            return Err(Error::new(
                ErrorCode::UnsupportedArchitecture,
                format!(
                    "{}: the rope_freqs.weight tensor does not match llama3 RoPE scaling (factor {}, low {}, high {}, original context {}); this RoPE variant is not supported",
                    f.name(),
                    scaling.factor,
                    scaling.low_freq_factor,
                    scaling.high_freq_factor,
                    original
                ),
            ));
        }
    }
    Ok(Some(scaling))
}

fn read_weights(f: &GgufFile, c: &ModelConfig) -> Result<ModelWeights> {
    let vector = |name: &str| f.tensor_f32(name);
    let optional_vector = |name: &str| -> Result<Option<Vec<f32>>> {
        if f.has_tensor(name) {
            vector(name).map(Some)
        } else {
            Ok(None)
        }
    };
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let name = |s: &str| format!("blk.{i}.{s}");
        let qk = |s: &str| -> Result<QTensor> {
            let t = f.tensor(&name(s))?;
            permute_qk_rows_from_gguf(&t, c.head_dim).map_err(|e| e.context(format!("{}: {}", f.name(), name(s))))
        };
        let qk_bias = |s: &str| -> Result<Option<Vec<f32>>> {
            match optional_vector(&name(s))? {
                None => Ok(None),
                Some(b) => {
                    let t = QTensor::from_f32(b.len(), 1, b);
                    let t = permute_qk_rows_from_gguf(&t, c.head_dim)
                        .map_err(|e| e.context(format!("{}: {}", f.name(), name(s))))?;
                    Ok(Some(t.to_f32().into_owned()))
                }
            }
        };
        layers.push(LayerWeights {
            attn_norm: vector(&name("attn_norm.weight"))?,
            wq: qk("attn_q.weight")?,
            wk: qk("attn_k.weight")?,
            wv: f.tensor(&name("attn_v.weight"))?,
            wo: f.tensor(&name("attn_output.weight"))?,
            bq: qk_bias("attn_q.bias")?,
            bk: qk_bias("attn_k.bias")?,
            bv: optional_vector(&name("attn_v.bias"))?,
            q_norm: None,
            k_norm: None,
            ffn_norm: vector(&name("ffn_norm.weight"))?,
            w_gate: f.tensor(&name("ffn_gate.weight"))?,
            w_up: f.tensor(&name("ffn_up.weight"))?,
            w_down: f.tensor(&name("ffn_down.weight"))?,
        });
    }
    Ok(ModelWeights {
        embed: f.tensor("token_embd.weight")?,
        layers,
        final_norm: vector("output_norm.weight")?,
        lm_head: if f.has_tensor("output.weight") { Some(f.tensor("output.weight")?) } else { None },
    })
}

/// The GGUF row that holds Hugging Face row `r` (rows grouped in heads of `head_dim`).
fn gguf_row_of_hf_row(r: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (head, within) = (r / head_dim, r % head_dim);
    let (s, j) = (within / half, within % half);
    head * head_dim + 2 * j + s
}

/// Reorders whole rows: row `r` of the result is row `source(r)` of `t`.
fn reorder_rows(t: &QTensor, head_dim: usize, source: impl Fn(usize) -> usize) -> Result<QTensor> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) || !t.rows.is_multiple_of(head_dim) {
        return Err(Error::shape(format!(
            "cannot reorder the q/k rows of a [{}, {}] matrix in heads of {head_dim}: the rows must be a whole number of heads of even size",
            t.rows, t.cols
        )));
    }
    let rb = t.row_bytes();
    let mut bytes = Vec::with_capacity(t.data.len());
    for r in 0..t.rows {
        bytes.extend_from_slice(t.row(source(r)));
    }
    debug_assert_eq!(bytes.len(), rb * t.rows);
    QTensor::new(t.ty, t.rows, t.cols, ByteView::from_vec(bytes))
}

/// Undoes llama.cpp's q/k row permutation: GGUF (interleaved-pair RoPE) order to Hugging
/// Face (rotate-half) order. The result owns a reordered copy of the rows.
pub fn permute_qk_rows_from_gguf(t: &QTensor, head_dim: usize) -> Result<QTensor> {
    reorder_rows(t, head_dim, |r| gguf_row_of_hf_row(r, head_dim))
}

/// Applies llama.cpp's q/k row permutation (Hugging Face order to GGUF order), for export.
pub fn permute_qk_rows_to_gguf(t: &QTensor, head_dim: usize) -> Result<QTensor> {
    // The inverse mapping: GGUF row g = head * hd + 2j + s holds HF row head * hd + s * hd/2 + j.
    reorder_rows(t, head_dim, |g| {
        let (head, within) = (g / head_dim, g % head_dim);
        head * head_dim + (within % 2) * (head_dim / 2) + within / 2
    })
}
