/**
 * `linearize`: convert a Llama-family model to Liger attention (gated recurrent mixer plus
 * sliding-window attention), train its LoRA adapters on instruction data, measure
 * perplexity before and after, and save a checkpoint that `loadModel` reads back.
 * The work runs in the core; this file checks options and fills in the ones not given from the
 * recipe presets, then from the facade's defaults (`linearizeDefaults()`).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";

import { invalidArgument } from "./errors.js";
import { checkOptional, defaultDataDir, isPositiveInt, writeFileAtomically } from "./eval.js";
import { fetchDefaultModel } from "./fetch.js";
import { downloadHubModel, hubModelId } from "./hub.js";
import { gpuInfo, linearizeDefaults, nativeLinearize } from "./native.js";
import { renderLinearizeHtml } from "./report/html.js";
import {
  GSA_SCALES,
  LORA_TARGETS,
  MIXERS,
  type GsaScaleName,
  type LinearizeEvent,
  type LinearizeReport,
  type LoraTargetName,
  type MixerName,
  type ResolvedLinearizeOptions,
} from "./types.js";

export { GSA_SCALES, LORA_TARGETS, MIXERS } from "./types.js";
export type {
  GsaScaleName,
  LinearizeEvent,
  LinearizeReport,
  LoraTargetName,
  MixerName,
  ResolvedLinearizeOptions,
  ValidationResult,
} from "./types.js";

export interface LinearizeOptions {
  /** Where the checkpoint directory goes (required). */
  out: string;
  /** Alpaca-style .json/.jsonl file or folder; default `<data>/alpaca_cleaned`; null: convert only. */
  data?: string | null;
  /** The gated recurrent mixer (default "gla"). */
  mixer?: MixerName;
  /**
   * GSA only: slots per key-value head (default 64; must divide the head size) and the query
   * scale of the slot read-out: "one" as the reference code runs it (default) or
   * "inv_sqrt_head_dim" (this library's form before it followed the reference).
   */
  gsa?: { slots?: number; scale?: GsaScaleName };
  /** Keys each query of the sliding-window branch sees (default 65). */
  window?: number;
  /**
   * The first tokens of a sequence, which every query of the sliding-window branch also sees
   * (attention sinks, as in StreamingLLM and Lizard; default 0, the paper's window). Decoding
   * keeps their keys and values beside the window: `2 * sinks * kvHeads * headDim` values per layer.
   */
  sinks?: number;
  /**
   * Normalise the recurrent branch like attention: divide it by the same recurrence over values
   * of one (default false, the paper's unnormalised GRM, whose output grows with the context).
   * Decoding keeps a second recurrent state of the same size.
   */
  grmNorm?: boolean;
  /**
   * Tokens per key-value head that left the window and stay visible to the sliding-window
   * branch: the ones the recurrent state recalls worst, by how far its read-out with the token's
   * key lands from the token's value (the sparse cache of LoLA; default 0). Training runs with
   * the cache, its choice held fixed, so the adapters learn to read what it keeps. Decoding
   * keeps `surpriseKeys` more keys and values per key-value head and layer, on every engine.
   */
  surpriseKeys?: number;
  /**
   * The surprise cache's repeat rule (default 0, off): a token whose value lies within this
   * relative squared distance of a value the cache already holds (`|v - v_c|^2 <= r |v_c|^2`)
   * does not enter, so that text repeating with a period longer than the recurrent state's
   * memory cannot fill the cache with copies. 0.05 is a good start; at most 0.5. Needs
   * `surpriseKeys`. Every engine runs it: training, evaluation and decoding on the GPU, the CPU
   * engine and wasm.
   */
  surpriseRepeatTolerance?: number;
  /**
   * Train with the window alone and add the surprise cache to the saved model, as LoLA adds it
   * to a trained model (default false). Needs `surpriseKeys`.
   */
  surpriseAfterTraining?: boolean;
  /**
   * Learn the weights of the two branches for each attention head with the adapters, starting
   * from `alpha` and `beta` (default false): a head can then take as much of the recurrent
   * branch as helps it. Adds 2 numbers per head and layer to the model, nothing to the decoding
   * state. Every engine runs it.
   */
  learnMix?: boolean;
  /** Weights of the recurrent and sliding-window branches (default 0.5 each). */
  alpha?: number;
  beta?: number;
  /** Use the sliding-window branch (default true). */
  useSwa?: boolean;
  /** Layers (0-based) that keep softmax attention. */
  softmaxLayers?: number[];
  /** Keep softmax attention in one layer of every n (8: the paper's hybrid). */
  softmaxEvery?: number;
  /**
   * Also keep softmax attention in this many layers chosen by measurement: before training,
   * each layer is converted alone (untrained) and the layers whose conversion costs the most
   * loss on `selectData` keep softmax attention.
   */
  softmaxAuto?: number;
  /**
   * What the automatic choice measures. "loss" (default): what converting each layer alone
   * costs. "retrieval": how often the base model's heads in each layer put a weight of 0.2 or
   * more on one token beyond the window (not a sink, and one that at most 16 queries of the
   * head take, not a token it rests on): the layers that recall far-back tokens.
   * Measure it on long text (`selectData`, e.g. WikiText), longer than the window.
   */
  softmaxAutoBy?: "loss" | "retrieval";
  /** Text the automatic choice measures on (.txt/.raw/.json/.jsonl; default: the validation split). */
  selectData?: string;
  /**
   * Validation text of its own (.txt/.raw/.json/.jsonl, e.g. WikiText-2 valid) instead of a
   * held-out split of the training records; scored before, during (`evalEvery`) and after training.
   */
  valData?: string;
  /** AdamW's decoupled weight decay on the adapters (default 0). */
  weightDecay?: number;
  /**
   * Distillation from the base model, GPU only: the training loss per token becomes
   * `(1 - w) · cross-entropy + w · KL(base || model)`, the base model (softmax attention, no
   * adapters) run forward beside the model in each step. 0 (default): cross-entropy alone.
   * Validation stays plain cross-entropy, so its perplexities compare across recipes.
   */
  distill?: number;
  /**
   * Steps of attention transfer before the language-model training (LoLCATs, Lizard): each
   * Liger layer's attention is trained toward the base model's softmax attention output on the
   * base's own hidden states (mean squared error; the q, k, v adapters learn, layer by layer).
   * Same batches and learning rate as the training that follows; 0 (default): none. Its steps
   * come on top of `steps`/`epochs`.
   */
  attentionTransfer?: number;
  /**
   * A length curriculum: after the training, `steps` more steps on the same data packed
   * `seqLen` tokens long (longer than `seqLen` of the training), each micro-batch holding about
   * as many tokens as the training's. Same optimizer settings at a constant learning rate
   * (distillation too, when on). Its steps come on top of `steps`/`epochs`.
   */
  longContext?: { steps: number; seqLen: number };
  /**
   * A preset (see `RECIPES`); options given beside it win. "paper": the Liger paper's recipe
   * (1024-token sequences, batch 8, 2 epochs, AdamW lr 1e-3 constant). "memory": one epoch of
   * the same with a 257-key window, 4 sinks and 512 surprise keys per head, mix 0/1, and on the
   * GPU distillation 0.5: the recipe that keeps the base model's long-context memory (the
   * default of a GPU run).
   */
  recipe?: "paper" | "memory";
  /** Passes over the training data; the steps follow from it after packing (when `steps` is not given). */
  epochs?: number;
  /** LoRA adapters (default rank 8, alpha 8, on q, k, v). */
  lora?: { rank?: number; alpha?: number; targets?: LoraTargetName[] };
  /** Optimizer steps (default 30: a short CPU run). */
  steps?: number;
  /** Tokens per training sequence (default 256 on a CPU; the paper uses 1024). */
  seqLen?: number;
  /** Sequences per forward/backward and micro-batches per optimizer step (default 1 each). */
  batch?: number;
  gradAccum?: number;
  /** AdamW learning rate (default 1e-3). */
  lr?: number;
  /** "constant" (default) or "cosine" (warmup over warmupSteps, then cosine decay). */
  schedule?: "constant" | "cosine";
  warmupSteps?: number;
  seed?: number;
  /** Fraction of the records held out for validation (default 0.02), and most sequences scored. */
  valFraction?: number;
  maxValSequences?: number;
  /** How records become text: the Alpaca template (default) or the model's chat template. */
  promptFormat?: "alpaca" | "chat";
  /** Skip malformed data rows instead of failing. */
  skipBadRows?: boolean;
  /** An instruction answered greedily by the trained model at the end; false: none. */
  sample?: string | false;
  sampleMaxTokens?: number;
  /** Storage type of the checkpoint's weights (default "f32", exact reload). */
  dtype?: "f32" | "f16" | "bf16";
  /** Fold the adapters into the weights. */
  merged?: boolean;
  /**
   * Continue the run in `out` from its latest checkpoint. `out` is a run folder laid out as the
   * Hugging Face Trainer's: `checkpoint-<step>/` for each save, `model/` for the final model
   * (loading the folder loads its final model, or its latest checkpoint).
   */
  resume?: boolean;
  /**
   * Let `out` hold other files (the run is written beside them; they are never deleted), or a
   * run to start again (its checkpoints and model are replaced). Default false: such a folder is
   * refused before any work.
   */
  overwrite?: boolean;
  /** Keep only the newest this many `checkpoint-<step>` folders (default: all). */
  keepCheckpoints?: number;
  /** Validate / save every this many steps (0: only at the end). */
  evalEvery?: number;
  saveEvery?: number;
  /**
   * Where training runs: "cpu" (default), "cuda" (the first NVIDIA GPU; DEVICE_UNAVAILABLE
   * without one) or "auto" (cuda when `gpuInfo()` finds a usable GPU, else cpu). On cuda, with
   * none of recipe, steps, epochs and seqLen given, the run trains `defaultGpuRecipe()` ("memory").
   */
  device?: "cpu" | "cuda" | "auto";
  onProgress?: (event: LinearizeEvent) => void;
  signal?: AbortSignal;
}

