//! How much wasm memory a model needs, checked before anything large is allocated.

use liger_core::bundle::BundleHeader;
use liger_core::{Error, ErrorCode, Result};

const MIB: u64 = 1 << 20;
/// Working memory beyond the weights: activations of a prompt, logits, the decoding state,
/// allocator slack.
const WORKING_BYTES: u64 = 24 * MIB;
/// The tokenizer's in-memory tables take several times its JSON (hash maps of the
/// vocabulary and merges).
const TOKENIZER_EXPANSION: u64 = 6;

/// Bytes of wasm memory a bundle needs once loaded: the file (weights are used in place), the
/// tokenizer's tables, and working memory.
pub fn bytes_needed(header: &BundleHeader, file_bytes: u64) -> u64 {
    file_bytes + TOKENIZER_EXPANSION * header.tokenizer.len() as u64 + WORKING_BYTES
}

/// Memory in use now (the current size of the linear memory).
pub fn current_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return core::arch::wasm32::memory_size(0) as u64 * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    0
}

/// An OUT_OF_MEMORY error unless `need` more bytes fit under `limit`.
pub fn check_fits(need: u64, limit: u64) -> Result<()> {
    let used = current_bytes();
    if used + need > limit {
        return Err(Error::new(
            ErrorCode::OutOfMemory,
            format!(
                "the model needs about {} MiB of wasm memory and {} MiB are left of the {} MiB maximum; use an int8 or 4-bit bundle, a smaller model, or a larger maxMemoryBytes",
                need.div_ceil(MIB),
                limit.saturating_sub(used) / MIB,
                limit / MIB
            ),
        ));
    }
    Ok(())
}

/// Working memory that must be left once a streamed model's tensors are allocated: the
/// decoding state, a prompt's activations and logits (beyond what is free inside the memory
/// already, which the allocator reuses first).
const STREAM_WORKING_BYTES: u64 = 6 * MIB;

/// One zeroed buffer per tensor (`spans`: offset and length of each), the largest allocated
/// first, so that the smaller ones fill gaps; OUT_OF_MEMORY (never a trap) when they do not
/// fit under `limit` with working memory to spare.
pub fn tensor_buffers(spans: &[(usize, usize)], limit: u64) -> Result<Vec<Vec<u8>>> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(spans[i].1));
    let mut buffers: Vec<Vec<u8>> = spans.iter().map(|_| Vec::new()).collect();
    let total: usize = spans.iter().map(|s| s.1).sum();
    for i in order {
        let len = spans[i].1;
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(len).is_err() {
            return Err(out_of_memory(total as u64, limit));
        }
        v.resize(len, 0);
        buffers[i] = v;
    }
    if current_bytes() + STREAM_WORKING_BYTES > limit {
        return Err(out_of_memory(total as u64 + STREAM_WORKING_BYTES, limit));
    }
    Ok(buffers)
}

fn out_of_memory(need: u64, limit: u64) -> Error {
    Error::new(
        ErrorCode::OutOfMemory,
        format!(
            "the model's weights and working memory need about {} MiB, more than fits under the {} MiB maximum of wasm memory; use a 4-bit bundle, a smaller model, or a larger maxMemoryBytes",
            need.div_ceil(MIB),
            limit / MIB
        ),
    )
}
