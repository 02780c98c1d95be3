/**
 * The shapes the modules of the API share: what the core sends back (reports, results,
 * events), what it takes (the resolved options of its jobs), and the lists of names those are
 * typed by. This module imports none of
 * the others, so that eval.ts, linearize.ts, backend.ts, native.ts and the report pages can
 * all use these types without importing each other; each re-exports those of its subject.
 */

// Evaluation (see eval.ts).

/** How the core counts its work. */
export interface ScoreStats {
  requests: number;
  forwards: number;
  truncated: number;
  tokensProcessed: number;
  seconds: number;
}

export interface TaskResult {
  task: string;
  /** The file (or folder) the items came from. */
  source: string;
  /** Items scored. */
  n: number;
  /** e.g. `acc`, `acc_stderr`, `acc_norm`, `perplexity`, `word_perplexity`. */
  metrics: Record<string, number>;
  /** The metric the task is quoted by. */
  primaryMetric: string;
  higherIsBetter: boolean;
  warnings: string[];
  stats: ScoreStats;
  tokensPerSecond: number;
}

export interface PasskeyCell {
  length: number;
  depth: number;
  trials: number;
  correct: number;
  accuracy: number;
}

export interface PasskeyReport {
  method: string;
  accuracy: number;
  cells: PasskeyCell[];
}

export interface EvalReport {
  model: string;
  options: {
    maxLength: number | null;
    limit: number | null;
    seed: number;
    addBos: boolean;
    perplexityWindow: number | null;
  };
  tasks: TaskResult[];
  passkey: PasskeyReport | null;
  seconds: number;
  tokensProcessed: number;
  tokensPerSecond: number;
}

export interface ComparisonRow {
  task: string;
  metric: string;
  higherIsBetter: boolean;
  base: number;
  linearized: number;
  /** linearized / base for accuracies, base / linearized for perplexities; null where the
   * divisor is 0 (no ratio exists). */
  recovery: number | null;
}

export interface Comparison {
  baseModel: string;
  linearizedModel: string;
  rows: ComparisonRow[];
  /** mean(linearized) / mean(base) over the accuracy tasks; null without one. */
  ratioOfAverages: number | null;
  /** mean of the per-task recoveries over the accuracy tasks; null without one. */
  meanOfRatios: number | null;
  /** What each number means. */
  definitions: Record<string, string>;
}

export interface PerplexityResult {
  documents: number;
  windows: number;
  window: number;
  tokens: number;
  words: number;
  bytes: number;
  /** Total negative log-likelihood in nats. */
  nll: number;
  tokenPerplexity: number;
  wordPerplexity: number;
  bytePerplexity: number;
  bitsPerByte: number;
  stats: ScoreStats;
}

/** Events of an evaluation, in order: per task a `task`, `progress`es and a `taskDone`. */
export type EvalEvent =
  | { kind: "task"; task: string; index: number; count: number }
  | { kind: "progress"; task: string; done: number; total: number }
  | { kind: "taskDone"; task: string; result: TaskResult };

/** One request's score, with the tokens it was split into. */
export interface LoglikelihoodScore {
  /** Sum of the natural-log probabilities of the continuation's tokens. */
  logprob: number;
  /** Whether greedy decoding reproduces every continuation token. */
  isGreedy: boolean;
  /** The context's tokens (a lone BOS/EOS for an empty context). */
  contextTokens: number[];
  /** The continuation's tokens (a token merging across the boundary belongs here). */
  continuationTokens: number[];
  /** Whether the input was longer than maxLength and cut from the left. */
  truncated: boolean;
}

export interface LoglikelihoodResult {
  results: LoglikelihoodScore[];
  stats: ScoreStats;
}

/** The options of an evaluation as the addon takes them, checked (absent values are undefined: napi rejects null). */
export interface ResolvedEvalOptions {
  tasks: string[];
  dataDir: string | undefined;
  /** [task, file] pairs. */
  taskFiles: string[][];
  limit: number | undefined;
  seed: number;
  maxLength: number | undefined;
  window: number | undefined;
  addBos: boolean;
  passkey: number[] | undefined;
  passkeyTrials: number | undefined;
  passkeyDepths: number[] | undefined;
  passkeyFiller: string | undefined;
  label: string;
  device: "cpu" | "cuda";
}

/** Loglikelihood requests and options as the addon takes them, checked. */
export interface ResolvedLoglikelihood {
  requests: { context: string; continuation: string }[];
  options: { maxLength: number | undefined; addBos: boolean };
}

// Linearize runs (see linearize.ts).

export const MIXERS = ["gla", "hgrn2", "gsa", "retention", "mamba2", "rwkv6", "linear", "gdn"] as const;
export type MixerName = (typeof MIXERS)[number];
/** GSA's query scale in the slot read-out: the reference's 1, or 1/sqrt(head size). */
export const GSA_SCALES = ["one", "inv_sqrt_head_dim"] as const;
export type GsaScaleName = (typeof GSA_SCALES)[number];
export const LORA_TARGETS = ["q", "k", "v", "o"] as const;
export type LoraTargetName = (typeof LORA_TARGETS)[number];

