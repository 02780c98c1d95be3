//! The training run: data, the training loop, the linearize job and its report. Its building
//! blocks (LoRA, loss, backward passes, optimiser) are in `nn`.

pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod job;
#[cfg(not(target_arch = "wasm32"))]
pub mod layer_choice;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
pub mod trainer;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
