/** The public model object: tokenizer, chat template, logits and streaming generation. */
import type { Backend, BackendModel, ChatMessage, ModelDevice, ModelInfo, ProgressCallback } from "./backend.js";
import { invalidArgument, LigerError } from "./errors.js";
import {
  checkOptional,
  isPositiveInt,
  resolveEvalOptions,
  resolveLoglikelihood,
  type EvalEvent,
  type EvalReport,
  type EvaluateOptions,
  type LoglikelihoodOptions,
  type LoglikelihoodRequest,
  type LoglikelihoodResult,
  type PerplexityOptions,
  type PerplexityResult,
} from "./eval.js";
import { fetchDefaultModel } from "./fetch.js";
import { Generation } from "./generation.js";
import { downloadHubModel, hubModelId, type HubOptions } from "./hub.js";
import { gpuInfo, loadAddon, nativeBackend } from "./native.js";
import { defaultWasmBackend } from "./wasm.js";
import { checkMessages, checkTokens, resolveGenerateOptions, type GenerateOptions } from "./options.js";

export interface LoadModelOptions {
  /** Called with the stage ("download", "extract", "load", ...) and its progress in 0..1. */
  onProgress?: ProgressCallback;
  /**
   * The engine to run the model on: "native" (the addon), "wasm" (the WebAssembly build; loads
   * bundle files or URLs), a Backend object, or "auto" (the default): the native addon when it
   * can be loaded, the wasm engine otherwise.
   */
  backend?: Backend | "native" | "wasm" | "auto";
  /**
   * Where generation runs: "cpu" (the default), "cuda" (the first NVIDIA GPU, native engine
   * only: prefill with the chunked kernels, then CUDA-graph decoding steps with a constant-size
   * state per sequence; a base model runs every layer as softmax attention there), or "auto"
   * (cuda when a usable GPU is found, else cpu). Tokenizing, chat templates and `lastLogits`
   * stay on the CPU. No usable GPU for "cuda" is a DEVICE_UNAVAILABLE error.
   */
  device?: "cpu" | "cuda" | "auto";
  /**
   * For a Hub id: the endpoint, token, cache and offline mode (defaults: `$HF_ENDPOINT`,
   * `$HF_TOKEN`, `$HF_HUB_CACHE` or `$HF_HOME/hub`, `$HF_HUB_OFFLINE`).
   */
  hub?: Omit<HubOptions, "onProgress">;
}

/** The backend `choice` names ("auto": native when its addon loads, else wasm). */
export function resolveBackend(choice: LoadModelOptions["backend"] = "auto"): Backend {
  if (typeof choice === "object" && choice !== null && typeof choice.loadModel === "function") return choice;
  switch (choice) {
    case "native":
      return nativeBackend;
    case "wasm":
      return defaultWasmBackend;
    case "auto":
      return nativeAddonAvailable() ? nativeBackend : defaultWasmBackend;
    default:
      throw invalidArgument(
        `backend must be "native", "wasm", "auto" or a Backend object, got ${JSON.stringify(choice)}`,
      );
  }
}

function nativeAddonAvailable(): boolean {
  try {
    loadAddon();
    return true;
  } catch (err) {
    if (err instanceof LigerError && err.code === "NATIVE_ADDON_MISSING") return false;
    throw err;
  }
}

export interface TokenizeOptions {
  /** Prepend the BOS token; default: what the model's metadata asks for. */
  addBos?: boolean;
  /** Parse special-token text such as `<|im_start|>` into its token (default false). */
  special?: boolean;
}

export interface DetokenizeOptions {
  /** Leave special tokens (BOS, EOS, chat markers) out of the text (default false). */
  skipSpecial?: boolean;
}

/**
 * Load a model: a .gguf file, a Hugging Face model directory, or a Liger checkpoint
 * directory written by `linearize` (then `info.liger` describes the conversion). With no
 * path, the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) is used, downloaded into the
 * cache if needed. A string that is not an existing path but reads as a Hugging Face Hub id
 * (`owner/name`, `owner/name@revision`, `owner/name/file.gguf`) is downloaded from the Hub
 * into its shared cache first (see `downloadHubModel`).
 */