/** Events of a run, in order: stages, evaluations, training steps, saves, the sample. */
export type LinearizeEvent =
  | { kind: "stage"; stage: string }
  | {
      kind: "step";
      step: number;
      totalSteps: number;
      loss: number;
      lr: number;
      gradNorm: number;
      tokensPerSecond: number;
      elapsedSeconds: number;
      etaSeconds: number;
    }
  | { kind: "eval"; name: string; loss: number; ppl: number }
  | { kind: "saved"; path: string }
  | { kind: "sample"; text: string };

/** Mean loss over the counted tokens of the validation sequences, and its perplexity. */
export interface ValidationResult {
  loss: number;
  ppl: number;
  tokens: number;
}

/**
 * What a run resolves to, and the contents of `report.json` in its run folder (the numbers
 * behind `report.html`: the losses, `history` of steps and validations, `memory`).
 */
export interface LinearizeReport {
  modelName: string;
  trainRecords: number;
  valRecords: number;
  skippedRows: number;
  trainSequences: number;
  valSequences: number;
  /** The base (softmax) model, the converted model before training, and after. */
  baseEval: ValidationResult | null;
  untrainedEval: ValidationResult | null;
  trainedEval: ValidationResult | null;
  stepsDone: number;
  totalSteps: number;
  losses: number[];
  trainSeconds: number;
  tokensPerS: number;
  cancelled: boolean;
  outDir: string;
  sample: string | null;
  /** Decoding memory of one sequence of the converted model on the engine that trained it, in bytes. */
  stateBytes: number;
  /** The layers that kept softmax attention. */
  softmaxLayers: number[];
  /** With `softmaxAuto` by loss: per layer, the loss increase (nats/token) of converting it alone, untrained. */
  layerCosts: number[] | null;
  /**
   * With `softmaxAuto` by retrieval: per layer, the fraction of the base model's (query head,
   * query) pairs on the selection text that put a weight of 0.2 or more on one token beyond the window
   * (a token at most 16 of the head's queries take: a retrieval, not a resting place).
   */
  layerRetrieval: number[] | null;
  /**
   * The attention-transfer stage before training (`attentionTransfer` steps), when the run had
   * one: the mean squared difference per attention output value, averaged over the Liger layers, of each step.
   */
  attentionTransfer: { stepsDone: number; losses: number[]; seconds: number } | null;
  /** The long-context stage after training (`longContext`), when the run had one: its training loss per step. */
  longContext: { stepsDone: number; losses: number[]; seconds: number } | null;
  /**
   * With `learnMix`: the learned weights of the recurrent (`alpha`) and window (`beta`) branches,
   * per layer and attention head, at the end of the run (`null` for softmax layers); else empty.
   */
  headMix: ({ alpha: number[]; beta: number[] } | null)[];
  /** The steps and validations of this run (not of a run it resumed), as they were reported. */
  history: {
    steps: { step: number; loss: number; lr: number; gradNorm: number; tokensPerS: number }[];
    evals: { step: number; loss: number; ppl: number }[];
  };
  /**
   * Decoding memory of one sequence of n tokens, `constant + n * perToken` bytes (f32, as the CPU
   * engine keeps it): the base model's KV cache against the converted model's state (and the
   * KV caches of its softmax layers). The run folder's `report.html` charts it from 256 to 32K tokens.
   */
  memory: { baseBytesPerToken: number; ligerConstantBytes: number; ligerBytesPerToken: number };
}

/** The options of a linearize run with defaults filled in and every one checked; the shape the addon takes. */
export interface ResolvedLinearizeOptions {
  modelPath: string;
  dataPath: string | undefined;
  outDir: string;
  mixer: MixerName;
  gsaSlots: number;
  gsaScale: GsaScaleName;
  window: number;
  sinks: number;
  grmNorm: boolean;
  surpriseKeys: number;
  surpriseRepeatTolerance: number;
  surpriseAfterTraining: boolean;
  learnMix: boolean;
  alpha: number;
  beta: number;
  useSwa: boolean;
  softmaxLayers: number[];
  softmaxEvery: number | undefined;
  softmaxAuto: number | undefined;
  softmaxAutoBy: "loss" | "retrieval";
  selectData: string | undefined;
  valData: string | undefined;
  weightDecay: number;
  distillWeight: number;
  attentionTransferSteps: number;
  longContextSteps: number;
  longContextSeqLen: number;
  loraRank: number;
  loraAlpha: number;
  loraTargets: LoraTargetName[];
  steps: number | undefined;
  epochs: number;
  seqLen: number;
  batch: number;
  gradAccum: number;
  lr: number;
  schedule: "constant" | "cosine";
  warmupSteps: number;
  seed: number;
  valFraction: number;
  maxValSequences: number;
  promptFormat: "alpaca" | "chat";
  skipBadRows: boolean;
  samplePrompt: string | undefined;
  sampleMaxTokens: number;
  dtype: "f32" | "f16" | "bf16";
  merged: boolean;
  resume: boolean;
  overwrite: boolean;
  keepCheckpoints: number | undefined;
  evalEvery: number;
  saveEvery: number;
  device: "cpu" | "cuda";
}