/** A recipe preset: training settings, and for some the attention beside the recurrent branch. */
export interface Recipe {
  seqLen: number;
  batch: number;
  gradAccum: number;
  epochs: number;
  lr: number;
  schedule: "constant" | "cosine";
  window?: number;
  sinks?: number;
  surpriseKeys?: number;
  /** The surprise cache's repeat rule (see `LinearizeOptions.surpriseRepeatTolerance`). */
  surpriseRepeatTolerance?: number;
  alpha?: number;
  beta?: number;
  /** Weight of distillation from the base model (see `LinearizeOptions.distill`). */
  distill?: number;
}

/**
 * The recipe presets. "paper": the Liger paper's training (GLA + 65-key window mixed 0.5/0.5).
 * "memory": the recipe that keeps the base model's memory (bench/RESULTS.md, "window 257 and
 * 256 surprise keys, trained through the cache"): a 257-key window, 4 sinks and a cache of the
 * 512 tokens per head the recurrent state recalls worst, the recurrent branch only choosing
 * them (mix 0/1), one epoch of the paper's training, and on the GPU half of the loss from
 * distillation of the base model ("distillation from the base model beside the memory recipe":
 * it keeps the recall at 4K that cross-entropy alone loses). The cache's repeat rule at 0.05
 * keeps text that repeats with a long period out of its slots ("the memory recipe with the
 * repeat rule": the passkey at 8K goes from 0 to 10 of 15). 512 slots rather than 256 find the
 * key in natural text 6 and 3 times of 15 at 2K and 4K instead of 2 and 0, for 38.8 MB of
 * decoding state instead of 27.0 ("the hybrid with the repeat rule, and 512 surprise keys").
 */
