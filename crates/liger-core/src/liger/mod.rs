//! The Liger token mixers on the CPU: the gated recurrent branch (GRM) in every gate variant
//! (`gla/` for the gated linear attention family, `gsa`, `gated_delta`, dispatched by kind in
//! `mixer`), sliding-window and full softmax attention (`swa`), their combination
//! (`liger_attention`) and the surprise cache (`surprise`), each in a chunked/blocked form
//! (training, prefill), a single-step form (decoding), a backward, and a float64 reference
//! ([`naive`]) for tests.

pub mod config;
mod feature;
pub mod gated_delta;
mod gla;
pub mod gsa;
pub mod head_mix;
mod heads;
pub mod liger_attention;
pub mod mixer;
pub mod naive;
pub mod surprise;
pub mod swa;

#[cfg(test)]
mod tests;

pub use config::{GsaScale, HeadShape, MixerConfig, MixerKind, DEFAULT_GATE_NORMALIZER, DEFAULT_GSA_SLOTS};
pub use head_mix::HeadMix;
pub use heads::QkvGrads;
pub use liger_attention::{
    liger_attention_backward, liger_attention_branches, liger_attention_forward, LigerAttentionConfig, LigerLayerState,
    SurpriseCache, MAX_SINK_KEYS,
};
pub use mixer::{chunk_backward, chunk_forward, recurrent_step, MixerState, DEFAULT_CHUNK_SIZE};
pub use surprise::{SurpriseMemory, MAX_SURPRISE_KEYS};
pub use swa::{
    causal_attention_backward, causal_attention_forward, swa_backward, swa_forward, SwaCache, Window,
    DEFAULT_WINDOW_KEYS, FULL_ATTENTION,
};
