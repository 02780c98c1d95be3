//! Parsing of the GGUF header: metadata and tensor directory, checked against the file size.

use super::{corrupt, GgufTensorInfo, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, ErrorCode, Result};
use crate::tensor::GgmlType;
use std::collections::{BTreeMap, BTreeSet};

/// GGML tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are allowed; deeper nesting than this is treated as corruption
/// (it would only serve to exhaust the stack).
const MAX_ARRAY_DEPTH: usize = 8;

pub(super) struct Header {
    pub version: u32,
    pub alignment: usize,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Where the data section starts in the file.
    pub data_start: usize,
}

/// A little-endian reader over the file bytes that never reads past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(corrupt(format!(
                "truncated file: {what} at byte {} needs {n} bytes but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count that must not exceed the bytes left (each item takes at least
    /// `min_item_bytes`), so a corrupt count cannot make us allocate or loop absurdly.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits =
            usize::try_from(n).ok().and_then(|n| n.checked_mul(min_item_bytes)).is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(corrupt(format!(
                "{what} at byte {at} is {n}, more than the {} bytes left in the file can hold; the file is corrupt",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, &format!("length of {what}"))?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| corrupt(format!("{what} at byte {at} is not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<GgufValue> {
        Ok(match type_id {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(corrupt(format!("metadata `{key}`: bool byte is {b}, expected 0 or 1"))),
            },
            8 => GgufValue::String(self.string(&format!("string value of `{key}`"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(corrupt(format!("metadata `{key}`: arrays nested more than {MAX_ARRAY_DEPTH} deep")));
                }
                let elem_type = self.u32(key)?;
                let min_bytes = min_value_bytes(elem_type)
                    .ok_or_else(|| corrupt(format!("metadata `{key}`: unknown array element type {elem_type}")))?;
                let n = self.count(min_bytes, &format!("element count of array `{key}`"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(corrupt(format!("metadata `{key}`: unknown value type {other}"))),
        })
    }
}

/// The fewest bytes a value of a type can take (None for an unknown type).
fn min_value_bytes(type_id: u32) -> Option<usize> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // the length prefix of a string
        9 => 4 + 8, // element type and count of a nested array
        10..=12 => 8,
        _ => return None,
    })
}

pub(super) fn read_header(bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor { bytes, pos: 0 };
    if bytes.len() < 4 || bytes[..4] != GGUF_MAGIC {
        return Err(corrupt("not a GGUF file (it does not start with the bytes `GGUF`)"));
    }
    c.pos = 4;
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (this looks like a big-endian file; only little-endian files are supported)"
        } else if version == 1 {
            " (version 1 is obsolete: convert the model again with a current llama.cpp)"
        } else {
            ""
        };
        return Err(corrupt(format!("unsupported GGUF version {version}; versions 2 and 3 are supported{hint}")));
    }
    // The smallest tensor info: name length (8) + dim count (4) + type (4) + offset (8).
    let n_tensors = c.count(24, "tensor count")?;
    // The smallest metadata entry: key length (8) + value type (4) + one byte.
    let n_metadata = c.count(13, "metadata entry count")?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_metadata {
        let key = c.string(&format!("key of metadata entry {i}"))?;
        let type_id = c.u32(&key)?;
        let value = c.value(type_id, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(corrupt(format!("metadata key `{key}` appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(v) => {
            return Err(corrupt(format!("general.alignment must be a power of two stored as u32, found {v:?}")));
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = BTreeSet::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor {i}"))?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(corrupt(format!("tensor `{name}` has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let ty = GgmlType::from_id(c.u32(&name)?).map_err(|e| e.context(format!("tensor `{name}`")))?;
        let offset = c.u64(&name)?;
        if !names.insert(name.clone()) {
            return Err(corrupt(format!("tensor `{name}` appears twice in the tensor directory")));
        }
        tensors.push(GgufTensorInfo { name, dims, ty, offset });
    }

    let data_start = c.pos.div_ceil(alignment).checked_mul(alignment).ok_or_else(|| corrupt("header too large"))?;
    if data_start > bytes.len() {
        if tensors.is_empty() {
            // A file without tensors may end right after its header, without padding.
            return Ok(Header { version, alignment, metadata, tensors, data_start: bytes.len() });
        }
        return Err(corrupt(format!(
            "truncated file: the data section should start at byte {data_start} but the file has {} bytes",
            bytes.len()
        )));
    }
    let data_len = bytes.len() - data_start;
    for t in &tensors {
        check_tensor_extent(t, alignment, data_len)?;
    }
    Ok(Header { version, alignment, metadata, tensors, data_start })
}

/// Checks that a tensor's size is computable and its data lies, aligned, inside the data section.
fn check_tensor_extent(t: &GgufTensorInfo, alignment: usize, data_len: usize) -> Result<()> {
    let name = &t.name;
    let too_large = || corrupt(format!("tensor `{name}` with dimensions {:?} is too large to address", t.dims));
    let mut numel: usize = 1;
    for &d in &t.dims {
        numel = usize::try_from(d).ok().and_then(|d| numel.checked_mul(d)).ok_or_else(too_large)?;
    }
    let cols = usize::try_from(t.dims[0]).map_err(|_| too_large())?;
    let row_bytes =
        t.ty.bytes_for(cols)
            .map_err(|e| Error::new(ErrorCode::InvalidFile, format!("tensor `{name}`: {}", e.message)))?;
    let rows = numel.checked_div(cols).unwrap_or(0);
    let size = row_bytes.checked_mul(rows).ok_or_else(too_large)?;
    let offset = usize::try_from(t.offset).map_err(|_| too_large())?;
    if offset % alignment != 0 {
        return Err(corrupt(format!(
            "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    match offset.checked_add(size) {
        Some(end) if end <= data_len => Ok(()),
        _ => Err(corrupt(format!(
            "tensor `{name}`: its {size} bytes at data offset {offset} lie past the end of the data section ({data_len} bytes); the file is truncated or corrupt"
        ))),
    }
}
