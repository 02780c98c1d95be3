/**
 * The native backend: finds and loads the napi-rs addon (`liger.<platform>.node`) and adapts
 * it to the Backend interface. The addon is deliberately thin; this file only converts
 * values and errors.
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import type {
  Backend,
  BackendGenerateOptions,
  BackendModel,
  ChatMessage,
  GenerateResult,
  GenerationHandle,
  GenerationSink,
  ModelDevice,
  ModelInfo,
  ProgressCallback,
} from "./backend.js";
import { LigerError, toLigerError } from "./errors.js";
import type {
  Comparison,
  EvalReport,
  LinearizeEvent,
  LinearizeReport,
  LoglikelihoodResult,
  PerplexityResult,
  ResolvedEvalOptions,
  ResolvedLinearizeOptions,
  ResolvedLoglikelihood,
} from "./types.js";

/**
 * What the addon exports (see crates/liger-node/src/lib.rs and jobs.rs), typed by hand: napi's
 * generated declarations (target/napi/liger.d.ts) say `unknown`/`any` where these say what the
 * JSON and promises hold, and `string` where the option objects take a closed set of names
 * (mixer, dtype, device). They are not imported either: they are written outside ts/ and are
 * not shipped, while the declarations emitted for this file (`loadAddon`) would name them.
 * test/addon-types.test.ts checks these interfaces against them.
 */
interface RawAddon {
  loadModel(path: string, onProgress: ProgressCallback | null, device: string | null): Promise<RawModel>;
  CancelToken: new () => RawCancelToken;
  compareReports(base: EvalReport, linearized: EvalReport): Comparison;
  linearize(
    options: ResolvedLinearizeOptions,
    cancel: RawCancelToken,
    onEvent: ((event: LinearizeEvent) => void) | null,
  ): Promise<string>;
  gpuInfo(): Omit<Extract<GpuInfo, { available: true }>, "available">;
  exportModel(model: string, out: string, format: string, dtype: string, overwrite: boolean): Promise<string>;
  linearizeDefaults(): ResolvedLinearizeOptions;
  evalDefaults(): ResolvedEvalOptions;
}

interface RawCancelToken {
  cancel(): void;
}

/** What the caller of a job hands over: events, and a signal to stop it. */
export interface JobControl<E> {
  onEvent?: (event: E) => void;
  signal?: AbortSignal;
}

interface RawModel {
  info(): ModelInfo;
  encode(text: string, addBos: boolean | null, parseSpecial: boolean): Uint32Array;
  decode(ids: Uint32Array, skipSpecial: boolean): string;
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): string;
  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<string>;
  lastLogits(tokens: Uint32Array): Promise<Float32Array>;
  generate(prompt: Uint32Array, options: BackendGenerateOptions, onEvent: (event: RawEvent) => void): RawGeneration;
  evaluate(
    options: ResolvedEvalOptions,
    cancel: RawCancelToken,
    onEvent: ((event: unknown) => void) | null,
  ): Promise<string>;
  perplexity(
    source: { text?: string; file?: string },
    window: number | undefined,
    cancel: RawCancelToken,
    onEvent: ((event: unknown) => void) | null,
  ): Promise<string>;
  loglikelihood(
    requests: ResolvedLoglikelihood["requests"],
    options: ResolvedLoglikelihood["options"],
    cancel: RawCancelToken,
    onEvent: ((event: unknown) => void) | null,
  ): Promise<string>;
}

interface RawGeneration {
  abort(): void;
}

type RawEvent =
  | { kind: "token"; id: number; text: string }
  | { kind: "done"; result: GenerateResult }
  | { kind: "error"; message: string };

/** The napi-rs platform suffix for this process, e.g. "linux-x64-gnu". */
export function platformTriple(): string {
  const { platform, arch } = process;
  if (platform !== "linux") return `${platform}-${arch}`;
  // glibc builds say so in the process report; anything else on Linux is musl.
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return `linux-${arch}-${header?.glibcVersionRuntime ? "gnu" : "musl"}`;
}

