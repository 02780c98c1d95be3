//! Loading a bundle: from the whole file in one buffer, or streaming in chunk by chunk into
//! one buffer per tensor. Both check the header, and that the model fits under the memory
//! maximum, before anything large is allocated.

use crate::model::Model;
use crate::{js_error, memory, JsResult};
use liger_core::bundle::{parse_header, read_header, read_preamble, PendingBundle, PREAMBLE_BYTES};
use liger_core::Result;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// What a bundle's header says, checked: the model's name and quantisation, the file's length,
/// the wasm memory it needs once loaded, and where its header and tensor data end and start.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug, PartialEq)]
pub struct BundleSummary {
    #[wasm_bindgen(readonly)]
    pub name: String,
    #[wasm_bindgen(readonly)]
    pub quantization: String,
    #[wasm_bindgen(readonly, js_name = fileBytes)]
    pub file_bytes: f64,
    #[wasm_bindgen(readonly, js_name = needBytes)]
    pub need_bytes: f64,
    #[wasm_bindgen(readonly, js_name = headerBytes)]
    pub header_bytes: f64,
    #[wasm_bindgen(readonly, js_name = dataStart)]
    pub data_start: f64,
}

/// The header length of a bundle from its first 24 bytes (checks magic and version).
#[wasm_bindgen(js_name = bundleHeaderLength)]
pub fn bundle_header_length(preamble: &[u8]) -> JsResult<u32> {
    read_preamble(preamble).map(|n| n as u32).map_err(js_error)
}

/// Checks a bundle's header (the file's first `24 + header length` bytes) against the whole
/// file's length, and that the model fits in `memory_limit` bytes of wasm memory.
#[wasm_bindgen(js_name = checkBundle)]
pub fn check_bundle(prefix: &[u8], file_bytes: f64, memory_limit: f64) -> JsResult<BundleSummary> {
    checked_summary(prefix, file_bytes as u64, memory_limit as u64).map_err(js_error)
}

fn checked_summary(prefix: &[u8], file_bytes: u64, memory_limit: u64) -> Result<BundleSummary> {
    let header = read_header(prefix, file_bytes)?;
    let need = memory::bytes_needed(&header, file_bytes);
    memory::check_fits(need, memory_limit)?;
    Ok(BundleSummary {
        name: header.name.clone(),
        quantization: header.quantization.clone(),
        file_bytes: file_bytes as f64,
        need_bytes: need as f64,
        header_bytes: (PREAMBLE_BYTES + read_preamble(prefix)?) as f64,
        data_start: (file_bytes - header.data_bytes) as f64,
    })
}

/// Loads the model from a whole bundle (the glue copies it into wasm memory once; the weights
/// are used in place). Check it first with [`check_bundle`].
#[wasm_bindgen(js_name = loadBundle)]
pub fn load_bundle(bytes: Vec<u8>) -> JsResult<Model> {
    let load = || {
        let quantization = read_header(&bytes, bytes.len() as u64)?.quantization;
        let model = liger_core::bundle::load_bundle(Arc::new(bytes))?;
        Ok(Model::new(model, quantization))
    };
    load().map_err(js_error)
}

/// A bundle streaming in: header read, tokenizer built, one buffer per tensor allocated, and
/// the tensor data copied into them as it arrives ([`StreamingBundle::write`]).
#[wasm_bindgen]
pub struct StreamingBundle {
    bundle: PendingBundle,
    summary: BundleSummary,
    buffers: Vec<Vec<u8>>,
    writer: TensorWriter,
}

#[wasm_bindgen]
impl StreamingBundle {
    /// Starts loading from the file's first `24 + header length` bytes: checks the header,
    /// builds the tokenizer, then allocates one buffer per tensor (the largest first, so the
    /// smaller ones fill the gaps the tokenizer's parse left) and checks that working memory is
    /// left under `memory_limit`.
    pub fn begin(prefix: Vec<u8>, memory_limit: f64) -> JsResult<StreamingBundle> {
        Self::begin_checked(prefix, memory_limit as u64).map_err(js_error)
    }

