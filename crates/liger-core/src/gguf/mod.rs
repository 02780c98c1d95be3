//! GGUF files (versions 2 and 3, little-endian): metadata, tensor directory and tensor data.
//!
//! Layout of a GGUF file:
//! - header: magic `GGUF`, version (u32), tensor count (u64), metadata entry count (u64);
//! - metadata entries: key (string), value type (u32), value;
//! - tensor infos: name (string), dimension count (u32), dimensions (u64 each, innermost
//!   first), type id (u32), data offset (u64, relative to the data section);
//! - padding up to `general.alignment` (default 32), then the data section.
//!
//! Strings are a u64 byte length followed by UTF-8 bytes. Every count and offset read from
//! the file is checked against the bytes that are actually there before it is used, so a
//! truncated or corrupt file gives an `InvalidFile` error instead of a panic or a huge
//! allocation.

mod model;
mod reader;
mod writer;

pub use model::{load_gguf_model, permute_qk_rows_from_gguf, permute_qk_rows_to_gguf, read_gguf_config};
pub use writer::GgufWriter;

use crate::error::{Error, ErrorCode, Result};
use crate::quant;
use crate::tensor::{ByteView, GgmlType, QTensor};
use std::collections::BTreeMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::sync::Arc;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data offsets are multiples of this unless `general.alignment` says otherwise.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }

    /// The value as a signed 64-bit integer, for any integer type (None if it does not fit).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v as i64),
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::U16(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::U32(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an unsigned 64-bit integer, for any integer type (None if negative).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor directory. `dims` are innermost first (GGML's `ne`): a matrix
/// of `rows x cols` has `dims == [cols, rows]`. `offset` is relative to the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of values (checked when the file was read, so it fits in `usize`).
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
    /// Bytes of the tensor's data (checked when the file was read).
    pub fn num_bytes(&self) -> usize {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        let rows: usize = self.dims.iter().skip(1).map(|&d| d as usize).product();
        self.ty.bytes_for(cols).map(|b| b * rows).unwrap_or(0)
    }
}

/// A parsed GGUF file. Tensor data stays in the (memory-mapped or owned) file bytes.
pub struct GgufFile {
    pub version: u32,
    pub alignment: usize,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// The data section.
    data: ByteView,
    /// The file's name, for error messages.
    name: String,
    /// Tensor name -> index into `tensors`.
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps a GGUF file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
        // SAFETY: the map is read-only. As with any mmap, the file must not be truncated
        // or rewritten by another process while it is in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path.display(), e))?;
        Self::parse(Arc::new(map), &path.display().to_string())
    }

    /// Reads a GGUF file held in memory. `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        Self::parse(Arc::new(bytes), name)
    }

    fn parse(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, name: &str) -> Result<Self> {
        let bytes = (*owner).as_ref();
        let header = reader::read_header(bytes).map_err(|e| e.context(name))?;
        let data_len = bytes.len() - header.data_start;
        let data = ByteView::new(owner.clone(), header.data_start, data_len).map_err(|e| e.context(name))?;
        let mut index = BTreeMap::new();
        for (i, t) in header.tensors.iter().enumerate() {
            index.insert(t.name.clone(), i);
        }
        Ok(GgufFile {
            version: header.version,
            alignment: header.alignment,
            metadata: header.metadata,
            tensors: header.tensors,
            data,
            name: name.to_string(),
            index,
        })
    }

    /// The name given at open (a path or a label).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key).ok_or_else(|| {
            Error::invalid_file(
                &self.name,
                format!("metadata key `{key}` is missing; the file was not written for this use or is incomplete"),
            )
        })
    }

    fn wrong_type(&self, key: &str, want: &str, got: &GgufValue) -> Error {
        Error::invalid_file(&self.name, format!("metadata key `{key}` should be {want}, found {}", got.type_name()))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// Any integer type whose value is non-negative.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// F32 or F64 (narrowed to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            GgufValue::F32(v) => Ok(*v),
            GgufValue::F64(v) => Ok(*v as f32),
            v => Err(self.wrong_type(key, "a float", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            GgufValue::Bool(v) => Ok(*v),
            v => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        match self.require(key)? {
            GgufValue::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, "an array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self.get_array(key)?;
        arr.iter().map(|v| v.as_str().ok_or_else(|| self.wrong_type(key, "an array of strings", v))).collect()
    }

    /// An array of any integer type (each value must fit in i64).
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let arr = self.get_array(key)?;
        arr.iter().map(|v| v.as_i64().ok_or_else(|| self.wrong_type(key, "an array of integers", v))).collect()
    }

    /// The directory entry of a tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The raw stored bytes of a tensor (shared with the file, no copy).
    pub fn tensor_bytes(&self, name: &str) -> Result<ByteView> {
        let info = self.tensor_info(name).ok_or_else(|| {
            Error::invalid_file(
                &self.name,
                format!("tensor `{name}` is missing; the file does not hold the expected model"),
            )
        })?;
        // Offsets and sizes were checked against the data section when the file was read.
        self.data.slice(info.offset as usize, info.num_bytes())
    }

    /// A tensor as a matrix sharing the file's bytes. 1-D `[n]` gives `1 x n`;
    /// `[ne0, ne1, ...]` gives `rows = ne1 * ne2 * ...`, `cols = ne0` (GGML's row layout).
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        let data = self.tensor_bytes(name)?;
        let info = &self.tensors[self.index[name]];
        let cols = info.dims.first().copied().unwrap_or(1) as usize;
        let rows = info.dims.iter().skip(1).map(|&d| d as usize).product();
        QTensor::new(info.ty, rows, cols, data).map_err(|e| e.context(format!("{}: tensor `{name}`", self.name)))
    }

    /// A tensor's values as f32 (any stored type), e.g. for norm weights and biases.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let mut out = vec![0.0f32; t.numel()];
        quant::dequantize(t.ty, t.data.as_slice(), &mut out);
        Ok(out)
    }
}

/// An `InvalidFile` error without a file name (the caller adds it).
fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidFile, format!("{what}"))
}
