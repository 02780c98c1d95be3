//! Edge bundles: a whole Liger model (config, Liger options, tokenizer, chat template and
//! weights) in one self-describing file, so a browser can fetch it into an `ArrayBuffer` and
//! load it without a file system. Matrices are stored for the edge: f32, int8 with one scale
//! per row (`I8_ROW`), or 4-bit blocks (`Q4_0`, or `Q4_1` with int8 embeddings); norms and
//! biases stay f32.
//!
//! Layout (little-endian):
//!
//! ```text
//! 0   magic "LIGERBDL"        8 bytes
//! 8   format version          u32 (BUNDLE_VERSION)
//! 12  reserved                u32 (0)
//! 16  header length H         u64
//! 24  header                  H bytes of JSON (BundleHeader)
//!     padding to 64 bytes
//! D   tensor data             dataBytes; each tensor at D + its offset (64-aligned)
//! ```
//!
//! The header states every length, so a truncated or padded file is refused before any
//! tensor is read. Adapters are folded into the weights before quantisation: a bundle is
//! for inference only.

mod tensors;

#[cfg(test)]
mod tests;

use crate::convert::{linearize, LigerModel, LigerOptions, LoraOptions};
use crate::error::{Error, ErrorCode, Result};
use crate::hf::{config_from_value, config_to_json};
use crate::model::{BaseModel, ModelFormat};
use crate::tensor::{ByteView, GgmlType, QTensor};
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tensors::{assemble_weights, edge_type, named_tensors, quantize_matrix, vector_bytes, Named, TensorSource};

pub const BUNDLE_MAGIC: &[u8; 8] = b"LIGERBDL";
/// The format version this library writes and reads.
pub const BUNDLE_VERSION: u32 = 1;
/// Bytes before the JSON header.
pub const PREAMBLE_BYTES: usize = 24;
const ALIGN: usize = 64;
/// Headers larger than this are refused as corrupt (a tokenizer is a few MB).
const MAX_HEADER_BYTES: u64 = 256 << 20;

/// How a bundle stores its weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeQuant {
    /// f32: exact, 4 bytes a weight.
    F32,
    /// int8 with one f32 scale per row (`I8_ROW`): about 1 byte a weight.
    Int8,
    /// 4-bit blocks of 32 with an f16 scale (`Q4_0`): 0.5625 bytes a weight.
    Q4,
    /// The layers' matrices in 4-bit blocks of 32 with an f16 scale and minimum (`Q4_1`,
    /// 0.625 bytes a weight); the embeddings and output head in int8 rows (`I8_ROW`), which
    /// 4 bits cost the most.
    Q4_1,
}

impl EdgeQuant {
    pub const NAMES: [&'static str; 4] = ["f32", "int8", "q4", "q4_1"];

    pub fn name(self) -> &'static str {
        match self {
            EdgeQuant::F32 => "f32",
            EdgeQuant::Int8 => "int8",
            EdgeQuant::Q4 => "q4",
            EdgeQuant::Q4_1 => "q4_1",
        }
    }

    /// Parses "f32", "int8", "q4" (also "4bit") or "q4_1".
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(EdgeQuant::F32),
            "int8" | "i8" => Ok(EdgeQuant::Int8),
            "q4" | "4bit" | "q4_0" => Ok(EdgeQuant::Q4),
            "q4_1" => Ok(EdgeQuant::Q4_1),
            other => Err(Error::new(
                ErrorCode::UnsupportedTensorType,
                format!("unknown edge quantisation \"{other}\"; use one of f32, int8, q4, q4_1"),
            )),
        }
    }
}

/// One tensor's entry in the header. Its byte length follows from `dtype` and the shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub rows: usize,
    pub cols: usize,
    /// From the start of the data section.
    pub offset: u64,
}

/// The JSON header of a bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleHeader {
    pub name: String,
    /// "f32", "int8", "q4" or "q4_1".
    pub quantization: String,
    /// The model's `config.json`.
    pub config: serde_json::Value,
    pub liger: LigerOptions,
    /// The Hugging Face `tokenizer.json`.
    pub tokenizer: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    pub tensors: Vec<TensorEntry>,
    pub data_bytes: u64,
}