    fn begin_checked(prefix: Vec<u8>, memory_limit: u64) -> Result<StreamingBundle> {
        let (file_bytes, data_bytes, need_bytes) = {
            let (header, file_bytes) = parse_header(&prefix)?;
            // Before anything large: a model far too big is refused at once.
            memory::check_fits(header.data_bytes, memory_limit)?;
            (file_bytes, header.data_bytes, memory::bytes_needed(&header, header.data_bytes))
        };
        let bundle = PendingBundle::from_prefix(&prefix)?;
        let header_bytes = PREAMBLE_BYTES + read_preamble(&prefix)?;
        // The header's copy is not needed any more: the tensors' buffers may fill its place.
        drop(prefix);
        let buffers = memory::tensor_buffers(bundle.spans(), memory_limit)?;
        // Only now the small allocations that stay: made before the tensors' buffers, they
        // would split the free memory those fill.
        let writer = TensorWriter::new(bundle.spans());
        let summary = BundleSummary {
            name: bundle.header.name.clone(),
            quantization: bundle.header.quantization.clone(),
            file_bytes: file_bytes as f64,
            need_bytes: need_bytes as f64,
            header_bytes: header_bytes as f64,
            data_start: (file_bytes - data_bytes) as f64,
        };
        Ok(StreamingBundle { bundle, summary, buffers, writer })
    }

    /// The checked header's facts.
    #[wasm_bindgen(getter)]
    pub fn summary(&self) -> BundleSummary {
        self.summary.clone()
    }

    /// Copies `chunk`, the bytes at `at..` of the data section, into the tensors' buffers
    /// (skipping the padding between tensors). Chunks come in order.
    pub fn write(&mut self, at: f64, chunk: &[u8]) {
        self.writer.write(&mut self.buffers, at as usize, chunk);
    }

    /// The model, once every tensor's bytes are written (the buffers are taken over).
    pub fn finish(self) -> JsResult<Model> {
        let quantization = self.bundle.header.quantization.clone();
        let model = self.bundle.finish_with_tensors(self.buffers).map_err(js_error)?;
        Ok(Model::new(model, quantization))
    }
}

/// Copies the data section, chunk by chunk and in order, into one buffer per tensor.
#[derive(Debug)]
struct TensorWriter {
    /// `(offset in the data section, length, buffer index)`, sorted by offset.
    tensors: Vec<(usize, usize, usize)>,
    /// The first tensor not yet fully written.
    next: usize,
}

impl TensorWriter {
    fn new(spans: &[(usize, usize)]) -> Self {
        let mut tensors: Vec<_> = spans.iter().enumerate().map(|(i, &(offset, len))| (offset, len, i)).collect();
        tensors.sort_by_key(|t| t.0);
        TensorWriter { tensors, next: 0 }
    }

    fn write(&mut self, buffers: &mut [Vec<u8>], at: usize, chunk: &[u8]) {
        let mut pos = 0;
        while pos < chunk.len() && self.next < self.tensors.len() {
            let (offset, len, index) = self.tensors[self.next];
            let here = at + pos;
            if here >= offset + len {
                self.next += 1;
            } else if here < offset {
                pos += (offset - here).min(chunk.len() - pos);
            } else {
                let take = (offset + len - here).min(chunk.len() - pos);
                buffers[index][here - offset..here - offset + take].copy_from_slice(&chunk[pos..pos + take]);
                pos += take;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TensorWriter;

    /// Tensors out of file order with padding between them, written in chunks of every size:
    /// each buffer holds exactly its span's bytes.
    #[test]
    fn tensor_writer_fills_each_buffer_from_any_chunking() {
        let spans = [(40, 7), (0, 16), (16, 20)];
        let data: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
        for chunk in 1..=data.len() {
            let mut buffers: Vec<Vec<u8>> = spans.iter().map(|&(_, len)| vec![0; len]).collect();
            let mut writer = TensorWriter::new(&spans);
            for (i, piece) in data.chunks(chunk).enumerate() {
                writer.write(&mut buffers, i * chunk, piece);
            }
            for (buffer, &(offset, len)) in buffers.iter().zip(&spans) {
                assert_eq!(buffer[..], data[offset..offset + len], "chunks of {chunk}");
            }
        }
    }
}
