//! Randomness for the wasm build: the tokenizer's hash maps seed themselves through
//! `getrandom`, which on wasm32-unknown-unknown asks the host (`crypto.getRandomValues`,
//! which every runtime the engine targets has).

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// Web Crypto's `getRandomValues` (at most 65536 bytes per call).
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(bytes: &mut [u8]);
}

/// getrandom's custom backend (selected with `--cfg getrandom_backend="custom"`).
///
/// # Safety
/// `dest` must be valid for `len` bytes of writes (getrandom guarantees it).
#[no_mangle]
unsafe extern "Rust" fn __getrandom_v03_custom(dest: *mut u8, len: usize) -> Result<(), getrandom::Error> {
    let bytes = std::slice::from_raw_parts_mut(dest, len);
    for chunk in bytes.chunks_mut(65536) {
        get_random_values(chunk);
    }
    Ok(())
}
