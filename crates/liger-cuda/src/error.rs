//! Turns CUDA driver, cuBLAS and NVRTC failures into the library's typed [`Error`], with advice
//! on what to do. A missing driver, a machine without a GPU and a driver older than the CUDA
//! version this crate is built for are the user's to fix, so they say how.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use liger_core::{Error, ErrorCode};

/// The CUDA version this crate is built against, as the driver reports versions (major*1000 + minor*10).
pub const REQUIRED_DRIVER_VERSION: i32 = 13000;

/// Advice appended to every "no usable GPU" error.
const USE_CPU: &str = "or use the CPU backend";

/// What kind of failure a CUDA driver status code stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverFailure {
    OutOfMemory,
    NoDevice,
    DriverTooOld,
    Other,
}

/// Classifies a raw `CUresult` value.
pub fn classify_driver_status(code: u32) -> DriverFailure {
    match code {
        2 => DriverFailure::OutOfMemory,
        // NOT_INITIALIZED, STUB_LIBRARY, NO_DEVICE, INVALID_DEVICE, DEVICE_NOT_LICENSED
        3 | 34 | 100 | 101 | 102 => DriverFailure::NoDevice,
        // INSUFFICIENT_DRIVER, UNSUPPORTED_PTX_VERSION, SYSTEM_DRIVER_MISMATCH, COMPAT_NOT_SUPPORTED_ON_DEVICE
        35 | 222 | 803 | 804 => DriverFailure::DriverTooOld,
        _ => DriverFailure::Other,
    }
}

/// The error for a failed driver call; `what` names the operation ("allocating 3 MB", "launching rms_norm_forward_f32").
pub fn driver_error(err: DriverError, what: &str) -> Error {
    let code = err.0 as u32;
    let name =
        err.error_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("CUDA error {code}"));
    status_error(code, &name, what)
}

/// The error for a driver status `code` (named `name`) during `what`.
pub fn status_error(code: u32, name: &str, what: &str) -> Error {
    match classify_driver_status(code) {
        DriverFailure::OutOfMemory => Error::new(
            ErrorCode::OutOfMemory,
            format!("the GPU ran out of memory while {what}: lower the batch size or sequence length, {USE_CPU}"),
        ),
        DriverFailure::NoDevice => Error::invalid_argument(format!(
            "no usable NVIDIA GPU ({name} while {what}): check that the GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES), {USE_CPU}"
        )),
        DriverFailure::DriverTooOld => driver_too_old(&format!("{name} while {what}")),
        DriverFailure::Other => Error::internal(format!("CUDA call failed while {what}: {name} ({code})")),
    }
}

fn driver_too_old(detail: &str) -> Error {
    Error::invalid_argument(format!(
        "the NVIDIA driver is too old for this build ({detail}): it needs a driver for CUDA {}.{} or newer (version 580+); update the driver, {USE_CPU}",
        REQUIRED_DRIVER_VERSION / 1000,
        (REQUIRED_DRIVER_VERSION % 1000) / 10
    ))
}

/// Checks a driver version as `cuDriverGetVersion` reports it.
pub fn check_driver_version(version: i32) -> Result<(), Error> {
    if version < REQUIRED_DRIVER_VERSION {
        return Err(driver_too_old(&format!("it supports CUDA {}.{}", version / 1000, (version % 1000) / 10)));
    }
    Ok(())
}

/// The error when the driver library cannot be loaded at all.
pub fn no_driver_error() -> Error {
    Error::invalid_argument(format!(
        "the NVIDIA driver library (libcuda.so.1) could not be loaded: install the NVIDIA driver, {USE_CPU}"
    ))
}

/// The error for a failed cuBLAS call.
pub fn cublas_error(err: CublasError, what: &str) -> Error {
    let status = err.0 as u32;
    match status {
        // CUBLAS_STATUS_ALLOC_FAILED
        3 => Error::new(
            ErrorCode::OutOfMemory,
            format!("cuBLAS ran out of GPU memory while {what}: lower the batch size or sequence length, {USE_CPU}"),
        ),
        _ => Error::internal(format!("cuBLAS failed while {what}: {:?}", err.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_statuses_map_to_codes_with_advice() {
        let oom = status_error(2, "CUDA_ERROR_OUT_OF_MEMORY", "allocating 4 GB");
        assert_eq!(oom.code, ErrorCode::OutOfMemory);
        assert!(oom.message.contains("lower the batch size"), "{}", oom.message);
        assert!(oom.message.contains("allocating 4 GB"), "{}", oom.message);

        let none = status_error(100, "CUDA_ERROR_NO_DEVICE", "opening device 0");
        assert_eq!(none.code, ErrorCode::InvalidArgument);
        assert!(none.message.contains("CPU backend"), "{}", none.message);

        let old = status_error(35, "CUDA_ERROR_INSUFFICIENT_DRIVER", "opening device 0");
        assert_eq!(old.code, ErrorCode::InvalidArgument);
        assert!(old.message.contains("update the driver"), "{}", old.message);

        let other = status_error(700, "CUDA_ERROR_ILLEGAL_ADDRESS", "launching k");
        assert_eq!(other.code, ErrorCode::Internal);
        assert!(other.message.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{}", other.message);
    }

    #[test]
    fn driver_version_check() {
        assert!(check_driver_version(13000).is_ok());
        assert!(check_driver_version(13020).is_ok());
        let err = check_driver_version(12080).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("CUDA 12.8"), "{}", err.message);
        assert!(err.message.contains("CUDA 13.0"), "{}", err.message);
    }

    #[test]
    fn missing_driver_says_what_to_install() {
        let err = no_driver_error();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("libcuda.so.1"));
    }
}
