//! Conversion of a pretrained Llama-family model into a Liger model (arXiv 2503.01496):
//! the options ([`LigerOptions`], [`LoraOptions`]), the converted model ([`LigerModel`],
//! made by [`linearize`]) with its parallel forward, constant-memory decoding
//! ([`LigerState`]) and the gradients of its LoRA adapters.

mod attention_transfer;
mod backward;
mod info;
mod model;
mod options;
mod state;

#[cfg(test)]
mod tests;

pub use crate::nn::loss::LossOutput;
pub use backward::LoraGrads;
pub use info::model_info_json;
pub use model::{linearize, LayerLora, LigerModel, LoraSet};
pub use options::{LigerOptions, LoraOptions, LoraTarget};
pub use state::{AttentionCache, LayerState, LigerState};
