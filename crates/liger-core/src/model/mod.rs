//! The base model on the CPU.

pub mod forward;
pub mod ops;

#[cfg(test)]
mod tests;
