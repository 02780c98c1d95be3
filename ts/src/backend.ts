/**
 * The seam between the TypeScript API and the engines that run models. The native addon is
 * one backend; a WebAssembly build of the same core can be another, picked at load time.
 * Backends speak in plain values (typed arrays, plain objects) and throw LigerError.
 */

import type {
  EvalReport,
  LoglikelihoodResult,
  PerplexityResult,
  ResolvedEvalOptions,
  ResolvedLoglikelihood,
} from "./types.js";

/** The conversion of a Liger model (see `linearize`). */
export interface LigerInfo {
  /** The gated recurrent mixer of the converted layers, e.g. "gla". */
  mixer: string;
  /** GSA only (null for the other mixers): slots per key-value head and the slot read-out's query scale. */
  gsaSlots: number | null;
  gsaScale: "one" | "inv_sqrt_head_dim" | null;
  /** Keys each query of the sliding-window branch sees. */
  windowKeys: number;
  /** First tokens the window branch also sees (attention sinks). */
  sinkKeys: number;
  /** Whether the recurrent branch is normalised. */
  grmNorm: boolean;
  /** Tokens per key-value head kept beyond the window by surprise (0: none). */
  surpriseKeys: number;
  /** The surprise cache's repeat rule's tolerance (0: off). */
  surpriseRepeatTolerance: number;
  useSwa: boolean;
  alpha: number;
  beta: number;
  /** Layers that kept softmax attention (0-based). */
  softmaxLayers: number[];
  /** Trainable LoRA values. */
  loraParams: number;
  /** Whether the branch weights were learned per attention head (then `alpha` and `beta` were their start). */
  learnedHeadMix: boolean;
  /** Decoding memory of one sequence, at its largest (constant without softmax layers). */
  stateBytesPerSequence: number;
}

/** Facts about a loaded model, as reported by the core. */
export interface ModelInfo {
  name: string;
  architecture: string;
  /** "gguf" (a .gguf file), "checkpoint" (a Hugging Face style directory) or "bundle" (an edge bundle, wasm backend). */
  format: "gguf" | "checkpoint" | "bundle";
  numParams: number;
  /** Bytes the weights occupy as stored (quantized blocks included). */
  weightBytes: number;
  numLayers: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  contextLength: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  /** How many weight matrices of each storage type the model holds, e.g. `{ Q4_1: 210, Q8_0: 1 }`. */
  tensorTypes: Record<string, number>;
  hasChatTemplate: boolean;
  /** Bytes the key/value cache grows by per token (f32 keys and values of every layer). */
  kvCacheBytesPerToken: number;
  /** null for a base model; the conversion of a Liger model loaded from its checkpoint. */
  liger: LigerInfo | null;
  /** Where generation runs ("cpu", "cuda"); absent for engines that run only on the CPU (wasm). */
  device?: string;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | (string & {});
  content: string;
}

export type FinishReason = "length" | "eos" | "stop" | "aborted";

export interface GenerateResult {
  /** The generated token ids (the prompt excluded). */
  tokens: number[];
  /** The generated text, with any matched stop string cut off. */
  text: string;
  finishReason: FinishReason;
  promptTokens: number;
  prefillMs: number;
  decodeMs: number;
}

/** Fully resolved generation options, as a backend receives them. */
export interface BackendGenerateOptions {
  maxTokens: number;
  /** 0 means greedy decoding. */
  temperature: number;
  /** 0 disables top-k. */
  topK: number;
  /** 1 disables top-p. */
  topP: number;
  seed: number;
  stop: string[];
  ignoreEos: boolean;
}

/** Receives a generation's events, in order: tokens, then exactly one of done / error. */
export interface GenerationSink {
  token(id: number, text: string): void;
  done(result: GenerateResult): void;
  error(err: Error): void;
}

/** A running generation: abort() asks the backend's loop to stop after the current token. */
export interface GenerationHandle {
  abort(): void;
}

export interface ProgressEvent {
  /** What is happening, e.g. "download", "extract", "load", "tokenizer". */
  stage: string;
  /** Progress of this stage, 0..1. */
  fraction: number;
}

export type ProgressCallback = (event: ProgressEvent) => void;

export interface BackendModel {
  readonly info: ModelInfo;
  encode(text: string, addBos: boolean | undefined, parseSpecial: boolean): Uint32Array;
  decode(ids: Uint32Array, skipSpecial: boolean): string;
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): string;
  /** The same, off the JavaScript thread where the backend has threads. */
  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<string>;
  /** Logits for the token that would follow `tokens`. */
  lastLogits(tokens: Uint32Array): Promise<Float32Array>;
  generate(prompt: Uint32Array, options: BackendGenerateOptions, sink: GenerationSink): GenerationHandle;
  /** Evaluation; a backend without it cannot evaluate. */
  evaluate?(options: ResolvedEvalOptions, control: BackendJobControl): Promise<EvalReport>;
  perplexity?(
    source: { text?: string; file?: string },
    window: number | undefined,
    control: BackendJobControl,
  ): Promise<PerplexityResult>;
  loglikelihood?(input: ResolvedLoglikelihood, control: BackendJobControl): Promise<LoglikelihoodResult>;
}

/** Events and cancellation of a backend's job. */
export interface BackendJobControl {
  onEvent?: (event: unknown) => void;
  signal?: AbortSignal;
}

/** Where a loaded model generates: the CPU, or the first NVIDIA GPU (native engine only). */
export type ModelDevice = "cpu" | "cuda";

export interface Backend {
  readonly name: string;
  loadModel(path: string, onProgress?: ProgressCallback, device?: ModelDevice): Promise<BackendModel>;
}