export const RECIPES: Record<"paper" | "memory", Recipe> = {
  paper: { seqLen: 1024, batch: 8, gradAccum: 1, epochs: 2, lr: 1e-3, schedule: "constant" },
  memory: {
    seqLen: 1024,
    batch: 8,
    gradAccum: 1,
    epochs: 1,
    lr: 1e-3,
    schedule: "constant",
    window: 257,
    sinks: 4,
    surpriseKeys: 512,
    surpriseRepeatTolerance: 0.05,
    alpha: 0,
    beta: 1,
    distill: 0.5,
  },
};

/**
 * The recipe a GPU run trains when none of recipe, steps, epochs and seqLen is given: "memory",
 * or "paper" for the mixers and settings that take no surprise cache (gsa, no window branch).
 */
export function defaultGpuRecipe(o: { mixer?: unknown; useSwa?: unknown }): keyof typeof RECIPES {
  return o.mixer === "gsa" || o.useSwa === false ? "paper" : "memory";
}

/** One line that says what a recipe trains. */
export function describeRecipe(name: keyof typeof RECIPES): string {
  const r = RECIPES[name];
  const epochs = `${r.epochs} epoch${r.epochs === 1 ? "" : "s"}`;
  const attention =
    r.surpriseKeys === undefined
      ? ""
      : `, a ${r.window}-key window with ${r.sinks} sinks and ${r.surpriseKeys} surprise keys per head` +
        (r.surpriseRepeatTolerance ? ` (repeat rule ${r.surpriseRepeatTolerance})` : "");
  const distill = r.distill ? `, distilling the base model at weight ${r.distill}` : "";
  return `${epochs} of ${r.batch} x ${r.seqLen}-token sequences, lr ${r.lr} ${r.schedule}${attention}${distill}`;
}

