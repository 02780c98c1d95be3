//! Weight storage: a tensor is a view into bytes (a memory-mapped file or an owned buffer)
//! in one of the GGML storage types. Weights stay in their compact form; rows are
//! dequantized on the fly by the matrix products in `linalg`.

use crate::error::{Error, ErrorCode, Result};
use crate::quant;
pub use crate::quant::GgmlType;
use std::borrow::Cow;
use std::sync::Arc;

/// A cheap, clonable view into shared bytes.
#[derive(Clone)]
pub struct ByteView {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for ByteView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ByteView({} bytes)", self.len)
    }
}

/// An owned f32 buffer that can be viewed as bytes (keeps 4-byte alignment).
struct F32Buffer(Vec<f32>);

impl AsRef<[u8]> for F32Buffer {
    fn as_ref(&self) -> &[u8] {
        bytemuck_f32_as_bytes(&self.0)
    }
}

fn bytemuck_f32_as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl ByteView {
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        ByteView { owner: Arc::new(bytes), start: 0, len }
    }
    pub fn from_f32(values: Vec<f32>) -> Self {
        let len = values.len() * 4;
        ByteView { owner: Arc::new(F32Buffer(values)), start: 0, len }
    }
    /// A view of `len` bytes at `start` of `owner`; errors if it does not fit.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> Result<Self> {
        let total = (*owner).as_ref().len();
        match start.checked_add(len) {
            Some(end) if end <= total => Ok(ByteView { owner, start, len }),
            _ => Err(Error::new(
                ErrorCode::InvalidFile,
                format!("data range {start}+{len} lies past the end of the buffer ({total} bytes); the file is truncated or corrupt"),
            )),
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A sub-view; `start + len` must lie within this view.
    pub fn slice(&self, start: usize, len: usize) -> Result<Self> {
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::internal(format!("slice {start}+{len} outside a view of {} bytes", self.len)));
        }
        Ok(ByteView { owner: self.owner.clone(), start: self.start + start, len })
    }
}

/// A 2-D weight matrix of `rows x cols` (row-major, `cols` contiguous), as stored on disk.
/// 1-D tensors are `1 x n`. In `y = W x`, `rows` is the output size and `cols` the input.
#[derive(Clone, Debug)]
pub struct QTensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: ByteView,
}

impl QTensor {
    /// Wraps bytes, checking that their length matches the type and shape.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: ByteView) -> Result<Self> {
        let row_bytes = ty.bytes_for(cols)?;
        let need = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| Error::new(ErrorCode::InvalidFile, format!("tensor {rows}x{cols} is too large")))?;
        if data.len() != need {
            return Err(Error::new(
                ErrorCode::InvalidFile,
                format!("tensor {rows}x{cols} of {} needs {need} bytes, found {}", ty.name(), data.len()),
            ));
        }
        Ok(QTensor { ty, rows, cols, data })
    }
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), rows * cols, "from_f32: {rows}x{cols} needs {} values", rows * cols);
        QTensor { ty: GgmlType::F32, rows, cols, data: ByteView::from_f32(values) }
    }
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
    pub fn row_bytes(&self) -> usize {
        match self.ty {
            GgmlType::I8Row => self.cols + 4,
            ty => self.cols / ty.block_size() * ty.block_bytes(),
        }
    }
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.as_slice()[i * rb..(i + 1) * rb]
    }
    /// Dequantizes row `i` into `out` (length `cols`).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        quant::dequantize(self.ty, self.row(i), out);
    }
    /// The whole tensor as f32 values (borrowed when already stored as aligned f32).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        if self.ty == GgmlType::F32 {
            let bytes = self.data.as_slice();
            if (bytes.as_ptr() as usize).is_multiple_of(4) {
                // SAFETY: aligned, length is a multiple of 4, any bit pattern is a valid f32.
                return Cow::Borrowed(unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4)
                });
            }
        }
        let mut out = vec![0.0f32; self.numel()];
        quant::dequantize(self.ty, self.data.as_slice(), &mut out);
        Cow::Owned(out)
    }
    /// Rows `start..start+n` as a new tensor sharing the same bytes.
    pub fn slice_rows(&self, start: usize, n: usize) -> Result<Self> {
        let rb = self.row_bytes();
        Ok(QTensor { ty: self.ty, rows: n, cols: self.cols, data: self.data.slice(start * rb, n * rb)? })
    }
}
