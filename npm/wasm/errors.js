// The engine's error class, shared by every engine: the generated bindings throw it (the Rust
// side builds it from liger's typed errors) and the package's own code throws it too.

/** An error from the engine: `code` is one of liger's error codes (e.g. "INVALID_FILE"). */
export class LigerWasmError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "LigerWasmError";
    this.code = code;
  }
}