export async function loadModel(path?: string, options: LoadModelOptions = {}): Promise<LigerModel> {
  if (path !== undefined && (typeof path !== "string" || path.length === 0)) {
    throw invalidArgument(`model path must be a non-empty string, got ${JSON.stringify(path)}`);
  }
  const { onProgress } = options;
  const choice = options.backend ?? "auto";
  const backend = resolveBackend(choice);
  const device = resolveModelDevice(options.device, backend);
  const hubId = path === undefined ? undefined : hubModelId(path);
  const modelPath = hubId
    ? await downloadHubModel(hubId, { ...options.hub, onProgress })
    : (path ?? (await fetchDefaultModel({ onProgress })));
  try {
    return new LigerModel(await backend.loadModel(modelPath, onProgress, device), modelPath);
  } catch (err) {
    // "auto" fell back to wasm, which reads only edge bundles: a GGUF file or a directory
    // needs the native addon, so say that rather than "not a bundle".
    if (choice === "auto" && backend !== nativeBackend && err instanceof LigerError && err.code === "INVALID_FILE") {
      throw nativeMissingFor(modelPath, err);
    }
    throw err;
  }
}

/** The device of `loadModel`: "auto" is cuda where the native engine finds a usable GPU. */
function resolveModelDevice(device: LoadModelOptions["device"], backend: Backend): ModelDevice | undefined {
  switch (device) {
    case undefined:
      return undefined;
    case "cpu":
    case "cuda":
      return device;
    case "auto":
      return backend === nativeBackend && gpuInfo().available ? "cuda" : "cpu";
    default:
      throw invalidArgument(`device must be "cpu", "cuda" or "auto", got ${JSON.stringify(device)}`);
  }
}

function nativeMissingFor(modelPath: string, bundleError: LigerError): LigerError {
  try {
    loadAddon();
  } catch (missing) {
    if (missing instanceof LigerError) {
      return new LigerError(
        missing.code,
        `${missing.message}\nWithout it only edge bundles load (through the wasm backend), and ${modelPath} is not one ` +
          `(${bundleError.message}).`,
        { cause: bundleError },
      );
    }
  }
  return bundleError;
}

export class LigerModel {
  /** @internal Use loadModel(). */
  constructor(
    private readonly backend: BackendModel,
    /** The file or directory the model was loaded from. */
    readonly path: string,
  ) {}

  get info(): ModelInfo {
    return this.backend.info;
  }

  tokenize(text: string, options: TokenizeOptions = {}): number[] {
    if (typeof text !== "string") throw invalidArgument(`text must be a string, got ${typeof text}`);
    if (options.addBos !== undefined && typeof options.addBos !== "boolean") {
      throw invalidArgument("addBos must be a boolean");
    }
    return Array.from(this.backend.encode(text, options.addBos, options.special ?? false));
  }

  detokenize(ids: readonly number[] | Uint32Array, options: DetokenizeOptions = {}): string {
    return this.backend.decode(checkTokens(ids, this.info.vocabSize, "ids"), options.skipSpecial ?? false);
  }

  /**
   * Render a conversation with the model's chat template, ending with the assistant's turn.
   * Runs on the calling thread; a template that loops or grows text without end stops at its
   * budget with an INVALID_ARGUMENT error. `applyChatTemplateAsync` renders off this thread.
   */
  applyChatTemplate(messages: ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    return this.backend.applyChatTemplate(checkMessages(messages), options.addGenerationPrompt ?? true);
  }

  /**
   * `applyChatTemplate` on a worker thread (native backend; the WebAssembly backend renders
   * between turns of the event loop). Templates come from model files, so they are untrusted:
   * abort with `signal` and the promise rejects at once with an ABORTED error.
   */
  applyChatTemplateAsync(
    messages: ChatMessage[],
    options: { addGenerationPrompt?: boolean; signal?: AbortSignal } = {},
  ): Promise<string> {
    const rendering = this.backend.renderChat(checkMessages(messages), options.addGenerationPrompt ?? true);
    return untilAborted(rendering, options.signal, "the chat template's rendering was aborted");
  }

  /** The logits of the token that would follow `tokens` (length: vocabSize). */
  async logits(tokens: readonly number[] | Uint32Array): Promise<Float32Array> {
    const ids = checkTokens(tokens, this.info.vocabSize);
    if (ids.length === 0) throw invalidArgument("logits needs at least one token");
    return this.backend.lastLogits(ids);
  }

