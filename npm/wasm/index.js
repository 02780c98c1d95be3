// liger's WebAssembly engine: the package's API over the bindings that wasm-bindgen generates
// from crates/liger-wasm (liger_wasm.js, built by scripts/build-wasm.sh). This file holds what
// the bindings cannot: one instance and one memory per engine (its maximum set here and
// enforced by the engine), fetching and streaming with web streams, and a trap stopping the
// engine. It uses only what browsers, Node, Deno and workerd share.

import { LigerWasmError } from "./errors.js";
import { createBindings } from "./liger_wasm.js";

export { LigerWasmError };

/** Wasm memory maximum by default: 256 MiB (the engine enforces it). */
export const DEFAULT_MAX_MEMORY_BYTES = 256 * 1024 * 1024;
const PAGE = 65536;
/** The module's own start size (it is linked with --initial-memory=4 MiB). */
const INITIAL_PAGES = 64;

/**
 * Starts an engine: its own instance of the module, with its own memory. `source`: the module
 * as a URL (fetched), bytes, or a compiled WebAssembly.Module. `maxMemoryBytes`: the memory
 * maximum (a multiple of 64 KiB).
 */
export async function createEngine({ source, maxMemoryBytes = DEFAULT_MAX_MEMORY_BYTES } = {}) {
  if (!Number.isInteger(maxMemoryBytes) || maxMemoryBytes < INITIAL_PAGES * PAGE || maxMemoryBytes > 4 * 1024 ** 3) {
    throw new LigerWasmError("INVALID_ARGUMENT", `maxMemoryBytes must be an integer between 4 MiB and 4 GiB, got ${maxMemoryBytes}`);
  }
  const module = await compile(source ?? new URL("./liger.wasm", import.meta.url));
  const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: Math.floor(maxMemoryBytes / PAGE) });
  const bindings = createBindings();
  try {
    try {
      // The module is compiled already: instantiating it is quick, and the synchronous path
      // spares Node loading its fetch implementation (which the asynchronous one looks for).
      bindings.initSync({ module, memory });
    } catch (err) {
      // A browser's main thread may refuse synchronous instantiation of a large module.
      if (!(err instanceof RangeError)) throw err;
      await bindings.default({ module_or_path: module, memory });
    }
  } catch (err) {
    throw new LigerWasmError("INVALID_FILE", `the wasm module does not fit this engine: ${err.message}; rebuild it with scripts/build-wasm.sh`, { cause: err });
  }
  return new Engine(bindings, memory, Math.floor(maxMemoryBytes / PAGE) * PAGE);
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
  const response = await fetchOk(source);
  if (typeof WebAssembly.compileStreaming === "function" && response.headers.get("content-type") === "application/wasm") {
    try {
      return await WebAssembly.compileStreaming(response);
    } catch (err) {
      throw new LigerWasmError("INVALID_FILE", `not a valid wasm module: ${err.message}`, { cause: err });
    }
  }
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

/** A checked bundle header's facts as a plain object (the bindings' object is freed). */
function summaryOf(summary) {
  const { name, quantization, fileBytes, needBytes, headerBytes, dataStart } = summary;
  summary.free();
  return { name, quantization, fileBytes, needBytes, headerBytes, dataStart };
}

class Engine {
  constructor(bindings, memory, maxBytes) {
    this.bindings = bindings;
    this.memory = memory;
    this.maxMemoryBytes = maxBytes;
    this.stopped = null;
  }

  /** Bytes of wasm memory now (it only grows, up to maxMemoryBytes). */
  memoryBytes() {
    return this.memory.buffer.byteLength;
  }

  /**
   * Runs `f` (calls into the bindings, whose errors are LigerWasmErrors already); a wasm trap
   * (a bug, or memory exhausted) stops the engine and becomes a LigerWasmError.
   */
  call(what, f) {
    if (this.stopped) throw new LigerWasmError("INTERNAL", `the wasm engine stopped after an earlier failure (${this.stopped}); create a new engine`);
    try {
      return f(this.bindings);
    } catch (err) {
      if (!(err instanceof WebAssembly.RuntimeError)) throw err;
      const full = this.memoryBytes() + 2 * 1024 * 1024 >= this.maxMemoryBytes;
      let detail;
      try {
        detail = this.bindings.takePanicMessage();
      } catch {
        // The instance cannot run any more: the trap's own message is all there is.
      }
      this.stopped = err.message;
      if (full) {
        throw new LigerWasmError("OUT_OF_MEMORY", `wasm memory is exhausted (${this.maxMemoryBytes >> 20} MiB maximum) in ${what}; use a smaller or more quantised bundle, or a larger maxMemoryBytes`, { cause: err });
      }
      throw new LigerWasmError("INTERNAL", `the wasm engine failed in ${what}: ${detail ?? err.message}`, { cause: err });
    }
  }

