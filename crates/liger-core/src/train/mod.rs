//! Training on the CPU: LoRA adapters, backward passes, loss, optimiser, the training loop.

pub mod backward;
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod job;
pub mod lora;
pub mod loss;
pub mod optim;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
pub mod trainer;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod job_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trainer_tests;
