/**
 * The WebAssembly backend: the same core built for wasm32 (package `@liger/wasm`), running a
 * Liger model bundle on the CPU with constant memory per sequence. Picked by loadModel when
 * the native addon is absent, or when asked with `backend: "wasm"`. The engine itself uses
 * only web APIs; this Node-side adapter reads local bundle files, and the package's Node entry
 * reads its module from disk.
 */
import { readFile } from "node:fs/promises";

import {
  createEngine,
  DEFAULT_MAX_MEMORY_BYTES,
  LigerWasmError,
  type Engine,
  type WasmGeneration,
  type WasmModel,
} from "@liger/wasm";

import type {
  Backend,
  BackendGenerateOptions,
  BackendModel,
  ChatMessage,
  GenerationHandle,
  GenerationSink,
  ModelDevice,
  ModelInfo,
  ProgressCallback,
} from "./backend.js";
import { isLigerErrorCode, LigerError } from "./errors.js";

export interface WasmBackendOptions {
  /** The wasm memory maximum in bytes (default 256 MiB); the engine enforces it. */
  maxMemoryBytes?: number;
}

/** A LigerError for anything the engine throws. */
function toLigerError(err: unknown): LigerError {
  if (err instanceof LigerError) return err;
  if (err instanceof LigerWasmError && isLigerErrorCode(err.code))
    return new LigerError(err.code, err.message, { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  return new LigerError("INTERNAL", `unexpected error in the wasm backend: ${message}`, { cause: err });
}

function guard<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw toLigerError(err);
  }
}

/**
 * A fresh engine: an instance of the installed package's module (which the package's Node
 * entry reads and compiles once per process) with its own memory. A module that cannot be read
 * is NATIVE_ADDON_MISSING, as a missing addon is.
 */
async function startEngine(maxMemoryBytes: number): Promise<Engine> {
  try {
    return await createEngine({ maxMemoryBytes });
  } catch (err) {
    if (err instanceof LigerWasmError && err.code === "IO_ERROR") {
      throw new LigerError("NATIVE_ADDON_MISSING", err.message, { cause: err });
    }
    throw err;
  }
}

/** A bundle file's bytes, read from disk. */
async function readBundleFile(location: string): Promise<Uint8Array> {
  try {
    return await readFile(location);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint =
      e.code === "EISDIR"
        ? "; the wasm backend loads a bundle file: make one from the checkpoint with scripts/make-bundle.sh"
        : "";
    throw new LigerError("IO_ERROR", `${location}: ${e.message}${hint}`);
  }
}

/** The wasm backend with the given memory maximum. */
export function wasmBackend(options: WasmBackendOptions = {}): Backend {
  const maxMemoryBytes = options.maxMemoryBytes ?? DEFAULT_MAX_MEMORY_BYTES;
  return {
    name: "wasm",
    async loadModel(path: string, onProgress?: ProgressCallback, device?: ModelDevice): Promise<BackendModel> {
      if (device !== undefined && device !== "cpu") {
        throw new LigerError(
          "DEVICE_UNAVAILABLE",
          `the wasm engine runs on the CPU only, not on ${device}: load with the native backend (the addon) for the GPU`,
        );
      }
      // An http(s) bundle streams into the engine's memory as it arrives (the file is never
      // held whole beside it); a file on disk is read, then loaded.
      const remote = /^https?:\/\//.test(path);
      const data = remote ? undefined : await readBundleFile(path);
      onProgress?.({ stage: remote ? "download" : "load", fraction: 0 });
      try {
        const engine = await startEngine(maxMemoryBytes);
        const loaded = data
          ? engine.loadBundle(data)
          : await engine.fetchBundle(path, (fraction) => onProgress?.({ stage: "download", fraction }));
        const model = new WasmBackendModel(loaded, () => engine.memoryBytes());
        onProgress?.({ stage: "load", fraction: 1 });
        return model;
      } catch (err) {
        throw toLigerError(err);
      }
    },
  };
}

/** The wasm backend with the default 256 MiB memory maximum. */
export const defaultWasmBackend: Backend = wasmBackend();

/** Lets other work run between tokens (streams, timers, a page's rendering). */
const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

export class WasmBackendModel implements BackendModel {
  readonly info: ModelInfo;

  constructor(
    private readonly model: WasmModel,
    /** Bytes of wasm memory the engine holds now. */
    readonly memoryBytes: () => number,
  ) {
    this.info = { ...(model.info as unknown as ModelInfo), format: "bundle" };
  }

  encode(text: string, addBos: boolean | undefined, parseSpecial: boolean): Uint32Array {
    return guard(() => this.model.encode(text, addBos, parseSpecial));
  }

  decode(ids: Uint32Array, skipSpecial: boolean): string {
    return guard(() => this.model.decode(ids, skipSpecial));
  }

  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    return guard(() => this.model.applyChatTemplate(messages, addGenerationPrompt));
  }

  /** WebAssembly has no thread here: the template runs on this one, bounded by its budget. */
  async renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<string> {
    await yieldToEventLoop();
    return this.applyChatTemplate(messages, addGenerationPrompt);
  }

  async lastLogits(tokens: Uint32Array): Promise<Float32Array> {
    return guard(() => this.model.lastLogits(tokens));
  }

  /** Runs the generation a token at a time, handing control back between tokens. */
  generate(prompt: Uint32Array, options: BackendGenerateOptions, sink: GenerationSink): GenerationHandle {
    let aborted = false;
    let generation: WasmGeneration | undefined;
    const run = async () => {
      await yieldToEventLoop();
      const start = performance.now();
      generation = this.model.startGeneration(prompt, options);
      const prefillMs = performance.now() - start;
      const decodeStart = performance.now();
      for (;;) {
        if (aborted) generation.abort();
        const next = generation.step();
        if (next === null) break;
        sink.token(next.id, next.text);
        await yieldToEventLoop();
      }
      const result = generation.result!;
      sink.done({ ...result, prefillMs, decodeMs: performance.now() - decodeStart });
    };
    run().catch((err) => {
      generation?.free();
      sink.error(toLigerError(err));
    });
    return { abort: () => (aborted = true) };
  }
}
