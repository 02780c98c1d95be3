//! liger-core: Llama-family models as gated linear recurrent models (the Liger method).
//!
//! Everything that is math or file format lives here, with no GPU and no JavaScript, so
//! it builds both natively and for wasm32: model formats (GGUF, safetensors checkpoints),
//! the tokenizer and chat template, the base model on the CPU, and sampling.

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
