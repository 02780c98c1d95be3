//! Reading and writing `.safetensors` files.
//!
//! Reading goes through the `safetensors` crate's header validation, over bytes that stay
//! where they are (a memory map natively): tensors become [`QTensor`] views, no copy.
//! Writing is done here, one tensor at a time, so that converting a large model to F16/BF16
//! never holds a second copy of it in memory.

use crate::error::{Error, ErrorCode, Result};
use crate::tensor::{ByteView, GgmlType, QTensor};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

/// The floating-point type tensors are written in. Quantized tensors are dequantized first;
/// F32 keeps the exact values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    F16,
    BF16,
}

impl SaveDtype {
    pub fn bytes_per_value(self) -> usize {
        match self {
            SaveDtype::F32 => 4,
            SaveDtype::F16 | SaveDtype::BF16 => 2,
        }
    }
    /// The dtype name in a safetensors header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "F32",
            SaveDtype::F16 => "F16",
            SaveDtype::BF16 => "BF16",
        }
    }
    /// The `torch_dtype` name in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::F16 => "float16",
            SaveDtype::BF16 => "bfloat16",
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the whole file.
    start: usize,
    len: usize,
}

/// A parsed safetensors file whose tensors are views into its bytes.
pub struct SafetensorsFile {
    name: String,
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// Tensor names in the order of their data in the file.
    order: Vec<String>,
    tensors: HashMap<String, TensorEntry>,
    metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// Memory-maps a file. The file must not be changed while the returned tensors live
    /// (as for any memory-mapped weights); writers here always replace files by renaming.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| Error::io(&shown, e))?;
        // SAFETY: the map is read-only and lives as long as the views into it (Arc owner).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
        Self::parse(Arc::new(map), shown)
    }

    /// Parses a file already in memory; `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        Self::parse(Arc::new(bytes), name.to_string())
    }

    fn parse(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>, name: String) -> Result<Self> {
        let buf: &[u8] = (*bytes).as_ref();
        check_offsets_fit(buf, &name)?;
        let (header_len, meta) = SafeTensors::read_metadata(buf)
            .map_err(|e| Error::invalid_file(&name, format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = HashMap::new();
        for (tensor_name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            let entry = TensorEntry { dtype: info.dtype, shape: info.shape.clone(), start: data_start + s, len: e - s };
            tensors.insert(tensor_name, entry);
        }
        let order = meta.offset_keys();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile { name, bytes, order, tensors, metadata })
    }

    /// The file name given at open, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Tensor names, in the order of their data in the file.
    pub fn names(&self) -> &[String] {
        &self.order
    }
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }
    /// The `__metadata__` strings of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| Error::invalid_file(&self.name, format!("tensor \"{name}\" is missing")))
    }

    /// The storage type of a tensor; only floating-point tensors are weights.
    fn ggml_type(&self, name: &str, entry: &TensorEntry) -> Result<GgmlType> {
        match entry.dtype {
            Dtype::F32 => Ok(GgmlType::F32),
            Dtype::F16 => Ok(GgmlType::F16),
            Dtype::BF16 => Ok(GgmlType::BF16),
            other => Err(Error::new(
                ErrorCode::UnsupportedTensorType,
                format!(
                    "{}: tensor \"{name}\" has dtype {other}; only F32, F16 and BF16 tensors can be loaded (convert the checkpoint to one of these)",
                    self.name
                ),
            )),
        }
    }

    /// A 2-D tensor `[rows, cols]` as a view into the file (no copy).
    pub fn matrix(&self, name: &str) -> Result<QTensor> {
        let entry = self.entry(name)?;
        let ty = self.ggml_type(name, entry)?;
        let &[rows, cols] = entry.shape.as_slice() else {
            return Err(Error::shape(format!(
                "{}: tensor \"{name}\" must be 2-D, found shape {:?}",
                self.name, entry.shape
            )));
        };
        let data = ByteView::new(self.bytes.clone(), entry.start, entry.len).map_err(|e| e.context(&self.name))?;
        QTensor::new(ty, rows, cols, data).map_err(|e| e.context(format!("{}: tensor \"{name}\"", self.name)))
    }

    /// A 1-D tensor (a norm weight or a bias) as f32 values.
    pub fn vector_f32(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        if entry.shape.len() != 1 {
            return Err(Error::shape(format!(
                "{}: tensor \"{name}\" must be 1-D, found shape {:?}",
                self.name, entry.shape
            )));
        }
        Ok(self.tensor_f32(name)?.1)
    }

    /// Any floating-point tensor as its shape and f32 values.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let entry = self.entry(name)?;
        let ty = self.ggml_type(name, entry)?;
        let bytes = &(*self.bytes).as_ref()[entry.start..entry.start + entry.len];
        let mut out = vec![0.0f32; entry.len / ty.block_bytes()];
        crate::quant::dequantize(ty, bytes, &mut out);
        Ok((entry.shape.clone(), out))
    }
}