  /**
   * Generate text. The returned object is an async iterator of `{ id, text }` as tokens are
   * produced, and its `result` is a promise of the final text, finish reason and timings.
   * A string prompt is used as is, unless `chat: true`; a message array always goes through
   * the chat template.
   */
  generate(prompt: string | ChatMessage[], options: GenerateOptions = {}): Generation {
    const resolved = resolveGenerateOptions(options);
    const messages = this.chatMessages(prompt, options.chat ?? false);
    // A plain prompt is checked here; a chat prompt after its template has run (off this thread).
    const plainTokens = messages ? undefined : this.nonEmpty(this.backend.encode(prompt as string, undefined, false));

    const generation = new Generation();
    const { signal } = options;
    const onAbort = () => generation.abort();
    if (signal?.aborted) generation.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const detach = () => signal?.removeEventListener("abort", onAbort);
    generation.result.then(detach, detach);

    const start = (tokens: Uint32Array) =>
      generation.attach(this.backend.generate(tokens, resolved, generation.sink()));
    if (plainTokens) {
      start(plainTokens);
    } else {
      this.backend
        .renderChat(messages!, true)
        .then((text) => start(this.nonEmpty(this.backend.encode(text, undefined, true))))
        .catch((err) => generation.sink().error(err));
    }
    return generation;
  }

  /**
   * Score the model on zero-shot tasks (lm-evaluation-harness style) and, if asked, passkey
   * retrieval. Resolves to a report with every task's metrics; abort with `signal`.
   */
  async evaluate(options: EvaluateOptions = {}): Promise<EvalReport> {
    const label = this.info.liger ? `${this.info.name} (liger ${this.info.liger.mixer})` : this.info.name;
    const resolved = resolveEvalOptions(options, label);
    const onProgress = options.onProgress;
    return this.job("evaluate").evaluate!(resolved, {
      signal: options.signal,
      onEvent: onProgress && ((event) => onProgress(event as EvalEvent)),
    });
  }

  /**
   * Rolling perplexity (lm-eval's method: every token predicted once, in windows of `window`
   * tokens) of a text, or of a file given as `{ file }`.
   */
  async perplexity(source: string | { file: string }, options: PerplexityOptions = {}): Promise<PerplexityResult> {
    const input =
      typeof source === "string"
        ? { text: source }
        : source !== null && typeof source === "object" && typeof source.file === "string"
          ? { file: source.file }
          : undefined;
    if (input === undefined) throw invalidArgument("perplexity needs a text, or { file: path }");
    checkOptional("window", options.window, isPositiveInt, "an integer >= 1");
    checkOptional("signal", options.signal, (v) => v instanceof AbortSignal, "an AbortSignal");
    const onProgress = options.onProgress;
    return this.job("perplexity").perplexity!(input, options.window, {
      signal: options.signal,
      onEvent: onProgress && ((event) => onProgress(event as { kind: "progress"; done: number; total: number })),
    });
  }

  /**
   * Log-likelihood of each continuation after its context, as the evaluation tasks score it
   * (lm-evaluation-harness's tokenization: trailing spaces of the context move to the
   * continuation; inputs longer than `maxLength` are cut from the left). Each score comes with
   * the tokens the pair was split into.
   */
  async loglikelihood(
    requests: readonly LoglikelihoodRequest[],
    options: LoglikelihoodOptions = {},
  ): Promise<LoglikelihoodResult> {
    const input = resolveLoglikelihood(requests, options);
    const onProgress = options.onProgress;
    return this.job("loglikelihood").loglikelihood!(input, {
      signal: options.signal,
      onEvent: onProgress && ((event) => onProgress(event as { kind: "progress"; done: number; total: number })),
    });
  }

  private job(name: "evaluate" | "perplexity" | "loglikelihood"): BackendModel {
    if (typeof this.backend[name] !== "function") {
      throw new LigerError(
        "INVALID_ARGUMENT",
        `this model's backend cannot run ${name}; load the model with the native backend`,
      );
    }
    return this.backend;
  }

  /** The messages of a chat prompt, or undefined for a plain one. */
  private chatMessages(prompt: string | ChatMessage[], chat: boolean): ChatMessage[] | undefined {
    if (typeof prompt === "string") return chat ? [{ role: "user", content: prompt }] : undefined;
    if (Array.isArray(prompt)) return checkMessages(prompt);
    throw invalidArgument("prompt must be a string or an array of chat messages");
  }

  private nonEmpty(tokens: Uint32Array): Uint32Array {
    if (tokens.length === 0) throw invalidArgument("the prompt is empty: give at least one token");
    return tokens;
  }
}

/** `work`, or an ABORTED error as soon as `signal` fires (the work itself is left to finish). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined, message: string): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.catch(() => {});
    return Promise.reject(new LigerError("ABORTED", message));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new LigerError("ABORTED", message));
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
