//! The kernels' Rust entry points, one module per kernel file. Each checks shapes on the host
//! (a typed error, never a fault on the GPU), then queues the kernel on the context's stream.
//! Outputs are caller-provided buffers, written in full.

pub mod adamw;
pub mod attention;
pub mod attention_transfer;
pub mod cross_entropy;
pub mod decode;
pub mod embedding;
pub mod head_mix;
pub mod mixer;
pub mod rms_norm;
pub mod sampling;
pub mod swiglu;

use crate::buffer::GpuElement;

/// The kernel variant for element type `T`: `f32_name` or `bf16_name`.
fn variant<T: GpuElement>(f32_name: &'static str, bf16_name: &'static str) -> &'static str {
    if T::KERNEL_SUFFIX == "bf16" {
        bf16_name
    } else {
        f32_name
    }
}