/** Where a run with `device` trains: "auto" becomes cuda when there is a usable GPU, else cpu. */
export function resolveDevice(device: LinearizeOptions["device"]): "cpu" | "cuda" {
  if (device === "auto") return gpuInfo().available ? "cuda" : "cpu";
  return device ?? "cpu";
}

/** Whether options leave the run's length to the defaults: the short CPU run, or a GPU recipe. */
export function usesDefaultLength(o: {
  recipe?: unknown;
  steps?: unknown;
  epochs?: unknown;
  seqLen?: unknown;
}): boolean {
  return o.recipe === undefined && o.steps === undefined && o.epochs === undefined && o.seqLen === undefined;
}

/** The length of the default run (the short CPU run), as the CLI says it: "30 steps of 256 tokens". */
export function describeDefaultLength(): string {
  const d = linearizeDefaults();
  return `${d.steps} steps of ${d.seqLen} tokens`;
}

/**
 * The facade's default sample instruction, as a constant of the public API: the job itself
 * takes `linearizeDefaults().samplePrompt`, and test/jobs.test.ts keeps the two equal.
 */
export const DEFAULT_SAMPLE_PROMPT = "Give three tips for staying healthy.";

/** The default training data: `alpaca_cleaned` in the data folder, when it is there. */
export function defaultTrainingData(): string | undefined {
  const dir = defaultDataDir();
  const alpaca = dir && join(dir, "alpaca_cleaned");
  return alpaca && existsSync(alpaca) ? alpaca : undefined;
}

const isNonNegativeInt = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isFiniteNumber = (v: unknown) => typeof v === "number" && Number.isFinite(v);
const oneOf = (values: readonly string[]) => (v: unknown) => typeof v === "string" && values.includes(v);

/**
 * Every option checked, and those not given filled in: from the recipe (given, or the GPU's
 * default), else from the facade's defaults. The shape the addon takes.
 */
