//! liger for the edge: wasm-bindgen bindings over `liger-core` for wasm32-unknown-unknown.
//! `wasm-bindgen --target web` generates the JavaScript glue and its `.d.ts` from these exports
//! (scripts/build-wasm.sh); `npm/wasm/index.js` creates an engine (one instance, one memory),
//! copies or streams a bundle into it, and drives generation one token at a time so that a
//! page stays responsive while tokens stream in.
//!
//! Memory is imported from the host, which sets its maximum (256 MiB by default): the engine
//! enforces it, and loading checks up front that a bundle fits, so a model too big for the
//! memory is a typed OUT_OF_MEMORY error rather than a trap. Every fallible export returns a
//! `Result` whose error is the package's `LigerWasmError` (code and message from
//! `liger_core::Error`), which the generated glue throws.

mod bundle;
mod generation;
mod memory;
mod model;
#[cfg(target_arch = "wasm32")]
mod random;
mod selftest;

pub use bundle::{bundle_header_length, check_bundle, load_bundle, BundleSummary, StreamingBundle};
pub use generation::Generation;
pub use model::Model;
pub use selftest::self_test;

use std::cell::RefCell;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(raw_module = "./errors.js")]
extern "C" {
    /// The package's error class (`npm/wasm/errors.js`): `code` is one of liger's error codes.
    pub type LigerWasmError;

    #[wasm_bindgen(constructor)]
    fn new(code: &str, message: &str) -> LigerWasmError;
}

/// What the exports return: liger's typed errors become the package's `LigerWasmError`.
pub type JsResult<T> = std::result::Result<T, LigerWasmError>;

/// `liger_core::Error` as the JavaScript error the glue throws.
pub(crate) fn js_error(err: liger_core::Error) -> LigerWasmError {
    LigerWasmError::new(err.code.as_str(), &err.message)
}

thread_local! {
    /// The message of a panic (a bug), kept for the host: the panic then traps.
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs once per instance: keeps a panic's message for [`take_panic_message`].
#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        PANIC.with(|p| *p.borrow_mut() = Some(format!("liger panicked: {info}")));
    }));
}

/// The message of the panic that stopped the engine, if one did (read after a trap).
#[wasm_bindgen(js_name = takePanicMessage)]
pub fn take_panic_message() -> Option<String> {
    PANIC.with(|p| p.borrow_mut().take())
}
