//! Hugging Face checkpoints: `config.json` plus safetensors weights, read and written.
//!
//! - [`parse_config`] / [`config_to_json`]: `config.json` <-> [`ModelConfig`](crate::ModelConfig)
//!   for `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM`.
//! - [`SafetensorsFile`]: one safetensors file, validated, its tensors viewed in place.
//! - [`load_hf_dir`] / [`save_hf_dir`]: whole checkpoint directories (native only: memory maps
//!   and the file system). Saving is atomic, so a crash never leaves a half-written model.

mod config;
mod safetensors_io;

#[cfg(not(target_arch = "wasm32"))]
mod checkpoint;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fsutil;
#[cfg(not(target_arch = "wasm32"))]
pub use fsutil::{check_output_dir, check_replaceable_dir};

pub use config::{config_from_value, config_to_json, parse_config, SUPPORTED_ARCHITECTURES};
pub use safetensors_io::{safetensors_to_bytes, SafetensorsFile, SaveDtype};

#[cfg(not(target_arch = "wasm32"))]
pub use checkpoint::{
    load_hf_dir, read_hf_config, save_hf_dir, save_hf_dir_with_shard_size, HfCheckpoint, HfExtraFiles,
    DEFAULT_MAX_SHARD_BYTES,
};
#[cfg(not(target_arch = "wasm32"))]
pub use safetensors_io::{read_safetensors_f32, write_safetensors};