let cachedAddon: RawAddon | undefined;

/**
 * Load the addon: `$LIGER_NATIVE_ADDON` (an explicit file) when set; otherwise the
 * repository's `npm/<triple>/` folder (a development checkout), then the installed
 * platform package `@liger/<triple>`.
 */
export function loadAddon(): RawAddon {
  if (cachedAddon) return cachedAddon;
  const require = createRequire(import.meta.url);
  const triple = platformTriple();
  const fileName = `liger.${triple}.node`;
  const here = dirname(fileURLToPath(import.meta.url)); // ts/dist or ts/src
  // An explicit choice is the only candidate: silently loading another build would hide mistakes.
  const candidates = process.env.LIGER_NATIVE_ADDON
    ? [process.env.LIGER_NATIVE_ADDON]
    : [join(here, "..", "..", "npm", triple, fileName), `@liger/${triple}`];

  const failures: string[] = [];
  for (const candidate of candidates) {
    const isFile = candidate.startsWith("/") || candidate.startsWith(".");
    if (isFile && !existsSync(candidate)) {
      failures.push(`${candidate}: not found`);
      continue;
    }
    try {
      cachedAddon = require(candidate) as RawAddon;
      return cachedAddon;
    } catch (err) {
      failures.push(`${candidate}: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`);
    }
  }
  throw new LigerError(
    "NATIVE_ADDON_MISSING",
    `no native addon for ${triple} could be loaded. Tried:\n  ${failures.join("\n  ")}\n` +
      `In a clone of the repository run \`npm run build:addon\`; otherwise install the package ` +
      `@liger/${triple} (or set LIGER_NATIVE_ADDON to the .node file).`,
  );
}

class NativeModel implements BackendModel {
  readonly info: ModelInfo;

  constructor(private readonly raw: RawModel) {
    this.info = guard(() => raw.info());
  }

  encode(text: string, addBos: boolean | undefined, parseSpecial: boolean): Uint32Array {
    return guard(() => this.raw.encode(text, addBos ?? null, parseSpecial));
  }

  decode(ids: Uint32Array, skipSpecial: boolean): string {
    return guard(() => this.raw.decode(ids, skipSpecial));
  }

  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    return guard(() => this.raw.applyChatTemplate(messages, addGenerationPrompt));
  }

  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<string> {
    return guardAsync(() => this.raw.renderChat(messages, addGenerationPrompt));
  }

  lastLogits(tokens: Uint32Array): Promise<Float32Array> {
    return guardAsync(() => this.raw.lastLogits(tokens));
  }

  generate(prompt: Uint32Array, options: BackendGenerateOptions, sink: GenerationSink): GenerationHandle {
    const onEvent = (event: RawEvent): void => {
      switch (event.kind) {
        case "token":
          sink.token(event.id, event.text);
          break;
        case "done":
          sink.done(event.result);
          break;
        case "error":
          sink.error(toLigerError(new Error(event.message)));
          break;
      }
    };
    const running = guard(() => this.raw.generate(prompt, options, onEvent));
    return { abort: () => running.abort() };
  }

  evaluate(options: ResolvedEvalOptions, control: JobControl<unknown>): Promise<EvalReport> {
    return runJob((token, onEvent) => this.raw.evaluate(options, token, onEvent), control);
  }

  perplexity(
    source: { text?: string; file?: string },
    window: number | undefined,
    control: JobControl<unknown>,
  ): Promise<PerplexityResult> {
    return runJob((token, onEvent) => this.raw.perplexity(source, window, token, onEvent), control);
  }

  loglikelihood(input: ResolvedLoglikelihood, control: JobControl<unknown>): Promise<LoglikelihoodResult> {
    return runJob((token, onEvent) => this.raw.loglikelihood(input.requests, input.options, token, onEvent), control);
  }
}

