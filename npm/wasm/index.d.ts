/** Wasm memory maximum by default: 256 MiB (the engine enforces it). */
export declare const DEFAULT_MAX_MEMORY_BYTES: number;

export { LigerWasmError } from "./errors.js";

export interface EngineOptions {
  /**
   * The module: a URL to fetch, its bytes, or a compiled module (default: ./liger.wasm beside
   * this file, fetched; in Node, read from the package's folder and compiled once).
   */
  source?: URL | string | ArrayBuffer | ArrayBufferView | WebAssembly.Module;
  /** The wasm memory maximum in bytes (default 256 MiB). */
  maxMemoryBytes?: number;
}

export interface WasmGenerateOptions {
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  ignoreEos?: boolean;
}

export interface WasmGenerateResult {
  tokens: number[];
  text: string;
  finishReason: "length" | "eos" | "stop" | "aborted";
  promptTokens: number;
}

export declare class WasmGeneration {
  /** Set once `step()` has returned null. */
  result: WasmGenerateResult | null;
  /** The next token and the text it releases, or null at the end. */
  step(): { id: number; text: string } | null;
  abort(): void;
  /** Bytes of the decoding state now (constant for a Liger model). */
  stateBytes(): number;
  free(): void;
}

export declare class WasmModel {
  /** The model's facts (the `ModelInfo` of liger's TypeScript API, plus `quantization`). */
  readonly info: Record<string, unknown> & { vocabSize: number; quantization: string };
  readonly summary: BundleSummary;
  encode(text: string, addBos?: boolean, parseSpecial?: boolean): Uint32Array;
  decode(ids: ArrayLike<number>, skipSpecial?: boolean): string;
  applyChatTemplate(messages: { role: string; content: string }[], addGenerationPrompt?: boolean): string;
  lastLogits(ids: ArrayLike<number>): Float32Array;
  startGeneration(ids: ArrayLike<number>, options?: WasmGenerateOptions): WasmGeneration;
  /** Frees the model's memory in the engine; a generation still running keeps it until freed. */
  free(): void;
}

/** A checked bundle header's facts. */
export interface BundleSummary {
  name: string;
  quantization: string;
  fileBytes: number;
  /** Wasm memory the model needs once loaded. */
  needBytes: number;
  headerBytes: number;
  /** Where the tensor data starts in the file. */
  dataStart: number;
}

export declare class Engine {
  readonly maxMemoryBytes: number;
  /** Bytes of wasm memory now. */
  memoryBytes(): number;
  /**
   * Checks this build's dot-product kernels (SIMD128 where compiled in) and the prefill's
   * matrix product against float64 on random rows: the kernel's name and the largest relative
   * error per storage type.
   */
  selfTest(seed?: number): { kernel: string; errors: Record<string, number> };
  /** Loads a whole bundle file (checked up front: format, length, memory). */
  loadBundle(data: ArrayBuffer | Uint8Array): WasmModel;
  /**
   * Fetches a bundle and loads it, streaming the response straight into wasm memory (no copy
   * of the file is held in JavaScript); progress (0..1) while it arrives.
   */
  fetchBundle(url: string | URL, onProgress?: (fraction: number) => void): Promise<WasmModel>;
  /**
   * Loads a bundle from a stream of byte chunks (a response body, a file's web stream): the
   * header is checked first, then each chunk is copied into wasm memory as it arrives. A
   * stream that ends early or runs past the length the header states is INVALID_FILE.
   */
  loadBundleStream(stream: ReadableStream<Uint8Array>, onProgress?: (fraction: number) => void): Promise<WasmModel>;
}

export declare function createEngine(options?: EngineOptions): Promise<Engine>;
/**
 * Fetches a bundle into an ArrayBuffer, reporting progress (0..1) while it arrives. For the
 * least memory, `engine.fetchBundle` streams the file into the engine instead.
 */
export declare function fetchBundle(url: string | URL, onProgress?: (fraction: number) => void): Promise<ArrayBuffer>;
