//! What a conversion is asked to do: which mixer the Liger layers use, which layers keep
//! softmax attention, and where LoRA adapters go.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::liger::{HeadMix, HeadShape, LigerAttentionConfig};
use serde::{Deserialize, Serialize};

/// How the base model's attention layers are replaced.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LigerOptions {
    /// Liger attention of every converted layer (GLA mixer, 65-key window, alpha = beta = 0.5
    /// by default).
    pub attention: LigerAttentionConfig,
    /// Layers (0-based) that keep full softmax attention: the inter-layer hybrid. Empty: every
    /// layer is converted and decoding memory is constant in the sequence length.
    pub softmax_layers: Vec<usize>,
    /// Learned branch weights per query head, one entry per layer (`None` for the softmax
    /// layers), trained with the adapters. Empty: every head mixes with `attention.alpha` and
    /// `attention.beta`. See [`crate::liger::head_mix`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub head_mix: Vec<Option<HeadMix>>,
}

impl LigerOptions {
    /// The hybrid that keeps softmax attention in one layer of every `n`: layers `i` with
    /// `i % n == n - 1`, so the first layer is always converted and `n = 8` on 30 layers
    /// keeps layers 7, 15 and 23 (about one in eight, like the paper's "-H" models).
    pub fn with_softmax_every(n: usize, num_layers: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid_argument(
                "softmax_every must be at least 1 (1 keeps every layer as softmax attention; 8 is the paper's hybrid)",
            ));
        }
        let softmax_layers = (0..num_layers).filter(|i| i % n == n - 1).collect();
        Ok(LigerOptions { attention: LigerAttentionConfig::default(), softmax_layers, head_mix: Vec::new() })
    }

    /// These options with learned branch weights per head, starting from `attention.alpha` and
    /// `attention.beta` in every Liger layer of a model of `num_layers` layers and `heads`
    /// query heads.
    pub fn with_learned_head_mix(mut self, num_layers: usize, heads: usize) -> Self {
        self.head_mix = (0..num_layers)
            .map(|l| (!self.is_softmax_layer(l)).then(|| HeadMix::uniform(&self.attention, heads)))
            .collect();
        self
    }

    /// The learned branch weights of `layer`, if the model learns them.
    pub fn head_mix_of(&self, layer: usize) -> Option<&HeadMix> {
        self.head_mix.get(layer).and_then(|m| m.as_ref())
    }

    /// Whether `layer` keeps softmax attention.
    pub fn is_softmax_layer(&self, layer: usize) -> bool {
        self.softmax_layers.contains(&layer)
    }

    /// Checks the options against the model they will convert.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let shape = HeadShape::new(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)?;
        self.attention.validate(shape, &cfg.rope_inv_freq()).map_err(|e| e.context("attention"))?;
        for (i, &layer) in self.softmax_layers.iter().enumerate() {
            if layer >= cfg.num_layers {
                return Err(Error::invalid_argument(format!(
                    "softmax_layers: layer {layer} does not exist; the model has {} layers (0..{})",
                    cfg.num_layers,
                    cfg.num_layers - 1
                )));
            }
            if self.softmax_layers[..i].contains(&layer) {
                return Err(Error::invalid_argument(format!("softmax_layers: layer {layer} is listed twice")));
            }
        }
        self.validate_head_mix(cfg)
    }

    fn validate_head_mix(&self, cfg: &ModelConfig) -> Result<()> {
        if self.head_mix.is_empty() {
            return Ok(());
        }
        if self.head_mix.len() != cfg.num_layers {
            return Err(Error::shape(format!(
                "head mix: {} layers of weights for a model of {} layers",
                self.head_mix.len(),
                cfg.num_layers
            )));
        }
        for (layer, mix) in self.head_mix.iter().enumerate() {
            match (mix, self.is_softmax_layer(layer)) {
                (Some(m), false) => m.validate(cfg.num_heads).map_err(|e| e.context(format!("layer {layer}")))?,
                (None, true) => {}
                (Some(_), true) => {
                    return Err(Error::invalid_argument(format!(
                        "head mix: layer {layer} keeps softmax attention and has no branches to weigh"
                    )))
                }
                (None, false) => {
                    return Err(Error::invalid_argument(format!(
                        "head mix: Liger layer {layer} has no weights (every Liger layer needs them, or none)"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A projection of the attention block that can carry a LoRA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    #[serde(alias = "q_proj")]
    Q,
    #[serde(alias = "k_proj")]
    K,
    #[serde(alias = "v_proj")]
    V,
    #[serde(alias = "o_proj")]
    O,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 4] = [LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O];

    /// The projection's name in Hugging Face Llama checkpoints.
    pub fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// LoRA adapters added to the converted model (the paper: rank 8, alpha 8 on q, k, v).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LoraOptions {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<LoraTarget>,
    /// Seed of the adapters' random `A` matrices.
    pub seed: u64,
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions { rank: 8, alpha: 8.0, targets: vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V], seed: 0 }
    }
}

impl LoraOptions {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::invalid_argument("lora rank must be at least 1 (8 is the paper's)"));
        }
        if !self.alpha.is_finite() {
            return Err(Error::invalid_argument(format!("lora alpha must be a finite number, got {}", self.alpha)));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].contains(t) {
                return Err(Error::invalid_argument(format!("lora targets: {} is listed twice", t.module_name())));
            }
        }
        Ok(())
    }

    pub fn has(&self, target: LoraTarget) -> bool {
        self.targets.contains(&target)
    }
}
