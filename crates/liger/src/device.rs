//! Where a job runs: the CPU engine of `liger-core`, or the CUDA engine of `liger-cuda` on one
//! GPU (only in a build with the `cuda` feature).

use std::str::FromStr;

use liger_core::{Error, Result};

/// The engine a job runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// The NVIDIA GPU of this index.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;

    /// "cpu", or "cuda" for the first GPU.
    fn from_str(name: &str) -> Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => Err(Error::invalid_argument(format!("unknown device {other:?}; known: cpu, cuda"))),
        }
    }
}

impl std::fmt::Display for Device {
    /// "cpu", "cuda" for the first GPU, "cuda:N" for another (what `from_str` reads back for
    /// the first two).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(0) => write!(f, "cuda"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// A GPU as the CUDA engine opens it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub name: String,
    /// (major, minor): (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
    pub free_memory_bytes: usize,
    /// As the driver reports it: 13000 for CUDA 13.0.
    pub driver_version: i32,
}

/// The GPU of this index; the reason there is none to use (no driver, no device, an old
/// driver, a build without CUDA) is a DEVICE_UNAVAILABLE error.
#[cfg(feature = "cuda")]
pub fn gpu_info(index: usize) -> Result<GpuInfo> {
    let info = liger_cuda::open_gpu(index)?.info().clone();
    Ok(GpuInfo {
        name: info.name,
        compute_capability: info.compute_capability,
        total_memory_bytes: info.total_memory,
        free_memory_bytes: info.free_memory,
        driver_version: info.driver_version,
    })
}

#[cfg(not(feature = "cuda"))]
pub fn gpu_info(_index: usize) -> Result<GpuInfo> {
    Err(no_cuda_engine())
}

/// What asking for a GPU gives in a build without the CUDA engine.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda_engine() -> Error {
    Error::new(
        liger_core::ErrorCode::DeviceUnavailable,
        "this build of liger has no CUDA engine (it was built without the cuda feature); use the CPU",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use liger_core::ErrorCode;

    #[test]
    fn parses_cpu_and_cuda() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!(Device::default(), Device::Cpu);
    }

    #[test]
    fn a_device_prints_as_it_is_parsed() {
        for device in [Device::Cpu, Device::Cuda(0)] {
            assert_eq!(device.to_string().parse::<Device>().unwrap(), device);
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn anything_else_is_invalid_argument_naming_the_known_devices() {
        for name in ["tpu", "CPU", "", "cuda:0", "auto"] {
            let err = name.parse::<Device>().unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert_eq!(err.message, format!("unknown device {name:?}; known: cpu, cuda"));
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_cuda_engine_a_gpu_is_device_unavailable() {
        assert_eq!(gpu_info(0).unwrap_err().code, ErrorCode::DeviceUnavailable);
    }
}
