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