/**
 * Run a job of the addon: a CancelToken follows the signal, events go to the caller (an
 * exception thrown there must not reach the addon's thread), the JSON result is parsed.
 */
async function runJob<T, E>(
  start: (token: RawCancelToken, onEvent: ((e: E) => void) | null) => Promise<string>,
  control: JobControl<E>,
): Promise<T> {
  const { signal, onEvent } = control;
  if (signal?.aborted) throw new LigerError("ABORTED", "the job was aborted before it started");
  const token = new (loadAddon().CancelToken)();
  const onAbort = () => token.cancel();
  signal?.addEventListener("abort", onAbort, { once: true });
  let callbackError: unknown;
  const deliver = onEvent
    ? (event: E) => {
        try {
          onEvent(event);
        } catch (err) {
          callbackError ??= err;
        }
      }
    : null;
  try {
    const result = JSON.parse(await start(token, deliver)) as T;
    if (callbackError !== undefined) throw callbackError;
    return result;
  } catch (err) {
    throw toLigerError(err);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/** Convert a model to Liger attention and train it (see linearize.ts). */
export function nativeLinearize(
  options: ResolvedLinearizeOptions,
  control: JobControl<LinearizeEvent>,
): Promise<LinearizeReport> {
  return runJob((token, onEvent) => loadAddon().linearize(options, token, onEvent), control);
}

/** Write a Liger checkpoint in another format (see export.ts); resolves to the output folder. */
export function nativeExport(
  model: string,
  out: string,
  format: string,
  dtype: string,
  overwrite: boolean,
): Promise<string> {
  return guardAsync(() => loadAddon().exportModel(model, out, format, dtype, overwrite));
}

let cachedLinearizeDefaults: Readonly<ResolvedLinearizeOptions> | undefined;
let cachedEvalDefaults: Readonly<ResolvedEvalOptions> | undefined;

/**
 * The default of every linearize setting, as the facade's `LinearizeOptions::new` fills it in
 * (the paths empty). The one source of these defaults: the TypeScript layer copies none of them.
 */
export function linearizeDefaults(): Readonly<ResolvedLinearizeOptions> {
  cachedLinearizeDefaults ??= Object.freeze(guard(() => loadAddon().linearizeDefaults()));
  return cachedLinearizeDefaults;
}

/** The default of every evaluation setting, as the facade's `EvaluateOptions::default()` has it. */
export function evalDefaults(): Readonly<ResolvedEvalOptions> {
  cachedEvalDefaults ??= Object.freeze(guard(() => loadAddon().evalDefaults()));
  return cachedEvalDefaults;
}

/** The first NVIDIA GPU as the GPU engine would open it, or why there is none to use. */
export type GpuInfo =
  | {
      available: true;
      name: string;
      /** "9.0" for an H100. */
      computeCapability: string;
      totalMemoryBytes: number;
      freeMemoryBytes: number;
      /** The driver's CUDA version, "13.0". */
      driverVersion: string;
    }
  | { available: false; reason: string };

/**
 * Whether `device: "cuda"` can run here: the first NVIDIA GPU, or the reason there is none
 * (no native addon for this platform, no driver, no device, a driver too old). Never throws.
 */
export function gpuInfo(): GpuInfo {
  try {
    return { available: true, ...loadAddon().gpuInfo() };
  } catch (err) {
    return { available: false, reason: toLigerError(err).message };
  }
}

/** Run a synchronous addon call, turning whatever it throws into a LigerError. */
function guard<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw toLigerError(err);
  }
}

/** `guard` for an addon call that returns a promise. */
async function guardAsync<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw toLigerError(err);
  }
}

export const nativeBackend: Backend = {
  name: "native",
  async loadModel(path: string, onProgress?: ProgressCallback, device?: ModelDevice): Promise<BackendModel> {
    const addon = loadAddon();
    return new NativeModel(await guardAsync(() => addon.loadModel(path, onProgress ?? null, device ?? null)));
  },
};