impl BundleHeader {
    /// Bytes of the whole file this header describes (header length `h`).
    pub fn file_bytes(&self, h: usize) -> u64 {
        data_start(h) as u64 + self.data_bytes
    }
}

fn data_start(header_len: usize) -> usize {
    (PREAMBLE_BYTES + header_len).next_multiple_of(ALIGN)
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidFile, format!("bundle: {what}"))
}

/// The storage type named in a bundle.
fn dtype_of(name: &str) -> Result<GgmlType> {
    match name {
        "F32" => Ok(GgmlType::F32),
        "I8_ROW" => Ok(GgmlType::I8Row),
        "Q4_0" => Ok(GgmlType::Q4_0),
        "Q4_1" => Ok(GgmlType::Q4_1),
        other => Err(Error::new(
            ErrorCode::UnsupportedTensorType,
            format!("bundle: tensor type \"{other}\" is not one this build reads (F32, I8_ROW, Q4_0, Q4_1); make the bundle again with this version"),
        )),
    }
}

/// Reads the header length from the first [`PREAMBLE_BYTES`] bytes, checking the magic and
/// version: the first check on any buffer, before the rest is read.
pub fn read_preamble(bytes: &[u8]) -> Result<usize> {
    if bytes.len() < PREAMBLE_BYTES {
        return Err(invalid(format!("{} bytes is too short to be a bundle (truncated?)", bytes.len())));
    }
    if &bytes[..8] != BUNDLE_MAGIC {
        return Err(invalid("not a liger bundle (wrong magic bytes); make one with `liger export --format bundle`"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != BUNDLE_VERSION {
        return Err(invalid(format!("format version {version}; this build reads version {BUNDLE_VERSION}: make the bundle again or upgrade liger")));
    }
    let h = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if h == 0 || h > MAX_HEADER_BYTES {
        return Err(invalid(format!("header length {h} is not plausible; the file is corrupt")));
    }
    Ok(h as usize)
}

/// Parses the header from the start of a bundle (at least the preamble and the header), with
/// the length of the whole file it states: what a reader streaming the file expects.
pub fn parse_header(prefix: &[u8]) -> Result<(BundleHeader, u64)> {
    let h = read_preamble(prefix)?;
    let json = prefix.get(PREAMBLE_BYTES..PREAMBLE_BYTES + h).ok_or_else(|| {
        invalid(format!("the header needs {} bytes, only {} given (truncated?)", PREAMBLE_BYTES + h, prefix.len()))
    })?;
    let header: BundleHeader =
        serde_json::from_slice(json).map_err(|e| invalid(format!("the header is not valid: {e}")))?;
    let file_bytes = header.file_bytes(h);
    Ok((header, file_bytes))
}

/// Parses and checks the header from the start of a bundle (at least the preamble and the
/// header). `total_len`, the whole file's length, must match what the header states.
pub fn read_header(prefix: &[u8], total_len: u64) -> Result<BundleHeader> {
    let (header, expected) = parse_header(prefix)?;
    if total_len != expected {
        let what = if total_len < expected { "truncated" } else { "longer than its header states" };
        return Err(invalid(format!(
            "{what}: {total_len} bytes, the header states {expected}; fetch or copy it again"
        )));
    }
    Ok(header)
}

/// The bytes of a bundle of `model` with matrices stored as `quant`.
pub fn bundle_bytes(model: &LigerModel, quant: EdgeQuant) -> Result<Vec<u8>> {
    let weights = model.merged_weights();
    let mut entries = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in named_tensors(&weights) {
        let (ty, rows, cols, bytes) = match t {
            Named::Matrix(m) => {
                let ty = edge_type(quant, &name, m.cols);
                (ty, m.rows, m.cols, quantize_matrix(m, ty)?)
            }
            Named::Vector(v) => (GgmlType::F32, 1, v.len(), vector_bytes(v)),
        };
        data.resize(data.len().next_multiple_of(ALIGN), 0);
        entries.push(TensorEntry { name, dtype: ty.name().to_string(), rows, cols, offset: data.len() as u64 });
        data.extend_from_slice(&bytes);
    }
    let base = &model.base;
    let header = BundleHeader {
        name: base.name.clone(),
        quantization: quant.name().to_string(),
        config: config_to_json(&base.config, None),
        liger: model.options.clone(),
        tokenizer: base.tokenizer.to_json()?,
        bos_token_id: base.tokenizer.bos_id(),
        eos_token_id: base.tokenizer.eos_id(),
        add_bos: base.tokenizer.add_bos_default(),
        chat_template: base.chat_template.clone(),
        tensors: entries,
        data_bytes: data.len() as u64,
    };
    let json =
        serde_json::to_vec(&header).map_err(|e| Error::internal(format!("serializing the bundle header: {e}")))?;
    let mut out = Vec::with_capacity(data_start(json.len()) + data.len());
    out.extend_from_slice(BUNDLE_MAGIC);
    out.extend_from_slice(&BUNDLE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(data_start(json.len()), 0);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes a bundle file atomically (a temporary name, then a rename).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_bundle(path: &std::path::Path, model: &LigerModel, quant: EdgeQuant) -> Result<()> {
    let bytes = bundle_bytes(model, quant)?;
    crate::hf::fsutil::write_file(path, &bytes)
}

/// Each tensor's `(offset, length)` in the data section, checked the way safetensors checks
/// its files: inside the section, at the format's alignment, and no two overlapping (a file
/// whose tensors share bytes is corrupt or crafted).
fn tensor_spans(header: &BundleHeader) -> Result<Vec<(usize, usize)>> {
    let mut spans = Vec::with_capacity(header.tensors.len());
    for e in &header.tensors {
        let name = &e.name;
        let ty = dtype_of(&e.dtype)?;
        let len = e
            .rows
            .checked_mul(ty.bytes_for(e.cols)?)
            .ok_or_else(|| invalid(format!("tensor \"{name}\" is too large")))?;
        let offset =
            usize::try_from(e.offset).map_err(|_| invalid(format!("tensor \"{name}\" lies outside the file")))?;
        let in_data = offset.checked_add(len).is_some_and(|end| end as u64 <= header.data_bytes);
        if !in_data {
            return Err(invalid(format!("tensor \"{name}\" lies outside the data section; the file is corrupt")));
        }
        if offset % ALIGN != 0 {
            return Err(invalid(format!(
                "tensor \"{name}\" starts at offset {offset}, not a multiple of {ALIGN}; the file is corrupt"
            )));
        }
        spans.push((offset, len));
    }
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].0);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if spans[a].0 + spans[a].1 > spans[b].0 {
            return Err(invalid(format!(
                "tensors \"{}\" and \"{}\" overlap in the data section; the file is corrupt",
                header.tensors[a].name, header.tensors[b].name
            )));
        }
    }
    Ok(spans)
}

/// Loads the model from a bundle held in `buffer` (the whole file). Matrices are views into
/// the buffer, not copies, so a loaded model takes little more memory than the file.
pub fn load_bundle(buffer: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<LigerModel> {
    let bytes = (*buffer).as_ref();
    read_header(bytes, bytes.len() as u64)?;
    let pending = PendingBundle::from_prefix(bytes)?;
    let start = pending.data_start;
    pending.finish(buffer, start)
}

/// A bundle whose header is read, checked and turned into its config and tokenizer, waiting
/// for its tensor data: how a bundle that streams in is loaded. The tokenizer is built before
/// any tensor's buffer is allocated, and the tensors can have one buffer each
/// ([`PendingBundle::finish_with_tensors`]), so they fill the memory that building the
/// tokenizer took for a while instead of growing the heap past it.
pub struct PendingBundle {
    /// The header, its tokenizer JSON emptied once the tokenizer is built.
    pub header: BundleHeader,
    /// Where the tensor data starts in the file.
    pub data_start: usize,
    config: crate::config::ModelConfig,
    spans: Vec<(usize, usize)>,
    tokenizer: Tokenizer,
}

impl PendingBundle {
    /// From the start of a bundle (at least the preamble and the header).
    pub fn from_prefix(prefix: &[u8]) -> Result<Self> {
        let (mut header, _) = parse_header(prefix)?;
        let data_start = data_start(read_preamble(prefix)?);
        let config = config_from_value(&header.config, "bundle config").map_err(|e| e.context("bundle"))?;
        let mut names = std::collections::HashSet::new();
        for e in &header.tensors {
            if !names.insert(e.name.as_str()) {
                return Err(invalid(format!("tensor \"{}\" appears twice", e.name)));
            }
        }
        let spans = tensor_spans(&header)?;
        let tokenizer = Tokenizer::from_json(header.tokenizer.as_bytes(), "bundle tokenizer")?.with_special_ids(
            header.bos_token_id,
            header.eos_token_id,
            header.add_bos && header.bos_token_id.is_some(),
        )?;
        // The tokenizer's JSON is not needed any more; its tables are.
        header.tokenizer = String::new();
        Ok(PendingBundle { header, data_start, config, spans, tokenizer })
    }

    /// Each tensor's `(offset, length)` in the data section, in the header's order.
    pub fn spans(&self) -> &[(usize, usize)] {
        &self.spans
    }

    /// The model, with its tensor data at `data_offset` of `buffer` (used in place).
    pub fn finish(self, buffer: Arc<dyn AsRef<[u8]> + Send + Sync>, data_offset: usize) -> Result<LigerModel> {
        let available = (*buffer).as_ref().len().saturating_sub(data_offset) as u64;
        if available < self.header.data_bytes {
            return Err(invalid(format!(
                "truncated: {available} bytes of tensor data, the header states {}; fetch or copy it again",
                self.header.data_bytes
            )));
        }
        let views = self
            .spans
            .iter()
            .map(|&(offset, len)| ByteView::new(buffer.clone(), data_offset + offset, len))
            .collect::<Result<Vec<_>>>()?;
        self.build(views)
    }

    /// The model, with each tensor's bytes in its own buffer (in the header's order, each of
    /// its span's length): what lets a streamed bundle's tensors fill the gaps in memory that
    /// one buffer of the whole data could not.
    pub fn finish_with_tensors(self, tensors: Vec<Vec<u8>>) -> Result<LigerModel> {
        let lengths_match =
            tensors.len() == self.spans.len() && tensors.iter().zip(&self.spans).all(|(t, &(_, len))| t.len() == len);
        if !lengths_match {
            return Err(Error::invalid_argument("the tensor buffers do not match the bundle's tensors"));
        }
        self.build(tensors.into_iter().map(ByteView::from_vec).collect())
    }

    /// The model from one view per tensor (in the header's order).
    fn build(self, views: Vec<ByteView>) -> Result<LigerModel> {
        let PendingBundle { header, config, tokenizer, .. } = self;
        let index: HashMap<&str, usize> =
            header.tensors.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
        let get = |name: &str| -> Result<Option<QTensor>> {
            let Some(&i) = index.get(name) else {
                return Ok(None);
            };
            let e = &header.tensors[i];
            let ty = dtype_of(&e.dtype)?;
            QTensor::new(ty, e.rows, e.cols, views[i].clone())
                .map(Some)
                .map_err(|err| err.context(format!("bundle tensor \"{name}\"")))
        };
        let weights = assemble_weights(&TensorSource { get: &get }, config.num_layers)?;
        weights.validate(&config).map_err(|e| e.context("bundle"))?;
        let base = BaseModel::new(
            config,
            weights,
            tokenizer,
            header.chat_template.clone(),
            header.name.clone(),
            ModelFormat::Bundle,
        );
        let no_adapters = LoraOptions { targets: Vec::new(), ..LoraOptions::default() };
        linearize(base, header.liger, no_adapters)
    }
}
