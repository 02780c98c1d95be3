// liger's WebAssembly engine: the JavaScript side of the plain C ABI of crates/liger-wasm.
// Uses only what browsers and Node share (WebAssembly, fetch, ArrayBuffer, TextEncoder,
// crypto.getRandomValues): no Node-only API, so the same file runs in a page.

/** Wasm memory maximum by default: 256 MiB (the engine enforces it). */
export const DEFAULT_MAX_MEMORY_BYTES = 256 * 1024 * 1024;
const PAGE = 65536;
/** The module's own start size (it is linked with --initial-memory=4 MiB). */
const INITIAL_PAGES = 64;
const DONE = -2;

/** An error from the engine: `code` is one of liger's error codes (e.g. "INVALID_FILE"). */
export class LigerWasmError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "LigerWasmError";
    this.code = code;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Starts the engine. `source`: the module as a URL (fetched), bytes, or a compiled
 * WebAssembly.Module. `maxMemoryBytes`: the memory maximum (a multiple of 64 KiB).
 */
export async function createEngine({ source, maxMemoryBytes = DEFAULT_MAX_MEMORY_BYTES } = {}) {
  if (!Number.isInteger(maxMemoryBytes) || maxMemoryBytes < INITIAL_PAGES * PAGE || maxMemoryBytes > 4 * 1024 ** 3) {
    throw new LigerWasmError("INVALID_ARGUMENT", `maxMemoryBytes must be an integer between 4 MiB and 4 GiB, got ${maxMemoryBytes}`);
  }
  const module = await compile(source ?? new URL("./liger.wasm", import.meta.url));
  const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: Math.floor(maxMemoryBytes / PAGE) });
  const env = {
    memory,
    liger_host_random(ptr, len) {
      for (let off = 0; off < len; off += 65536) {
        globalThis.crypto.getRandomValues(new Uint8Array(memory.buffer, ptr + off, Math.min(65536, len - off)));
      }
    },
  };
  let instance;
  try {
    instance = await WebAssembly.instantiate(module, { env });
  } catch (err) {
    throw new LigerWasmError("INVALID_FILE", `the wasm module does not fit this engine: ${err.message}; rebuild it with scripts/build-wasm.sh`, { cause: err });
  }
  const engine = new Engine(instance.exports, memory, Math.floor(maxMemoryBytes / PAGE) * PAGE);
  engine.exports.liger_init();
  return engine;
}

async function compile(source) {
  if (source instanceof WebAssembly.Module) return source;
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    try {
      return await WebAssembly.compile(source);
    } catch (err) {
      throw new LigerWasmError("INVALID_FILE", `not a valid wasm module: ${err.message}`, { cause: err });
    }
  }
  const response = await fetch(source);
  if (!response.ok) throw new LigerWasmError("IO_ERROR", `fetching ${source}: HTTP ${response.status}`);
  return compile(await response.arrayBuffer());
}

/**
 * Fetches a bundle into an ArrayBuffer, reporting `onProgress(fraction)` while it arrives.
 * The whole file is held in JavaScript and then copied into wasm memory by `loadBundle`:
 * `engine.fetchBundle` streams it into wasm memory instead, at about half the peak memory.
 */
export async function fetchBundle(url, onProgress) {
  const response = await fetchOk(url);
  const total = Number(response.headers.get("content-length")) || 0;
  if (!response.body || !total) return response.arrayBuffer();
  const out = new Uint8Array(total);
  let at = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > total) throw new LigerWasmError("INVALID_FILE", `${url}: more bytes than its Content-Length`);
    out.set(value, at);
    at += value.length;
    onProgress?.(at / total);
  }
  return at === total ? out.buffer : out.buffer.slice(0, at);
}

async function fetchOk(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new LigerWasmError("IO_ERROR", `fetching ${url}: ${err.message}`, { cause: err });
  }
  if (!response.ok) throw new LigerWasmError("IO_ERROR", `fetching ${url}: HTTP ${response.status}`);
  return response;
}

/**
 * Reads a stream of byte chunks into buffers of known length, without holding more of it than
 * one chunk beyond what was asked for.
 */
class ChunkReader {
  constructor(stream) {
    this.reader = stream.getReader();
    this.rest = null;
    this.read = 0;
  }

