/** liger: Llama-family models as gated linear recurrent models, from Node. */
export { loadModel, LigerModel, resolveBackend } from "./model.js";
export type { LoadModelOptions, TokenizeOptions, DetokenizeOptions } from "./model.js";
export { serve } from "./serve/server.js";
export type { ServeOptions, LigerServer, ServerMetrics, ServeDecoding } from "./serve/server.js";
export type { SchedulerStats } from "./serve/scheduler.js";
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
  LigerInfo,
  ModelInfo,
  ProgressCallback,
  ProgressEvent,
} from "./backend.js";
export { nativeBackend, gpuInfo } from "./native.js";
export type { GpuInfo } from "./native.js";
export { wasmBackend, defaultWasmBackend } from "./wasm.js";
export type { WasmBackendOptions } from "./wasm.js";
export { fetchDefaultModel, defaultModelPath, cacheDir, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256 } from "./fetch.js";
export { downloadHubModel, hubModelId, parseHubId, hubCacheDir, HubError } from "./hub.js";
export type { HubModelId, HubOptions, HubErrorReason } from "./hub.js";
export { compareReports, defaultDataDir, TASK_NAMES, DEFAULT_TASKS } from "./eval.js";
export { renderEvalHtml, renderLinearizeHtml } from "./report/html.js";
export type {
  Comparison,
  ComparisonRow,
  EvalEvent,
  EvalReport,
  EvaluateOptions,
  LoglikelihoodOptions,
  LoglikelihoodRequest,
  LoglikelihoodResult,
  LoglikelihoodScore,
  PasskeyReport,
  PerplexityOptions,
  PerplexityResult,
  ScoreStats,
  TaskName,
  TaskResult,
} from "./eval.js";
export {
  linearize,
  MIXERS,
  GSA_SCALES,
  LORA_TARGETS,
  DEFAULT_SAMPLE_PROMPT,
  RECIPES,
  defaultGpuRecipe,
} from "./linearize.js";
export type {
  GsaScaleName,
  LinearizeEvent,
  LinearizeOptions,
  LinearizeReport,
  MixerName,
  Recipe,
  ValidationResult,
} from "./linearize.js";
export { exportModel, EXPORT_FORMATS } from "./export.js";
export type { ExportFormat, ExportModelOptions } from "./export.js";
