//! Writing GGUF (version 3) files: metadata and tensors, in the order they were added.

use super::{GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};
use crate::tensor::{GgmlType, QTensor};
use std::collections::BTreeSet;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

/// Builds a GGUF file in memory, then writes it out.
///
/// ```
/// use liger_core::gguf::{GgufFile, GgufValue, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", GgufValue::String("llama".into()));
/// w.add_f32("output_norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
/// let file = GgufFile::from_bytes(w.to_bytes().unwrap(), "example").unwrap();
/// assert_eq!(file.tensor_f32("output_norm.weight").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
/// ```
pub struct GgufWriter {
    alignment: usize,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
    names: BTreeSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { alignment: DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new(), names: BTreeSet::new() }
    }

    /// Sets the data alignment (a power of two); it is recorded as `general.alignment`.
    pub fn set_alignment(&mut self, alignment: usize) -> Result<()> {
        if !alignment.is_power_of_two() || alignment > u32::MAX as usize {
            return Err(Error::invalid_argument(format!("GGUF alignment must be a power of two, got {alignment}")));
        }
        self.alignment = alignment;
        self.add_metadata("general.alignment", GgufValue::U32(alignment as u32));
        Ok(())
    }

    /// Adds (or replaces) a metadata entry.
    pub fn add_metadata(&mut self, key: &str, value: GgufValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Adds a tensor from its stored bytes. `dims` are innermost first (`[cols, rows]`).
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, bytes: Vec<u8>) -> Result<()> {
        if dims.is_empty() || dims.len() > 4 {
            return Err(Error::invalid_argument(format!(
                "tensor `{name}`: GGUF tensors have 1 to 4 dimensions, got {}",
                dims.len()
            )));
        }
        let cols =
            usize::try_from(dims[0]).map_err(|_| Error::invalid_argument(format!("tensor `{name}` is too large")))?;
        let rows = dims[1..]
            .iter()
            .try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
            .ok_or_else(|| Error::invalid_argument(format!("tensor `{name}` is too large")))?;
        let need = ty
            .bytes_for(cols)?
            .checked_mul(rows)
            .ok_or_else(|| Error::invalid_argument(format!("tensor `{name}` is too large")))?;
        if bytes.len() != need {
            return Err(Error::shape(format!(
                "tensor `{name}` of {} with dimensions {dims:?} needs {need} bytes, got {}",
                ty.name(),
                bytes.len()
            )));
        }
        if !self.names.insert(name.to_string()) {
            return Err(Error::invalid_argument(format!("tensor `{name}` was added twice")));
        }
        self.tensors.push(PendingTensor { name: name.to_string(), dims: dims.to_vec(), ty, bytes });
        Ok(())
    }

    /// Adds f32 values as an F32 tensor.
    pub fn add_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> Result<()> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, bytes)
    }

    /// Adds a matrix as stored (dims `[cols, rows]`).
    pub fn add_qtensor(&mut self, name: &str, t: &QTensor) -> Result<()> {
        self.add_tensor(name, &[t.cols as u64, t.rows as u64], t.ty, t.data.as_slice().to_vec())
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, key, value)?;
        }
        // Data offsets: each tensor starts at a multiple of the alignment.
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            offsets.push(offset);
            offset = (offset + t.bytes.len()).next_multiple_of(self.alignment);
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&(off as u64).to_le_bytes());
        }
        let data_start = out.len().next_multiple_of(self.alignment);
        out.resize(data_start, 0);
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.bytes);
        }
        Ok(out)
    }

    /// Writes the file: to `<path>.tmp` first, then renamed, so a crash never leaves a
    /// half-written file under the final name.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp_name);
        std::fs::write(&tmp, &bytes).map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path.display(), e)
        })
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, key: &str, value: &GgufValue) -> Result<()> {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.push(*v as u8),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(*v as u8),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array(items) => {
            // GGUF arrays hold one element type; an empty array is written as u8.
            let elem_type = items.first().map_or(0, |v| v.type_id());
            if let Some(bad) = items.iter().find(|v| v.type_id() != elem_type) {
                return Err(Error::invalid_argument(format!(
                    "metadata `{key}`: array elements must share one type, found {} and {}",
                    items[0].type_name(),
                    bad.type_name()
                )));
            }
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, key, item)?;
            }
        }
    }
    Ok(())
}