  /** Checks this build's dot-product kernels against float64: `{kernel, errors}`. */
  selfTest(seed = 1) {
    return JSON.parse(this.call("selfTest", (b) => b.selfTest(seed)));
  }

  /**
   * Loads a bundle (an ArrayBuffer or Uint8Array of the whole file). Checks the header and
   * that the model fits in memory before copying the weights in.
   */
  loadBundle(data) {
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : null;
    if (!bytes) throw new LigerWasmError("INVALID_ARGUMENT", "a bundle must be an ArrayBuffer or a Uint8Array");
    return this.call("loadBundle", (b) => {
      const headerLen = b.bundleHeaderLength(bytes.subarray(0, 24));
      const summary = summaryOf(b.checkBundle(bytes.subarray(0, 24 + headerLen), bytes.length, this.maxMemoryBytes));
      return new WasmModel(this, b.loadBundle(bytes), summary);
    });
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
      const headerLen = this.call("loadBundleStream", (b) => b.bundleHeaderLength(preamble));
      const prefix = new Uint8Array(24 + headerLen);
      prefix.set(preamble);
      await chunks.copy(headerLen, (chunk, at) => prefix.set(chunk, 24 + at), "the header");
      pending = this.call("loadBundleStream", (b) => b.StreamingBundle.begin(prefix, this.maxMemoryBytes));
      const streaming = pending;
      const summary = summaryOf(streaming.summary);
      const { fileBytes, dataStart } = summary;
      await chunks.copy(dataStart - prefix.length, () => {}, "the header's padding");
      await chunks.copy(
        fileBytes - dataStart,
        (chunk, at) => {
          this.call("loadBundleStream", () => streaming.write(at, chunk));
          onProgress?.((dataStart + at + chunk.length) / fileBytes);
        },
        "the tensor data",
      );
      await chunks.expectEnd(fileBytes);
      pending = null; // finish() takes it over, on success or failure.
      return new WasmModel(this, this.call("loadBundleStream", () => streaming.finish()), summary);
    } catch (err) {
      chunks.cancel();
      if (!this.stopped) pending?.free();
      throw err;
    }
  }
}

/** A model loaded into the engine. */
class WasmModel {
  constructor(engine, model, summary) {
    this.engine = engine;
    this.model = model;
    this.summary = summary;
    this.freed = false;
    this.info = JSON.parse(engine.call("info", () => model.info()));
  }

  /** Text to token ids. `addBos`: undefined for the model's default. */
  encode(text, addBos, parseSpecial = false) {
    return this.engine.call("encode", () => this.model.encode(text, addBos, parseSpecial));
  }

  decode(ids, skipSpecial = false) {
    return this.engine.call("decode", () => this.model.decode(u32(ids), skipSpecial));
  }

  applyChatTemplate(messages, addGenerationPrompt = true) {
    return this.engine.call("applyChatTemplate", () => this.model.applyChatTemplate(JSON.stringify(messages), addGenerationPrompt));
  }

  /** Logits of the token after `ids` (from an empty state). */
  lastLogits(ids) {
    return this.engine.call("lastLogits", () => this.model.lastLogits(u32(ids)));
  }

  /**
   * Starts a generation (runs the prefill now). Options: maxTokens, temperature, topK, topP,
   * seed, stop, ignoreEos.
   */
  startGeneration(ids, options = {}) {
    const generation = this.engine.call("startGeneration", () => this.model.startGeneration(u32(ids), JSON.stringify(options)));
    return new WasmGeneration(this.engine, generation);
  }

  /**
   * Frees the model's memory in the engine (the pages stay with the engine for reuse); a
   * generation still running keeps the model until it is freed.
   */
  free() {
    if (!this.freed && !this.engine.stopped) this.model.free();
    this.freed = true;
  }
}

/** One running generation: call step() for each token. */
class WasmGeneration {
  constructor(engine, generation) {
    this.engine = engine;
    this.generation = generation;
    this.result = null;
    this.freed = false;
  }

  /** `{ id, text }` for the next token, or null once done (then `result` is set). */
  step() {
    if (this.result) return null;
    const g = this.generation;
    const id = this.engine.call("step", () => g.step());
    if (id === undefined) {
      this.result = JSON.parse(g.result());
      this.free();
      return null;
    }
    return { id, text: g.text };
  }

  abort() {
    if (!this.result) this.engine.call("abort", () => this.generation.abort());
  }

  /** Bytes of the decoding state now (constant for a Liger model). */
  stateBytes() {
    return this.freed ? 0 : this.engine.call("stateBytes", () => this.generation.stateBytes());
  }

  free() {
    if (!this.freed && !this.engine.stopped) this.generation.free();
    this.freed = true;
  }
}

function u32(ids) {
  return ids instanceof Uint32Array ? ids : Uint32Array.from(ids);
}
