//! Building blocks of the models and of training, below the converted model and the training
//! run: the decoder's differentiable ops, each with its forward and backward side by side
//! (RMSNorm, RoPE, SwiGLU), LoRA adapters, the loss and the optimiser.

pub mod lora;
pub mod loss;
pub mod optim;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

#[cfg(test)]
mod tests;