/// Checks that every tensor's data range ends inside the file, before the `safetensors`
/// crate looks at the header: the crate adds the last offset to the header length without
/// overflow checks, which a crafted header can make wrap around.
fn check_offsets_fit(buf: &[u8], name: &str) -> Result<()> {
    let bad = |what: String| Err(Error::invalid_file(name, format!("not a valid safetensors file: {what}")));
    if buf.len() < 8 {
        return bad(format!("the file has {} bytes, fewer than the 8-byte header length", buf.len()));
    }
    let header_len = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let available = (buf.len() - 8) as u64;
    if header_len > available {
        return bad(format!("the header claims {header_len} bytes but only {available} follow; the file is truncated or not safetensors"));
    }
    let header = &buf[8..8 + header_len as usize];
    let data_len = available - header_len;
    let Ok(Value::Object(entries)) = serde_json::from_slice::<Value>(header) else {
        return bad("the header is not a JSON object".into());
    };
    for (tensor, info) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let end = info.get("data_offsets").and_then(|o| o.get(1)).and_then(Value::as_u64);
        match end {
            Some(end) if end <= data_len => {}
            Some(end) => {
                return bad(format!(
                    "tensor \"{tensor}\" ends at byte {end} of the data but the data has {data_len} bytes; the file is truncated or corrupt"
                ))
            }
            None => return bad(format!("tensor \"{tensor}\" has no valid data_offsets")),
        }
    }
    Ok(())
}

/// Values to write for one tensor: borrowed f32, or a stored matrix converted on the fly.
pub(crate) enum TensorValues<'a> {
    F32(&'a [f32]),
    // Written only by the checkpoint saver, which needs a file system.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    Matrix(&'a QTensor),
}

impl TensorValues<'_> {
    fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::Matrix(t) => t.numel(),
        }
    }
}

/// One tensor to write.
pub(crate) struct OutTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: SaveDtype,
    pub values: TensorValues<'a>,
}

impl OutTensor<'_> {
    pub fn byte_len(&self) -> usize {
        self.values.len() * self.dtype.bytes_per_value()
    }
}