export function resolveLinearizeOptions(modelPath: string, options: LinearizeOptions): ResolvedLinearizeOptions {
  if (options === null || typeof options !== "object") throw invalidArgument("linearize options must be an object");
  const o = options;
  if (typeof o.out !== "string" || o.out.length === 0)
    throw invalidArgument("out must name the checkpoint directory to write");
  checkOptional("device", o.device, oneOf(["cpu", "cuda", "auto"]), `"cpu", "cuda" or "auto"`);
  const device = resolveDevice(o.device);
  checkOptional("mixer", o.mixer, oneOf(MIXERS), `one of ${MIXERS.join(", ")}`);
  checkOptional("gsa.slots", o.gsa?.slots, isPositiveInt, "an integer >= 1");
  checkOptional("gsa.scale", o.gsa?.scale, oneOf(GSA_SCALES), `one of ${GSA_SCALES.join(", ")}`);
  checkOptional("window", o.window, isPositiveInt, "an integer >= 1 (65 is the reference's window)");
  checkOptional(
    "sinks",
    o.sinks,
    (v) => isNonNegativeInt(v) && (v as number) <= 1024,
    "an integer from 0 to 1024 (StreamingLLM uses 4)",
  );
  checkOptional("grmNorm", o.grmNorm, (v) => typeof v === "boolean", "a boolean");
  checkOptional(
    "surpriseKeys",
    o.surpriseKeys,
    (v) => isNonNegativeInt(v) && (v as number) <= 4096,
    "an integer from 0 to 4096 (LoLA uses 64 to 256)",
  );
  checkOptional(
    "surpriseRepeatTolerance",
    o.surpriseRepeatTolerance,
    (v) => isFiniteNumber(v) && (v as number) >= 0 && (v as number) <= 0.5,
    "a number from 0 (off) to 0.5 (0.05 is a good start)",
  );
  checkOptional("surpriseAfterTraining", o.surpriseAfterTraining, (v) => typeof v === "boolean", "a boolean");
  checkOptional("learnMix", o.learnMix, (v) => typeof v === "boolean", "a boolean");
  checkOptional("alpha", o.alpha, isFiniteNumber, "a finite number");
  checkOptional("beta", o.beta, isFiniteNumber, "a finite number");
  checkOptional("useSwa", o.useSwa, (v) => typeof v === "boolean", "a boolean");
  checkOptional(
    "softmaxLayers",
    o.softmaxLayers,
    (v) => Array.isArray(v) && v.every(isNonNegativeInt),
    "a list of layer indices",
  );
  checkOptional("softmaxEvery", o.softmaxEvery, isPositiveInt, "an integer >= 1");
  if (o.softmaxLayers !== undefined && o.softmaxEvery !== undefined) {
    throw invalidArgument("give softmaxLayers or softmaxEvery, not both");
  }
  checkOptional("softmaxAuto", o.softmaxAuto, isNonNegativeInt, "an integer >= 0");
  checkOptional("softmaxAutoBy", o.softmaxAutoBy, oneOf(["loss", "retrieval"]), `"loss" or "retrieval"`);
  checkOptional("selectData", o.selectData, (v) => typeof v === "string" && v.length > 0, "a file or folder path");
  checkOptional("valData", o.valData, (v) => typeof v === "string" && v.length > 0, "a file or folder path");
  checkOptional("weightDecay", o.weightDecay, (v) => isFiniteNumber(v) && (v as number) >= 0, "a number >= 0");
  checkOptional(
    "distill",
    o.distill,
    (v) => isFiniteNumber(v) && (v as number) >= 0 && (v as number) <= 1,
    "a number in [0, 1]",
  );
  checkOptional("attentionTransfer", o.attentionTransfer, isNonNegativeInt, "an integer >= 0");
  checkOptional(
    "longContext",
    o.longContext,
    (v) =>
      typeof v === "object" &&
      v !== null &&
      isPositiveInt((v as { steps: unknown }).steps) &&
      isPositiveInt((v as { seqLen: unknown }).seqLen),
    "{ steps, seqLen } of integers >= 1",
  );
  checkOptional("recipe", o.recipe, oneOf(Object.keys(RECIPES)), `one of ${Object.keys(RECIPES).join(", ")}`);
  checkOptional("epochs", o.epochs, (v) => isFiniteNumber(v) && (v as number) > 0, "a positive number");
  if (o.steps !== undefined && o.epochs !== undefined) throw invalidArgument("give steps or epochs, not both");
  const recipeName = o.recipe ?? (device === "cuda" && usesDefaultLength(o) ? defaultGpuRecipe(o) : undefined);
  const recipe: Partial<Recipe> = recipeName ? RECIPES[recipeName] : {};
  // The surprise cache's rules need a cache: given, or the recipe's.
  const surpriseKeys = o.surpriseKeys ?? recipe.surpriseKeys;
  if (o.surpriseRepeatTolerance && !surpriseKeys)
    throw invalidArgument("surpriseRepeatTolerance is a rule of the surprise cache: set surpriseKeys too");
  if (o.surpriseAfterTraining && !surpriseKeys)
    throw invalidArgument("surpriseAfterTraining adds a surprise cache after training: set surpriseKeys too");
  // Steps: given, else from epochs (given or the recipe's), else the default short CPU run's.
  const epochs = o.epochs ?? (o.steps === undefined ? recipe.epochs : undefined);
  const lora = o.lora ?? {};
  checkOptional("lora.rank", lora.rank, isPositiveInt, "an integer >= 1");
  checkOptional("lora.alpha", lora.alpha, isFiniteNumber, "a finite number");
  checkOptional(
    "lora.targets",
    lora.targets,
    (v) => Array.isArray(v) && v.every(oneOf(LORA_TARGETS)),
    `a list of ${LORA_TARGETS.join(", ")}`,
  );
  for (const name of ["steps", "seqLen", "batch", "gradAccum", "sampleMaxTokens", "maxValSequences"] as const) {
    checkOptional(name, o[name], isPositiveInt, "an integer >= 1");
  }
  checkOptional("overwrite", o.overwrite, (v) => typeof v === "boolean", "a boolean");
  checkOptional(
    "keepCheckpoints",
    o.keepCheckpoints,
    isPositiveInt,
    "an integer >= 1 (the final model is kept beside them)",
  );
  for (const name of ["seed", "warmupSteps", "evalEvery", "saveEvery"] as const) {
    checkOptional(name, o[name], isNonNegativeInt, "an integer >= 0");
  }
  checkOptional("lr", o.lr, (v) => isFiniteNumber(v) && (v as number) > 0, "a positive number");
  checkOptional(
    "valFraction",
    o.valFraction,
    (v) => isFiniteNumber(v) && (v as number) >= 0 && (v as number) < 1,
    "in [0, 1)",
  );
  checkOptional("schedule", o.schedule, oneOf(["constant", "cosine"]), `"constant" or "cosine"`);
  checkOptional("promptFormat", o.promptFormat, oneOf(["alpaca", "chat"]), `"alpaca" or "chat"`);
  checkOptional("dtype", o.dtype, oneOf(["f32", "f16", "bf16"]), `"f32", "f16" or "bf16"`);
  checkOptional(
    "sample",
    o.sample,
    (v) => v === false || (typeof v === "string" && v.length > 0),
    "a non-empty instruction or false",
  );
  checkOptional("signal", o.signal, (v) => v instanceof AbortSignal, "an AbortSignal");
  const data = o.data === undefined ? defaultTrainingData() : o.data;
  if (o.data === undefined && data === undefined) {
    throw invalidArgument(
      "no training data: pass data (the CLI's --data) with Alpaca-style records, set LIGER_DATA_DIR to a folder holding alpaca_cleaned, or data: null to convert without training",
    );
  }
  checkOptional(
    "data",
    data ?? undefined,
    (v) => typeof v === "string" && v.length > 0,
    "a file or folder path, or null",
  );
  const d = linearizeDefaults();
  return {
    modelPath,
    dataPath: data ?? undefined,
    outDir: o.out,
    mixer: o.mixer ?? d.mixer,
    gsaSlots: o.gsa?.slots ?? d.gsaSlots,
    gsaScale: o.gsa?.scale ?? d.gsaScale,
    window: o.window ?? recipe.window ?? d.window,
    sinks: o.sinks ?? recipe.sinks ?? d.sinks,
    grmNorm: o.grmNorm ?? d.grmNorm,
    surpriseKeys: surpriseKeys ?? d.surpriseKeys,
    // The recipe's repeat rule goes with a cache: not where the options turn it off.
    surpriseRepeatTolerance:
      o.surpriseRepeatTolerance ??
      (surpriseKeys ? recipe.surpriseRepeatTolerance : undefined) ??
      d.surpriseRepeatTolerance,
    surpriseAfterTraining: o.surpriseAfterTraining ?? d.surpriseAfterTraining,
    learnMix: o.learnMix ?? d.learnMix,
    alpha: o.alpha ?? recipe.alpha ?? d.alpha,
    beta: o.beta ?? recipe.beta ?? d.beta,
    useSwa: o.useSwa ?? d.useSwa,
    softmaxLayers: o.softmaxLayers ?? [...d.softmaxLayers],
    softmaxEvery: o.softmaxEvery ?? d.softmaxEvery,
    softmaxAuto: o.softmaxAuto || d.softmaxAuto,
    softmaxAutoBy: o.softmaxAutoBy ?? d.softmaxAutoBy,
    selectData: o.selectData ?? d.selectData,
    valData: o.valData ?? d.valData,
    weightDecay: o.weightDecay ?? d.weightDecay,
    // The CPU engine cannot run the teacher: there a recipe's distillation is left out.
    distillWeight: o.distill ?? (device === "cuda" ? recipe.distill : undefined) ?? d.distillWeight,
    attentionTransferSteps: o.attentionTransfer ?? d.attentionTransferSteps,
    longContextSteps: o.longContext?.steps ?? d.longContextSteps,
    longContextSeqLen: o.longContext?.seqLen ?? d.longContextSeqLen,
    loraRank: lora.rank ?? d.loraRank,
    loraAlpha: lora.alpha ?? d.loraAlpha,
    loraTargets: lora.targets ?? [...d.loraTargets],
    steps: epochs === undefined ? (o.steps ?? d.steps) : undefined,
    epochs: epochs ?? d.epochs,
    seqLen: o.seqLen ?? recipe.seqLen ?? d.seqLen,
    batch: o.batch ?? recipe.batch ?? d.batch,
    gradAccum: o.gradAccum ?? recipe.gradAccum ?? d.gradAccum,
    lr: o.lr ?? recipe.lr ?? d.lr,
    schedule: o.schedule ?? recipe.schedule ?? d.schedule,
    warmupSteps: o.warmupSteps ?? d.warmupSteps,
    seed: o.seed ?? d.seed,
    valFraction: o.valFraction ?? d.valFraction,
    maxValSequences: o.maxValSequences ?? d.maxValSequences,
    promptFormat: o.promptFormat ?? d.promptFormat,
    skipBadRows: o.skipBadRows ?? d.skipBadRows,
    samplePrompt: o.sample === false ? undefined : (o.sample ?? d.samplePrompt),
    sampleMaxTokens: o.sampleMaxTokens ?? d.sampleMaxTokens,
    dtype: o.dtype ?? d.dtype,
    merged: o.merged ?? d.merged,
    resume: o.resume ?? d.resume,
    overwrite: o.overwrite ?? d.overwrite,
    keepCheckpoints: o.keepCheckpoints ?? d.keepCheckpoints,
    evalEvery: o.evalEvery ?? d.evalEvery,
    saveEvery: o.saveEvery ?? d.saveEvery,
    device,
  };
}

