//! One error type for the whole library. Every error carries a stable `code` (shown to
//! JavaScript as `err.code`) and a message that says what went wrong and what to do.

use std::fmt;

/// Stable machine-readable error codes. The TypeScript API exposes these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A file could not be opened, read or written.
    Io,
    /// A model, checkpoint or data file is truncated, corrupt or not of the expected format.
    InvalidFile,
    /// The model's architecture is not one this library runs.
    UnsupportedArchitecture,
    /// A tensor is stored in a type this library cannot read.
    UnsupportedTensorType,
    /// The model comes without a usable tokenizer.
    MissingTokenizer,
    /// The prompt (plus requested tokens) does not fit in the model's context.
    ContextOverflow,
    /// An option or argument is out of range or inconsistent.
    InvalidArgument,
    /// Tensors do not have the shapes the model needs.
    ShapeMismatch,
    /// The caller cancelled the work.
    Aborted,
    /// Not enough memory for the request.
    OutOfMemory,
    /// Training produced a NaN or infinite loss.
    NonFiniteLoss,
    /// The requested device (a GPU) cannot be used here: no driver, no GPU, or a driver too old.
    DeviceUnavailable,
    /// A bug: something that should never happen.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Io => "IO_ERROR",
            ErrorCode::InvalidFile => "INVALID_FILE",
            ErrorCode::UnsupportedArchitecture => "UNSUPPORTED_ARCHITECTURE",
            ErrorCode::UnsupportedTensorType => "UNSUPPORTED_TENSOR_TYPE",
            ErrorCode::MissingTokenizer => "MISSING_TOKENIZER",
            ErrorCode::ContextOverflow => "CONTEXT_OVERFLOW",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::ShapeMismatch => "SHAPE_MISMATCH",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::OutOfMemory => "OUT_OF_MEMORY",
            ErrorCode::NonFiniteLoss => "NON_FINITE_LOSS",
            ErrorCode::DeviceUnavailable => "DEVICE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The library's error: a code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
    pub fn io(path: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(ErrorCode::Io, format!("{path}: {err}"))
    }
    pub fn invalid_file(path: impl fmt::Display, what: impl fmt::Display) -> Self {
        Error::new(ErrorCode::InvalidFile, format!("{path}: {what}"))
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidArgument, message)
    }
    pub fn shape(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::ShapeMismatch, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }
    /// Prefix the message with some context (a file name, a tensor name).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Return early with an error built from a code and a format string.
#[macro_export]
macro_rules! bail {
    ($code:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new($crate::error::ErrorCode::$code, format!($($arg)*)))
    };
}
