//! liger-cuda: the Liger engine's GPU side on NVIDIA hardware, through cudarc.
//!
//! The CUDA libraries are loaded at run time, so this crate builds on machines without CUDA.
//! Kernels live in `kernels/*.cu` (one file per op family), are compiled with NVRTC for the
//! GPU at hand at first use, and are cached on disk. Every kernel has a CPU twin in
//! `liger-core` and a GPU test (feature `gpu-tests`) that compares the two.

pub mod buffer;
pub mod context;
pub mod error;
pub mod gemm;
pub mod kernels;
pub mod launch;
pub mod model;
pub mod nvrtc;
pub mod ops;
pub mod profile;

pub use buffer::{GpuBuffer, GpuElement};
pub use context::{DeviceInfo, GpuContext};
pub use gemm::{gemm, GemmDims, GemmInput};
pub use model::{open_gpu, run_linearize_on_gpu, GpuLigerModel, GpuLigerState, GpuWeights};
