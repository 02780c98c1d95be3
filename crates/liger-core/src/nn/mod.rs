//! Building blocks of training, below the converted model and the training run: LoRA adapters,
//! the loss, the backward passes of the base model's ops, and the optimiser.

pub mod backward;
pub mod lora;
pub mod loss;
pub mod optim;

#[cfg(test)]
mod tests;
