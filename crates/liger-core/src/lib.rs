//! liger-core: Llama-family models as gated linear recurrent models (the Liger method).
//!
//! Everything that is math or file format lives here, with no GPU and no JavaScript, so
//! it builds both natively and for wasm32: model formats (GGUF, safetensors checkpoints),
//! the tokenizer and chat template, the base model on the CPU, and sampling.
//!
//! Layers, bottom up: `linalg`, `quant`, `tensor`; `nn` (the decoder's differentiable ops with
//! their backward: RMSNorm, RoPE, SwiGLU; LoRA, loss, optimiser); `model` (the base model);
//! `liger` (the token mixers, one family per file or folder: `gla/`, `gsa`, `gated_delta`,
//! `swa`, `liger_attention`, `surprise`, with the float64 oracles in `liger::naive`); `convert`
//! (the Liger model); `train` (the training run). The README's "Each op, side by side" table maps
//! every op to its CPU code, its oracle, its GPU kernel and their tests.
//!
//! Unit tests of a module live in `<module>/tests.rs` (or `<module>/tests/`); `tests/` holds
//! the tests through the public API.

pub mod bundle;
pub mod chat;
#[cfg(not(target_arch = "wasm32"))]
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod error;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod liger;
pub mod linalg;
pub mod model;
pub mod nn;
pub mod quant;
pub mod sampling;
pub mod stop;
pub mod tensor;
pub mod testing;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{Error, ErrorCode, Result};
pub use tensor::{GgmlType, QTensor};