  /** The next chunk (null at the end); a failing stream is an IO_ERROR. */
  async next() {
    if (this.rest) {
      const chunk = this.rest;
      this.rest = null;
      return chunk;
    }
    let result;
    try {
      result = await this.reader.read();
    } catch (err) {
      throw new LigerWasmError("IO_ERROR", `reading the bundle: ${err.message}`, { cause: err });
    }
    if (result.done) return null;
    if (!(result.value instanceof Uint8Array)) throw new LigerWasmError("INVALID_ARGUMENT", "a bundle stream must yield Uint8Array chunks");
    this.read += result.value.length;
    return result.value;
  }

  /**
   * Passes the next `n` bytes to `write(chunk, at)` piece by piece; `what` names the part for
   * the error when the stream ends first.
   */
  async copy(n, write, what) {
    let at = 0;
    while (at < n) {
      const chunk = await this.next();
      if (chunk === null) {
        throw new LigerWasmError("INVALID_FILE", `bundle: truncated: the stream ended in ${what} after ${this.read} bytes; fetch or copy it again`);
      }
      const take = Math.min(chunk.length, n - at);
      if (take < chunk.length) this.rest = chunk.subarray(take);
      write(chunk.subarray(0, take), at);
      at += take;
    }
  }

  /** The next `n` bytes as one buffer (for the preamble and header only). */
  async bytes(n, what) {
    const out = new Uint8Array(n);
    await this.copy(n, (chunk, at) => out.set(chunk, at), what);
    return out;
  }

  /** Fails unless the stream is at its end. */
  async expectEnd(fileBytes) {
    const chunk = await this.next();
    if (chunk !== null && chunk.length > 0) {
      throw new LigerWasmError("INVALID_FILE", `bundle: longer than its header states (${fileBytes} bytes); fetch or copy it again`);
    }
    while ((await this.next()) !== null); // Empty chunks only; drain them.
  }

  cancel() {
    this.reader.cancel().catch(() => {});
  }
}

class Engine {
  constructor(exports, memory, maxBytes) {
    this.exports = exports;
    this.memory = memory;
    this.maxMemoryBytes = maxBytes;
    this.stopped = null;
  }

  /** Bytes of wasm memory now (it only grows, up to maxMemoryBytes). */
  memoryBytes() {
    return this.memory.buffer.byteLength;
  }

  /** Calls an export; a wasm trap stops the engine and becomes a LigerWasmError. */
  call(name, ...args) {
    if (this.stopped) throw new LigerWasmError("INTERNAL", `the wasm engine stopped after an earlier failure (${this.stopped}); create a new engine`);
    try {
      return this.exports[name](...args);
    } catch (err) {
      if (!(err instanceof WebAssembly.RuntimeError)) throw err;
      const full = this.memoryBytes() + 2 * 1024 * 1024 >= this.maxMemoryBytes;
      const detail = this.readError()?.message;
      this.stopped = err.message;
      if (full) {
        throw new LigerWasmError("OUT_OF_MEMORY", `wasm memory is exhausted (${this.maxMemoryBytes >> 20} MiB maximum) in ${name}; use a smaller or more quantised bundle, or a larger maxMemoryBytes`, { cause: err });
      }
      throw new LigerWasmError("INTERNAL", `the wasm engine failed in ${name}: ${detail ?? err.message}`, { cause: err });
    }
  }

  /** Calls an export that returns a status; throws the engine's error on -1. */
  check(name, ...args) {
    const status = this.call(name, ...args);
    if (status === -1) {
      const e = this.readError() ?? { code: "INTERNAL", message: `${name} failed without a message` };
      throw new LigerWasmError(e.code, e.message);
    }
    return status;
  }

  readError() {
    const len = this.exports.liger_error_len();
    if (len === 0) return null;
    try {
      return JSON.parse(decoder.decode(new Uint8Array(this.memory.buffer, this.exports.liger_error_ptr(), len)));
    } catch {
      return null;
    }
  }

  resultBytes() {
    return new Uint8Array(this.memory.buffer, this.exports.liger_result_ptr(), this.exports.liger_result_len()).slice();
  }

  resultText() {
    return decoder.decode(this.resultBytes());
  }

