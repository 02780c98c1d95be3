//! liger for the edge: a plain C ABI over `liger-core` for wasm32-unknown-unknown. The
//! JavaScript glue (`npm/wasm`) copies (or streams) a bundle into wasm memory, loads it, and drives
//! generation one token at a time so that a page stays responsive while tokens stream in.
//!
//! Memory is imported from the host, which sets its maximum (256 MiB by default): the engine
//! enforces it, and loading checks up front that a bundle fits, so a model too big for the
//! memory is a typed OUT_OF_MEMORY error rather than a trap. Calls return a status (>= 0 on
//! success, -1 on error with the error in `liger_error_*`); see `abi`.

pub mod abi;
mod generation;
mod memory;
#[cfg(target_arch = "wasm32")]
mod random;
mod selftest;

use abi::{bytes, set_result, status, take_buffer, text};
use liger_core::bundle::{load_bundle, parse_header, read_header, read_preamble, PendingBundle, PREAMBLE_BYTES};
use liger_core::chat::ChatMessage;
use liger_core::convert::{model_info_json, LigerModel};
use liger_core::{Error, Result};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// A loaded model. Leaked while loaded so generations can borrow it for `'static`; freed
/// by `liger_model_free` once no generation uses it.
pub(crate) struct LoadedModel {
    pub model: &'static LigerModel,
    pub quantization: String,
    pub generations: usize,
}

thread_local! {
    pub(crate) static MODELS: RefCell<HashMap<i32, LoadedModel>> = RefCell::new(HashMap::new());
    /// Bundles streaming in: header read, tokenizer built, tensor data still to come.
    static PENDING: RefCell<HashMap<i32, Pending>> = RefCell::new(HashMap::new());
    static NEXT_HANDLE: RefCell<i32> = const { RefCell::new(1) };
}

/// A bundle streaming in, with one buffer per tensor for its data.
type Pending = (PendingBundle, Vec<Vec<u8>>);

pub(crate) fn next_handle() -> i32 {
    NEXT_HANDLE.with(|n| {
        let mut n = n.borrow_mut();
        let h = *n;
        *n += 1;
        h
    })
}