/// Writes a safetensors file to `out`. Tensors are laid out in the given order, widest
/// dtype first so that every tensor's data stays aligned to its element size.
pub(crate) fn write_tensors(
    out: &mut dyn Write,
    tensors: &[&OutTensor],
    metadata: &HashMap<String, String>,
    file: &str,
) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if t.shape.iter().product::<usize>() != t.values.len() {
            return Err(Error::shape(format!(
                "tensor \"{}\": shape {:?} needs {} values, given {}",
                t.name,
                t.shape,
                t.shape.iter().product::<usize>(),
                t.values.len()
            )));
        }
        if t.name == "__metadata__" || !names.insert(t.name.as_str()) {
            return Err(Error::invalid_argument(format!("tensor name \"{}\" is reserved or used twice", t.name)));
        }
    }
    let mut order: Vec<&OutTensor> = tensors.to_vec();
    order.sort_by_key(|t| std::cmp::Reverse(t.dtype.bytes_per_value()));

    let mut header = Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for t in &order {
        let end = offset + t.byte_len();
        header.insert(
            t.name.clone(),
            json!({ "dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::internal(e.to_string()))?;
    // Pad with spaces (allowed by the format) so that the data starts 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let io = |e| Error::io(file, e);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let mut buf = Vec::new();
    for t in &order {
        let values = match &t.values {
            TensorValues::F32(v) => std::borrow::Cow::Borrowed(*v),
            TensorValues::Matrix(m) => m.to_f32(),
        };
        encode(&values, t.dtype, &t.name, &mut buf)?;
        out.write_all(&buf).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Little-endian bytes of `values` in `dtype`. A finite value that does not fit in F16
/// (|x| > 65504) is an error rather than a silent infinity.
fn encode(values: &[f32], dtype: SaveDtype, name: &str, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    out.reserve(values.len() * dtype.bytes_per_value());
    match dtype {
        SaveDtype::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        SaveDtype::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        SaveDtype::F16 => {
            for &v in values {
                let h = f16::from_f32(v);
                if v.is_finite() && !h.is_finite() {
                    return Err(Error::invalid_argument(format!(
                        "tensor \"{name}\" holds {v}, beyond the F16 range (65504); save as BF16 or F32"
                    )));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    Ok(())
}

/// Metadata with `"format": "pt"` added when absent: transformers refuses safetensors files
/// whose format it does not know.
pub(crate) fn with_format(metadata: Option<HashMap<String, String>>) -> HashMap<String, String> {
    let mut m = metadata.unwrap_or_default();
    m.entry("format".into()).or_insert_with(|| "pt".into());
    m
}

/// Tensors given as (name, shape, dtype, f32 values), as the public writers take them.
fn out_tensors<'a>(tensors: &'a [(String, Vec<usize>, SaveDtype, &'a [f32])]) -> Vec<OutTensor<'a>> {
    tensors
        .iter()
        .map(|(name, shape, dtype, values)| OutTensor {
            name: name.clone(),
            shape: shape.clone(),
            dtype: *dtype,
            values: TensorValues::F32(values),
        })
        .collect()
}

/// A safetensors file in memory (for targets without a file system, or to send elsewhere).
pub fn safetensors_to_bytes(
    tensors: &[(String, Vec<usize>, SaveDtype, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let out = out_tensors(tensors);
    let refs: Vec<&OutTensor> = out.iter().collect();
    let mut bytes = Vec::new();
    write_tensors(&mut bytes, &refs, &with_format(metadata), "safetensors buffer")?;
    Ok(bytes)
}

#[cfg(not(target_arch = "wasm32"))]
mod files {
    use super::*;
    use crate::hf::fsutil::write_atomically;
    use std::path::Path;

    /// Writes tensors (given as f32 values) to a safetensors file; atomic: the file appears
    /// complete or not at all, and an existing file is replaced only once the new one is written.
    pub fn write_safetensors(
        path: &Path,
        tensors: &[(String, Vec<usize>, SaveDtype, &[f32])],
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let out = out_tensors(tensors);
        let metadata = with_format(metadata);
        let shown = path.display().to_string();
        let refs: Vec<&OutTensor> = out.iter().collect();
        write_atomically(path, |w| write_tensors(w, &refs, &metadata, &shown))
    }

    /// Every tensor of a safetensors file (F32, F16 or BF16) as its name, shape and f32
    /// values, in the order of their data in the file.
    #[allow(clippy::type_complexity)] // a plain list of (name, shape, values) is the point
    pub fn read_safetensors_f32(path: &Path) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        let file = SafetensorsFile::open(path)?;
        file.names()
            .iter()
            .map(|name| file.tensor_f32(name).map(|(shape, values)| (name.clone(), shape, values)))
            .collect()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use files::{read_safetensors_f32, write_safetensors};