  /** Copies `bytes` into a fresh wasm buffer of `len` bytes (at least theirs); returns [ptr, len]. */
  put(bytes, len = bytes.length) {
    const ptr = this.call("liger_alloc", len);
    if (ptr === 0) {
      throw new LigerWasmError("OUT_OF_MEMORY", `cannot allocate ${len} bytes of wasm memory (maximum ${this.maxMemoryBytes >> 20} MiB)`);
    }
    new Uint8Array(this.memory.buffer, ptr, bytes.length).set(bytes);
    return [ptr, len];
  }

  /** Runs `f(ptr, len)` on a temporary copy of `bytes` in wasm memory. */
  withBytes(bytes, f) {
    const [ptr, len] = this.put(bytes);
    try {
      return f(ptr, len);
    } finally {
      if (!this.stopped) this.exports.liger_free(ptr, len);
    }
  }

  /**
   * Loads a bundle (an ArrayBuffer or Uint8Array of the whole file). Checks the header and
   * that the model fits in memory before copying the weights in.
   */
  loadBundle(data) {
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : null;
    if (!bytes) throw new LigerWasmError("INVALID_ARGUMENT", "a bundle must be an ArrayBuffer or a Uint8Array");
    const headerLen = this.withBytes(bytes.subarray(0, 24), (p, n) => this.check("liger_bundle_header_len", p, n));
    const summary = this.withBytes(bytes.subarray(0, 24 + headerLen), (p, n) => {
      this.check("liger_bundle_check", p, n, bytes.length, this.maxMemoryBytes);
      return JSON.parse(this.resultText());
    });
    const [ptr, len] = this.put(bytes);
    const handle = this.check("liger_model_load", ptr, len);
    return new WasmModel(this, handle, summary);
  }

  /**
   * Fetches a bundle and loads it, streaming the response body straight into wasm memory
   * (see `loadBundleStream`). `onProgress(fraction)` is called as bytes arrive.
   */
  async fetchBundle(url, onProgress) {
    const response = await fetchOk(url);
    if (!response.body) return this.loadBundle(await response.arrayBuffer());
    return this.loadBundleStream(response.body, onProgress);
  }

  /**
   * Loads a bundle from a ReadableStream of Uint8Array chunks (a response body, a file's
   * stream). The engine reads the header first (format, tokenizer) and allocates a buffer for
   * each tensor; each chunk is then copied into those buffers as it arrives, so no copy of the
   * file is held beside the model. A stream that ends early or runs long is INVALID_FILE.
   */
  async loadBundleStream(stream, onProgress) {
    const chunks = new ChunkReader(stream);
    let pending = null;
    try {
      const preamble = await chunks.bytes(24, "the preamble");
      const headerLen = this.withBytes(preamble, (p, n) => this.check("liger_bundle_header_len", p, n));
      const prefix = new Uint8Array(24 + headerLen);
      prefix.set(preamble);
      await chunks.copy(headerLen, (chunk, at) => prefix.set(chunk, 24 + at), "the header");
      pending = this.withBytes(prefix, (p, n) => this.check("liger_bundle_begin", p, n, this.maxMemoryBytes));
      const summary = JSON.parse(this.resultText());
      const { fileBytes, dataStart } = summary;
      const count = this.check("liger_bundle_tensors", pending);
      const table = new DataView(this.resultBytes().buffer);
      const tensors = Array.from({ length: count }, (_, i) => ({
        offset: table.getUint32(12 * i, true),
        ptr: table.getUint32(12 * i + 4, true),
        len: table.getUint32(12 * i + 8, true),
      }));
      await chunks.copy(dataStart - prefix.length, () => {}, "the header's padding");
      const write = tensorWriter(tensors, (ptr, bytes) => new Uint8Array(this.memory.buffer, ptr, bytes.length).set(bytes));
      await chunks.copy(
        fileBytes - dataStart,
        (chunk, at) => {
          write(chunk, at);
          onProgress?.((dataStart + at + chunk.length) / fileBytes);
        },
        "the tensor data",
      );
      await chunks.expectEnd(fileBytes);
      const begun = pending;
      pending = null; // liger_bundle_finish takes it over, on success or failure.
      const handle = this.check("liger_bundle_finish", begun);
      return new WasmModel(this, handle, summary);
    } catch (err) {
      chunks.cancel();
      if (!this.stopped && pending !== null) this.exports.liger_bundle_abort(pending);
      throw err;
    }
  }
}