/**
 * Convert `modelPath` (a .gguf file or a checkpoint directory; default: the default model)
 * to a Liger model, train it, and save it to `options.out`. Resolves to the report (three
 * validation perplexities: base, converted untrained, trained); aborting with `signal`
 * rejects with an ABORTED LigerError.
 */
export async function linearize(modelPath: string | undefined, options: LinearizeOptions): Promise<LinearizeReport> {
  if (modelPath !== undefined && (typeof modelPath !== "string" || modelPath.length === 0)) {
    throw invalidArgument(`model path must be a non-empty string, got ${JSON.stringify(modelPath)}`);
  }
  const resolved = resolveLinearizeOptions(modelPath ?? "", options);
  // A Hub id (owner/name[@revision][/file.gguf]) is fetched into the Hub's shared cache first.
  const hubId = modelPath === undefined ? undefined : hubModelId(modelPath);
  if (hubId) options.onProgress?.({ kind: "stage", stage: `downloading ${modelPath}` });
  resolved.modelPath = hubId ? await downloadHubModel(hubId) : (modelPath ?? (await fetchDefaultModel()));
  const report = await nativeLinearize(resolved, { onEvent: options.onProgress, signal: options.signal });
  // The core has written report.json beside the model; the page of charts is drawn here, from
  // the same numbers, so that one renderer serves the run folder and the API.
  writeFileAtomically(join(report.outDir, "report.html"), renderLinearizeHtml(report));
  return report;
}
