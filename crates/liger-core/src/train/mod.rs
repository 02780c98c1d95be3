//! Training on the CPU: LoRA adapters, backward passes, loss, optimiser.

pub mod backward;
pub mod data;
pub mod lora;
pub mod loss;
pub mod optim;

#[cfg(test)]
mod tests;