/**
 * A function `(chunk, at)` that copies the bytes at `at..` of the data section into the
 * tensors' buffers (`{offset, ptr, len}` sorted by offset), skipping the padding between them,
 * through `copy(ptr, bytes)`. Chunks come in order.
 */
function tensorWriter(tensors, copy) {
  let i = 0;
  return (chunk, at) => {
    let pos = 0;
    while (pos < chunk.length && i < tensors.length) {
      const t = tensors[i];
      const here = at + pos;
      const end = t.offset + t.len;
      if (here >= end) {
        i += 1;
      } else if (here < t.offset) {
        pos += Math.min(t.offset - here, chunk.length - pos);
      } else {
        const take = Math.min(end - here, chunk.length - pos);
        copy(t.ptr + (here - t.offset), chunk.subarray(pos, pos + take));
        pos += take;
      }
    }
  };
}

/** A model loaded into the engine. */
class WasmModel {
  constructor(engine, handle, summary) {
    this.engine = engine;
    this.handle = handle;
    this.summary = summary;
    engine.check("liger_model_info", handle);
    this.info = JSON.parse(engine.resultText());
  }

  /** Text to token ids. `addBos`: undefined for the model's default. */
  encode(text, addBos, parseSpecial = false) {
    const e = this.engine;
    const bos = addBos === undefined ? -1 : addBos ? 1 : 0;
    const n = e.withBytes(encoder.encode(text), (p, len) => e.check("liger_encode", this.handle, p, len, bos, parseSpecial ? 1 : 0));
    return new Uint32Array(e.resultBytes().buffer, 0, n);
  }

  decode(ids, skipSpecial = false) {
    const e = this.engine;
    e.withBytes(idBytes(ids), (p) => e.check("liger_decode", this.handle, p, ids.length, skipSpecial ? 1 : 0));
    return e.resultText();
  }

  applyChatTemplate(messages, addGenerationPrompt = true) {
    const e = this.engine;
    e.withBytes(encoder.encode(JSON.stringify(messages)), (p, n) => e.check("liger_apply_chat_template", this.handle, p, n, addGenerationPrompt ? 1 : 0));
    return e.resultText();
  }

  /** Logits of the token after `ids` (from an empty state). */
  lastLogits(ids) {
    const e = this.engine;
    e.withBytes(idBytes(ids), (p) => e.check("liger_last_logits", this.handle, p, ids.length));
    return new Float32Array(e.resultBytes().buffer);
  }

  /**
   * Starts a generation (runs the prefill now). Options: maxTokens, temperature, topK, topP,
   * seed, stop, ignoreEos.
   */
  startGeneration(ids, options = {}) {
    const e = this.engine;
    const handle = e.withBytes(idBytes(ids), (p) =>
      e.withBytes(encoder.encode(JSON.stringify(options)), (op, on) => e.check("liger_generate_start", this.handle, p, ids.length, op, on)),
    );
    return new WasmGeneration(e, handle);
  }

  /** Frees the model's memory in the engine (the pages stay with the engine for reuse). */
  free() {
    this.engine.check("liger_model_free", this.handle);
  }
}

/** One running generation: call step() for each token. */
class WasmGeneration {
  constructor(engine, handle) {
    this.engine = engine;
    this.handle = handle;
    this.result = null;
  }

  /** `{ id, text }` for the next token, or null once done (then `result` is set). */
  step() {
    if (this.result) return null;
    const e = this.engine;
    const status = e.check("liger_generate_step", this.handle);
    if (status === DONE) {
      this.result = JSON.parse(e.resultText());
      this.free();
      return null;
    }
    return { id: status, text: e.resultText() };
  }

  abort() {
    if (!this.result) this.engine.check("liger_generate_abort", this.handle);
  }

  /** Bytes of the decoding state now (constant for a Liger model). */
  stateBytes() {
    return this.engine.call("liger_generate_state_bytes", this.handle);
  }

  free() {
    if (!this.engine.stopped) this.engine.check("liger_generate_free", this.handle);
  }
}

function idBytes(ids) {
  const a = ids instanceof Uint32Array ? ids : Uint32Array.from(ids);
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
