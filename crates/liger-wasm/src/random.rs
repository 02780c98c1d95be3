//! Randomness for the wasm build: the tokenizer's hash maps seed themselves through
//! `getrandom`, which on wasm32-unknown-unknown asks the host (`crypto.getRandomValues`).

#[link(wasm_import_module = "env")]
extern "C" {
    /// Fills `len` bytes at `ptr` with random bytes (provided by the JavaScript glue).
    fn liger_host_random(ptr: *mut u8, len: usize);
}

/// getrandom's custom backend (selected with `--cfg getrandom_backend="custom"`).
///
/// # Safety
/// `dest` must be valid for `len` bytes of writes (getrandom guarantees it).
#[no_mangle]
unsafe extern "Rust" fn __getrandom_v03_custom(dest: *mut u8, len: usize) -> Result<(), getrandom::Error> {
    liger_host_random(dest, len);
    Ok(())
}
