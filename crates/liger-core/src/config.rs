//! The model configuration every loader produces and every engine consumes.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Architectures the base model can have. All are Llama-family decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    /// q/k/v projections carry biases.
    Qwen2,
    /// RMSNorm over each head of q and k before RoPE.
    Qwen3,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// Llama-3 style RoPE frequency scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v biases (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Largest sizes a model config may state: far beyond any released Llama-family model, low
/// enough that nothing sized from them alone can exhaust memory.
pub struct ConfigLimits {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
}

pub const LIMITS: ConfigLimits = ConfigLimits {
    layers: 1024,
    hidden: 1 << 17,
    intermediate: 1 << 20,
    heads: 1024,
    head_dim: 1024,
    vocab: 1 << 23,
    context: 1 << 24,
};

impl ModelConfig {
    /// Checks that the sizes are consistent; loaders call this before building weights.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let bad = |m: String| Err(Error::invalid_argument(format!("invalid model config: {m}")));
        if c.num_layers == 0 || c.hidden_size == 0 || c.vocab_size == 0 || c.intermediate_size == 0 {
            return bad("layers, hidden size, vocabulary and intermediate size must all be positive".into());
        }
        if c.num_heads == 0 || c.num_kv_heads == 0 || c.head_dim == 0 {
            return bad("head counts and head_dim must be positive".into());
        }
        if !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return bad(format!(
                "{} query heads are not a multiple of {} key-value heads",
                c.num_heads, c.num_kv_heads
            ));
        }
        if !c.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", c.head_dim));
        }
        if !(c.rope_theta.is_finite() && c.rope_theta > 0.0 && c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0) {
            return bad("rope_theta and rms_norm_eps must be positive numbers".into());
        }
        // Sizes read from a file decide allocations before any weight is read: bound them.
        for (name, value, limit) in [
            ("layers", c.num_layers, LIMITS.layers),
            ("hidden size", c.hidden_size, LIMITS.hidden),
            ("intermediate size", c.intermediate_size, LIMITS.intermediate),
            ("query heads", c.num_heads, LIMITS.heads),
            ("key-value heads", c.num_kv_heads, LIMITS.heads),
            ("head_dim", c.head_dim, LIMITS.head_dim),
            ("vocabulary", c.vocab_size, LIMITS.vocab),
            ("context length (max_position_embeddings)", c.max_position_embeddings, LIMITS.context),
        ] {
            if value > limit {
                return bad(format!(
                    "{name} is {value}, above the {limit} this library accepts (the file's metadata is likely corrupt)"
                ));
            }
        }
        Ok(())
    }
    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Query heads per key-value head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// The per-pair inverse frequencies of RoPE (`head_dim / 2` values), with llama3 scaling.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / self.head_dim as f64);
                match &self.rope_scaling {
                    None => f as f32,
                    Some(s) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let old = s.original_max_position_embeddings as f64;
                        let low_wavelen = old / s.low_freq_factor as f64;
                        let high_wavelen = old / s.high_freq_factor as f64;
                        if wavelen < high_wavelen {
                            f as f32
                        } else if wavelen > low_wavelen {
                            (f / s.factor as f64) as f32
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor as f64)
                                / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
                            ((1.0 - smooth) * f / s.factor as f64 + smooth * f) as f32
                        }
                    }
                }
            })
            .collect()
    }
}
