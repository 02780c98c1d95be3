//! The byte-level side of the C ABI: buffers the host allocates in wasm memory, the last
//! error, and the result buffer through which calls return strings and arrays.
//!
//! Every exported call returns a status (>= 0 success, -1 error). After an error,
//! `liger_error_ptr/len` hold `{"code": ..., "message": ...}` as JSON; after a success that
//! produces data, `liger_result_ptr/len` hold it. Both stay valid until the next call.

use liger_core::{Error, ErrorCode, Result};
use std::cell::RefCell;

thread_local! {
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static RESULT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Records `err` for the host.
pub fn set_error(err: &Error) {
    let json = serde_json::json!({ "code": err.code.as_str(), "message": err.message }).to_string();
    LAST_ERROR.with(|e| *e.borrow_mut() = json.into_bytes());
}

/// Sets the result buffer.
pub fn set_result(bytes: Vec<u8>) {
    RESULT.with(|r| *r.borrow_mut() = bytes);
}

/// Runs `f`, turning its error into status -1 (recorded for the host).
pub fn status(f: impl FnOnce() -> Result<i32>) -> i32 {
    match f() {
        Ok(v) => v,
        Err(e) => {
            set_error(&e);
            -1
        }
    }
}

/// The `len` bytes the host wrote at `ptr` (a buffer from `liger_alloc`).
///
/// # Safety
/// `ptr..ptr+len` must lie in wasm memory the host wrote, untouched until the call returns.
pub unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr, len)
}

/// The UTF-8 text at `ptr`.
///
/// # Safety
/// As for [`bytes`].
pub unsafe fn text<'a>(ptr: *const u8, len: usize) -> Result<&'a str> {
    std::str::from_utf8(bytes(ptr, len)).map_err(|_| Error::invalid_argument("text is not valid UTF-8"))
}

/// A buffer of `len` bytes for the host to fill, or null when memory is exhausted (the host
/// then reports OUT_OF_MEMORY). Never traps.
#[no_mangle]
pub extern "C" fn liger_alloc(len: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(len.max(1)).is_err() {
        set_error(&Error::new(ErrorCode::OutOfMemory, format!("cannot allocate {len} bytes in wasm memory")));
        return std::ptr::null_mut();
    }
    let ptr = v.as_mut_ptr();
    std::mem::forget(v);
    ptr
}

/// Frees a buffer from `liger_alloc` that was not handed to a loading call.
///
/// # Safety
/// `ptr` and `len` must be exactly those of one `liger_alloc` call, freed once.
#[no_mangle]
pub unsafe extern "C" fn liger_free(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        drop(Vec::from_raw_parts(ptr, 0, len.max(1)));
    }
}

/// Takes ownership of a buffer from `liger_alloc`, holding `len` written bytes.
///
/// # Safety
/// As for [`liger_free`]; the buffer must not be used by the host afterwards.
pub unsafe fn take_buffer(ptr: *mut u8, len: usize) -> Vec<u8> {
    let mut v = Vec::from_raw_parts(ptr, 0, len.max(1));
    v.set_len(len);
    v
}

#[no_mangle]
pub extern "C" fn liger_error_ptr() -> *const u8 {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn liger_error_len() -> usize {
    LAST_ERROR.with(|e| e.borrow().len())
}

#[no_mangle]
pub extern "C" fn liger_result_ptr() -> *const u8 {
    RESULT.with(|r| r.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn liger_result_len() -> usize {
    RESULT.with(|r| r.borrow().len())
}
