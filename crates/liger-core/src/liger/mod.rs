//! The Liger token mixers on the CPU: the gated recurrent branch (GRM) in every gate
//! variant, sliding-window and full softmax attention, and their combination, each in a
//! chunked/blocked form (training, prefill), a single-step form (decoding), a backward,
//! and a float64 reference ([`naive`]) for tests.

pub mod combine;
pub mod config;
mod feature;
mod gated;
pub mod gated_delta;
pub mod gsa;
mod heads;
pub mod mixer;
pub mod naive;
pub mod rope;
pub mod surprise;
pub mod swa;

#[cfg(test)]
mod tests;

pub use combine::{
    liger_attention_backward, liger_attention_forward, LigerAttentionConfig, LigerLayerState, MAX_SINK_KEYS,
};
pub use config::{GsaScale, HeadShape, MixerConfig, MixerKind, DEFAULT_GATE_NORMALIZER, DEFAULT_GSA_SLOTS};
pub use heads::QkvGrads;
pub use mixer::{chunk_backward, chunk_forward, recurrent_step, MixerState, DEFAULT_CHUNK_SIZE};
pub use rope::apply_rope;
pub use surprise::{SurpriseMemory, MAX_SURPRISE_KEYS};
pub use swa::{
    causal_attention_backward, causal_attention_forward, swa_backward, swa_forward, SwaCache, Window,
    DEFAULT_WINDOW_KEYS, FULL_ATTENTION,
};