pub(crate) fn with_model<T>(handle: i32, f: impl FnOnce(&'static LigerModel) -> Result<T>) -> Result<T> {
    let model = MODELS.with(|m| m.borrow().get(&handle).map(|l| l.model));
    f(model.ok_or_else(|| Error::invalid_argument(format!("model handle {handle} is not loaded (was it freed?)")))?)
}

/// Sets up the panic hook: a bug's message is kept for the host before the trap.
#[no_mangle]
pub extern "C" fn liger_init() {
    std::panic::set_hook(Box::new(|info| {
        abi::set_error(&Error::internal(format!("liger panicked: {info}")));
    }));
}

/// The header length of a bundle from its first 24 bytes (checks magic and version).
///
/// # Safety
/// `ptr..ptr+len` must be bytes the host wrote.
#[no_mangle]
pub unsafe extern "C" fn liger_bundle_header_len(ptr: *const u8, len: usize) -> i32 {
    status(|| Ok(read_preamble(bytes(ptr, len))? as i32))
}

/// Checks a bundle's header (the file's first `24 + header length` bytes) against the whole
/// file's length (or, when `total_len` is negative, takes the length the header states: a
/// file still streaming in), and that the model fits in `memory_limit` bytes of wasm memory.
/// Sets the result to `{name, quantization, fileBytes, needBytes, headerBytes}`.
///
/// # Safety
/// As for [`liger_bundle_header_len`].
#[no_mangle]
pub unsafe extern "C" fn liger_bundle_check(ptr: *const u8, len: usize, total_len: f64, memory_limit: f64) -> i32 {
    status(|| {
        let prefix = bytes(ptr, len);
        let (header, file_bytes) = if total_len < 0.0 {
            parse_header(prefix)?
        } else {
            (read_header(prefix, total_len as u64)?, total_len as u64)
        };
        let need = memory::bytes_needed(&header, file_bytes);
        memory::check_fits(need, memory_limit as u64)?;
        let summary = json!({
            "name": header.name,
            "quantization": header.quantization,
            "fileBytes": file_bytes,
            "needBytes": need,
            "headerBytes": PREAMBLE_BYTES + read_preamble(prefix)?,
        });
        set_result(summary.to_string().into_bytes());
        Ok(0)
    })
}

/// Loads the model from a whole bundle in a buffer from `liger_alloc` (taken over: do not
/// free it). Returns the model handle.
///
/// # Safety
/// `ptr`, `len`: one `liger_alloc` buffer, fully written.
#[no_mangle]
pub unsafe extern "C" fn liger_model_load(ptr: *mut u8, len: usize) -> i32 {
    let buffer = take_buffer(ptr, len);
    status(|| {
        let quantization = {
            let h = read_header(&buffer, len as u64)?;
            h.quantization
        };
        let model = load_bundle(Arc::new(buffer))?;
        let handle = next_handle();
        let model: &'static LigerModel = Box::leak(Box::new(model));
        MODELS.with(|m| m.borrow_mut().insert(handle, LoadedModel { model, quantization, generations: 0 }));
        Ok(handle)
    })
}

/// Starts loading a bundle that streams in, from its first `24 + header length` bytes: checks
/// the header, builds the tokenizer, then allocates one buffer per tensor (the largest first,
/// so the smaller ones fill the gaps the tokenizer's parse left) and checks that working
/// memory is left under `memory_limit`. Sets the result to the summary JSON `{name,
/// quantization, fileBytes, needBytes, headerBytes}`; [`liger_bundle_tensors`] then gives
/// where each tensor's bytes go. The host copies the file's tensor data there as it arrives and
/// calls [`liger_bundle_finish`] (or [`liger_bundle_abort`]). Returns the pending bundle's
/// handle.
///
/// # Safety
/// As for [`liger_bundle_header_len`].
#[no_mangle]
pub unsafe extern "C" fn liger_bundle_begin(ptr: *const u8, len: usize, memory_limit: f64) -> i32 {
    status(|| {
        let prefix = bytes(ptr, len);
        let summary = {
            let (header, file_bytes) = parse_header(prefix)?;
            let need = memory::bytes_needed(&header, header.data_bytes);
            // Before anything large: a model far too big is refused at once.
            memory::check_fits(header.data_bytes, memory_limit as u64)?;
            json!({
                "name": header.name,
                "quantization": header.quantization,
                "fileBytes": file_bytes,
                "needBytes": need,
                "headerBytes": PREAMBLE_BYTES + read_preamble(prefix)?,
                "dataStart": file_bytes - header.data_bytes,
            })
        };
        let bundle = PendingBundle::from_prefix(prefix)?;
        let buffers = memory::tensor_buffers(bundle.spans(), memory_limit as u64)?;
        let handle = next_handle();
        PENDING.with(|p| p.borrow_mut().insert(handle, (bundle, buffers)));
        set_result(summary.to_string().into_bytes());
        Ok(handle)
    })
}

/// Where a pending bundle's tensor data goes: for each tensor, in the order of the file, its
/// offset in the data section, its buffer's address and its length (u32 little-endian
/// triples in the result).
#[no_mangle]
pub extern "C" fn liger_bundle_tensors(pending: i32) -> i32 {
    status(|| {
        PENDING.with(|p| {
            let p = p.borrow();
            let (bundle, buffers) = p
                .get(&pending)
                .ok_or_else(|| Error::invalid_argument(format!("pending bundle {pending} does not exist")))?;
            let mut order: Vec<usize> = (0..buffers.len()).collect();
            order.sort_by_key(|&i| bundle.spans()[i].0);
            let mut table = Vec::with_capacity(order.len() * 12);
            for i in order {
                let (offset, len) = bundle.spans()[i];
                for v in [offset, buffers[i].as_ptr() as usize, len] {
                    table.extend_from_slice(&(v as u32).to_le_bytes());
                }
            }
            set_result(table);
            Ok(buffers.len() as i32)
        })
    })
}

/// Finishes a pending bundle whose tensor buffers the host has filled. Returns the model
/// handle; the pending bundle is gone either way.
#[no_mangle]
pub extern "C" fn liger_bundle_finish(pending: i32) -> i32 {
    status(|| {
        let (bundle, buffers) = PENDING
            .with(|p| p.borrow_mut().remove(&pending))
            .ok_or_else(|| Error::invalid_argument(format!("pending bundle {pending} does not exist")))?;
        let quantization = bundle.header.quantization.clone();
        let model = bundle.finish_with_tensors(buffers)?;
        let handle = next_handle();
        let model: &'static LigerModel = Box::leak(Box::new(model));
        MODELS.with(|m| m.borrow_mut().insert(handle, LoadedModel { model, quantization, generations: 0 }));
        Ok(handle)
    })
}

/// Drops a pending bundle and its buffers (the stream failed).
#[no_mangle]
pub extern "C" fn liger_bundle_abort(pending: i32) -> i32 {
    PENDING.with(|p| p.borrow_mut().remove(&pending));
    0
}

/// Frees a model (refused while a generation of it is running).
#[no_mangle]
pub extern "C" fn liger_model_free(handle: i32) -> i32 {
    status(|| {
        let entry = MODELS.with(|m| m.borrow_mut().remove(&handle));
        let Some(entry) = entry else { return Ok(0) };
        if entry.generations > 0 {
            let n = entry.generations;
            MODELS.with(|m| m.borrow_mut().insert(handle, entry));
            return Err(Error::invalid_argument(format!("the model still has {n} generation(s); free them first")));
        }
        // SAFETY: leaked by liger_model_load, and no generation borrows it any more.
        drop(unsafe { Box::from_raw(entry.model as *const LigerModel as *mut LigerModel) });
        Ok(0)
    })
}

/// The model's facts as JSON (the TypeScript `ModelInfo`, plus `quantization`).
#[no_mangle]
pub extern "C" fn liger_model_info(handle: i32) -> i32 {
    status(|| {
        let quantization = MODELS.with(|m| m.borrow().get(&handle).map(|l| l.quantization.clone()));
        with_model(handle, |m| {
            // A bundle's adapters are merged into its weights: its `loraParams` is 0.
            let mut info = model_info_json(&m.base, Some(m))?;
            if let Value::Object(map) = &mut info {
                map.insert("quantization".into(), json!(quantization));
            }
            set_result(info.to_string().into_bytes());
            Ok(0)
        })
    })
}

/// Text to token ids (result: u32 little-endian). `add_bos`: -1 model default, 0 no, 1 yes.
///
/// # Safety
/// `ptr..ptr+len` must be bytes the host wrote.
#[no_mangle]
pub unsafe extern "C" fn liger_encode(
    handle: i32,
    ptr: *const u8,
    len: usize,
    add_bos: i32,
    parse_special: i32,
) -> i32 {
    status(|| {
        let s = text(ptr, len)?;
        with_model(handle, |m| {
            let add = (add_bos >= 0).then_some(add_bos == 1);
            let ids = m.base.encode(s, add, parse_special != 0)?;
            set_result(ids.iter().flat_map(|i| i.to_le_bytes()).collect());
            Ok(ids.len() as i32)
        })
    })
}

/// Token ids (u32 little-endian at `ptr`, `n` of them) to text (result: UTF-8).
///
/// # Safety
/// `ptr` must hold `n` u32 the host wrote.
#[no_mangle]
pub unsafe extern "C" fn liger_decode(handle: i32, ptr: *const u8, n: usize, skip_special: i32) -> i32 {
    status(|| {
        let ids = read_ids(ptr, n);
        with_model(handle, |m| {
            set_result(m.base.decode(&ids, skip_special != 0)?.into_bytes());
            Ok(0)
        })
    })
}

/// Renders `[{role, content}, ...]` (JSON) with the model's chat template (result: UTF-8).
///
/// # Safety
/// `ptr..ptr+len` must be bytes the host wrote.
#[no_mangle]
pub unsafe extern "C" fn liger_apply_chat_template(
    handle: i32,
    ptr: *const u8,
    len: usize,
    add_generation_prompt: i32,
) -> i32 {
    status(|| {
        let messages = parse_messages(bytes(ptr, len))?;
        with_model(handle, |m| {
            set_result(m.base.apply_chat_template(&messages, add_generation_prompt != 0)?.into_bytes());
            Ok(0)
        })
    })
}

/// The logits after the last of `n` tokens, from an empty state (result: f32 little-endian).
///
/// # Safety
/// `ptr` must hold `n` u32 the host wrote.
#[no_mangle]
pub unsafe extern "C" fn liger_last_logits(handle: i32, ptr: *const u8, n: usize) -> i32 {
    status(|| {
        let ids = read_ids(ptr, n);
        with_model(handle, |m| {
            let logits = m.last_logits(&ids)?;
            set_result(logits.iter().flat_map(|v| v.to_le_bytes()).collect());
            Ok(0)
        })
    })
}

/// Bytes of wasm memory in use (its current size).
#[no_mangle]
pub extern "C" fn liger_memory_bytes() -> f64 {
    memory::current_bytes() as f64
}

/// `n` token ids written by the host as u32 little-endian.
pub(crate) unsafe fn read_ids(ptr: *const u8, n: usize) -> Vec<u32> {
    bytes(ptr, n * 4).chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// `[{"role": ..., "content": ...}, ...]` as chat messages.
fn parse_messages(json: &[u8]) -> Result<Vec<ChatMessage>> {
    let bad = || Error::invalid_argument("messages must be a JSON array of {role, content} strings");
    let value: Value = serde_json::from_slice(json).map_err(|_| bad())?;
    let items = value.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|m| {
            let field = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(bad);
            Ok(ChatMessage { role: field("role")?, content: field("content")? })
        })
        .collect()
}
