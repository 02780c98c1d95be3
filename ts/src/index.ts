/** liger: Llama-family models as gated linear recurrent models, from Node. */
export { loadModel, LigerModel } from "./model.js";
export type { LoadModelOptions, TokenizeOptions, DetokenizeOptions } from "./model.js";
export { Generation } from "./generation.js";
export type { GeneratedToken } from "./generation.js";
export type { GenerateOptions } from "./options.js";
export { LigerError, isLigerErrorCode } from "./errors.js";
export type { LigerErrorCode } from "./errors.js";
export type {
  Backend,
  BackendModel,
  BackendGenerateOptions,
  ChatMessage,
  FinishReason,
  GenerateResult,
  GenerationHandle,
  GenerationSink,
  ModelInfo,
  ProgressCallback,
  ProgressEvent,
} from "./backend.js";
export { nativeBackend } from "./native.js";
export { fetchDefaultModel, defaultModelPath, cacheDir, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256 } from "./fetch.js";
