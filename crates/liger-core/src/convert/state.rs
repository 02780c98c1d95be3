//! What one sequence keeps between decoding calls: per Liger layer a fixed-size recurrent
//! state and window, per softmax layer (hybrid models only) a growing key/value cache.

use crate::error::{Error, Result};
use crate::liger::{HeadShape, LigerAttentionConfig, LigerLayerState};

/// Keys (after RoPE) and values `[tokens, hkv, D]` of one softmax-attention layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttentionCache {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

impl AttentionCache {
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * std::mem::size_of::<f32>()
    }
}

/// One layer's decoding state.
#[derive(Debug, Clone, PartialEq)]
// One per layer, so the larger Liger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LayerState {
    Liger(LigerLayerState),
    Softmax(AttentionCache),
}

impl LayerState {
    pub fn bytes(&self) -> usize {
        match self {
            LayerState::Liger(s) => s.bytes(),
            LayerState::Softmax(c) => c.bytes(),
        }
    }
}

/// The decoding state of one sequence. Made empty by `CausalLm::new_state`; the layers are
/// set up on the first forward call (which can report bad options as an error).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LigerState {
    pub layers: Vec<LayerState>,
    /// Tokens consumed so far.
    pub position: usize,
}

impl LigerState {
    /// Memory held now, in bytes.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerState::bytes).sum()
    }

    /// Tokens consumed so far.
    pub fn len(&self) -> usize {
        self.position
    }

    pub fn is_empty(&self) -> bool {
        self.position == 0
    }

    /// Sets up the layers of a fresh state, or checks that an existing one has the model's
    /// layer kinds.
    pub(crate) fn prepare(
        &mut self,
        attention: &LigerAttentionConfig,
        shape: HeadShape,
        is_softmax: &[bool],
    ) -> Result<()> {
        if self.layers.is_empty() && self.position == 0 {
            for &softmax in is_softmax {
                self.layers.push(if softmax {
                    LayerState::Softmax(AttentionCache::default())
                } else {
                    LayerState::Liger(LigerLayerState::new(attention, shape)?)
                });
            }
            return Ok(());
        }
        let same = self.layers.len() == is_softmax.len()
            && self.layers.iter().zip(is_softmax).all(|(l, &s)| matches!(l, LayerState::Softmax(_)) == s);
        if !same {
            return Err(Error::shape(
                "this decoding state belongs to a model with other layers; start it with the model's new_state()",
            ));
        }
        Ok(())
    }
}
