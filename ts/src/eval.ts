/**
 * Evaluation: zero-shot tasks, rolling perplexity, passkey retrieval, and the recovery of a
 * linearized model against its base. The scoring itself runs in the core; this file checks
 * options, finds the data, and writes reports.
 */
import { existsSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { invalidArgument, LigerError, toLigerError } from "./errors.js";
import { evalDefaults, loadAddon } from "./native.js";
import type { Comparison, EvalEvent, EvalReport, ResolvedEvalOptions, ResolvedLoglikelihood } from "./types.js";

export type {
  Comparison,
  ComparisonRow,
  EvalEvent,
  EvalReport,
  LoglikelihoodResult,
  LoglikelihoodScore,
  PasskeyCell,
  PasskeyReport,
  PerplexityResult,
  ResolvedEvalOptions,
  ResolvedLoglikelihood,
  ScoreStats,
  TaskResult,
} from "./types.js";

/** Task names as lm-evaluation-harness spells them. */
export const TASK_NAMES = [
  "arc_easy",
  "arc_challenge",
  "piqa",
  "hellaswag",
  "winogrande",
  "mmlu",
  "lambada_openai",
  "wikitext",
] as const;
export type TaskName = (typeof TASK_NAMES)[number];

export interface EvaluateOptions {
  /** Tasks to run (default: arc_easy and lambada_openai). */
  tasks?: readonly string[];
  /** Score a fixed random subset of this many items per task (drawn with `seed`). */
  limit?: number;
  seed?: number;
  /** Folder of the task data, laid out like the project's (`arc_easy/ARC-Easy-Test.jsonl`, ...). */
  dataDir?: string;
  /** Explicit files per task; they win over `dataDir`. */
  taskFiles?: Partial<Record<string, string>>;
  /** Longest input scored at once (longer ones are cut from the left). */
  maxLength?: number;
  /** Window of rolling perplexity (wikitext). */
  window?: number;
  /** Put BOS before every context (lm-eval's add_bos_token; default false). */
  addBos?: boolean;
  /** Passkey retrieval at these prompt lengths (tokens). */
  passkey?: readonly number[];
  /** Prompts per length and depth (default 1), and the depths as fractions of the filler (default 0.1, 0.3, 0.5, 0.7, 0.9). */
  passkeyTrials?: number;
  passkeyDepths?: readonly number[];
  /**
   * A text file whose sentences fill the passkey prompts (each prompt from its own seeded start)
   * instead of the standard filler, five short sentences repeated: recall against natural text.
   */
  passkeyFiller?: string;
  /** The model's name in the report (default: its name, marked "(liger)" for a Liger model). */
  label?: string;
  /** Where scoring runs: "cpu" (default) or "cuda" (a bf16 copy on the first NVIDIA GPU; DEVICE_UNAVAILABLE without one). */
  device?: "cpu" | "cuda";
  onProgress?: (event: EvalEvent) => void;
  signal?: AbortSignal;
}

export interface PerplexityOptions {
  /** Tokens predicted per window (default: the base model's context length). */
  window?: number;
  onProgress?: (event: { kind: "progress"; done: number; total: number }) => void;
  signal?: AbortSignal;
}

/** A continuation to score after a context (plain text). */
export interface LoglikelihoodRequest {
  context: string;
  continuation: string;
}

export interface LoglikelihoodOptions {
  /** Longest input scored at once; longer ones are cut from the left (default: the model's context). */
  maxLength?: number;
  /** Put BOS before every non-empty context (lm-eval's add_bos_token; default false). */
  addBos?: boolean;
  onProgress?: (event: { kind: "progress"; done: number; total: number }) => void;
  signal?: AbortSignal;
}

/** The loglikelihood options as the addon takes them, checked. */
export function resolveLoglikelihood(
  requests: readonly LoglikelihoodRequest[],
  options: LoglikelihoodOptions,
): ResolvedLoglikelihood {
  if (!Array.isArray(requests) || requests.length === 0) {
    throw invalidArgument("loglikelihood needs a non-empty array of { context, continuation } requests");
  }
  requests.forEach((r, i) => {
    if (r === null || typeof r !== "object" || typeof r.context !== "string" || typeof r.continuation !== "string") {
      throw invalidArgument(`request ${i} must be { context: string, continuation: string }, got ${JSON.stringify(r)}`);
    }
    if (r.continuation.length === 0)
      throw invalidArgument(`request ${i} has an empty continuation; give the text to score`);
  });
  if (options === null || typeof options !== "object") throw invalidArgument("loglikelihood options must be an object");
  checkOptional("maxLength", options.maxLength, isPositiveInt, "an integer >= 1");
  checkOptional("addBos", options.addBos, (v) => typeof v === "boolean", "a boolean");
  checkOptional("signal", options.signal, (v) => v instanceof AbortSignal, "an AbortSignal");
  return {
    requests: requests.map((r) => ({ context: r.context, continuation: r.continuation })),
    // The default is the core's evaluation default, which loglikelihood shares.
    options: { maxLength: options.maxLength, addBos: options.addBos ?? evalDefaults().addBos },
  };
}

/**
 * The facade's default tasks, as a constant of the public API: evaluation itself takes
 * `evalDefaults().tasks`, and test/jobs.test.ts keeps the two equal.
 */
export const DEFAULT_TASKS: readonly TaskName[] = ["arc_easy", "lambada_openai"];

/** The repository's root when running from a checkout (ts/dist/eval.js -> ../..). */
function repoRoot(): string {
  return join(dirname(fileURLToPath(import.meta.url)), "..", "..");
}

/**
 * Where task and training data are found when not given: `$LIGER_DATA_DIR`, else
 * `shared/data` next to the repository when it exists; undefined otherwise.
 */
export function defaultDataDir(): string | undefined {
  if (process.env.LIGER_DATA_DIR) return process.env.LIGER_DATA_DIR;
  const nextToRepo = join(repoRoot(), "..", "shared", "data");
  return existsSync(nextToRepo) ? nextToRepo : undefined;
}

export function isPositiveInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 1;
}

export function checkOptional(name: string, value: unknown, rule: (v: unknown) => boolean, expected: string): void {
  if (value !== undefined && !rule(value)) {
    throw invalidArgument(`${name} must be ${expected}, got ${JSON.stringify(value)}`);
  }
}

/** The options as the addon takes them, checked (absent values are undefined: napi rejects null). */
export function resolveEvalOptions(options: EvaluateOptions, defaultLabel: string): ResolvedEvalOptions {
  if (options === null || typeof options !== "object") throw invalidArgument("evaluate options must be an object");
  const defaults = evalDefaults();
  const tasks = [...(options.tasks ?? (options.passkey ? [] : defaults.tasks))];
  for (const task of tasks) {
    if (!(TASK_NAMES as readonly string[]).includes(task)) {
      throw invalidArgument(`unknown task ${JSON.stringify(task)}; known tasks: ${TASK_NAMES.join(", ")}`);
    }
  }
  if (tasks.length === 0 && !options.passkey) throw invalidArgument("give at least one task (or passkey lengths)");
  checkOptional("limit", options.limit, isPositiveInt, "an integer >= 1");
  checkOptional("maxLength", options.maxLength, isPositiveInt, "an integer >= 1");
  checkOptional("window", options.window, isPositiveInt, "an integer >= 1");
  checkOptional(
    "seed",
    options.seed,
    (v) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0,
    "an integer >= 0",
  );
  checkOptional(
    "passkey",
    options.passkey,
    (v) => Array.isArray(v) && v.length > 0 && v.every(isPositiveInt),
    "a non-empty list of lengths",
  );
  checkOptional("passkeyTrials", options.passkeyTrials, isPositiveInt, "an integer >= 1");
  checkOptional(
    "passkeyDepths",
    options.passkeyDepths,
    (v) => Array.isArray(v) && v.length > 0 && v.every((d) => typeof d === "number" && d >= 0 && d <= 1),
    "a non-empty list of fractions in [0, 1]",
  );
  checkOptional("passkeyFiller", options.passkeyFiller, (v) => typeof v === "string" && v.length > 0, "a file path");
  if (options.passkeyFiller !== undefined && options.passkey === undefined)
    throw invalidArgument("passkeyFiller fills the passkey prompts: give passkey lengths too");
  checkOptional("signal", options.signal, (v) => v instanceof AbortSignal, "an AbortSignal");
  checkOptional("device", options.device, (v) => v === "cpu" || v === "cuda", `"cpu" or "cuda"`);
  const taskFiles = Object.entries(options.taskFiles ?? {}).filter(
    (e): e is [string, string] => typeof e[1] === "string",
  );
  const dataDir = options.dataDir ?? defaultDataDir();
  const needsData = tasks.filter((t) => !taskFiles.some(([name]) => name === t));
  if (needsData.length > 0 && dataDir === undefined) {
    throw invalidArgument(
      `no task data folder: set dataDir (the CLI's --data) or LIGER_DATA_DIR to a folder holding ${needsData.join(", ")}`,
    );
  }
  return {
    tasks,
    dataDir,
    taskFiles: taskFiles.map(([task, file]) => [task, file]),
    limit: options.limit,
    seed: options.seed ?? defaults.seed,
    maxLength: options.maxLength,
    window: options.window,
    addBos: options.addBos ?? defaults.addBos,
    passkey: options.passkey ? [...options.passkey] : undefined,
    passkeyTrials: options.passkeyTrials,
    passkeyDepths: options.passkeyDepths ? [...options.passkeyDepths] : undefined,
    passkeyFiller: options.passkeyFiller,
    label: options.label ?? defaultLabel,
    device: options.device ?? defaults.device,
  };
}

/** Recovery of a linearized model's report against its base model's. */
export function compareReports(base: EvalReport, linearized: EvalReport): Comparison {
  return callAddon(() => loadAddon().compareReports(base, linearized));
}

/** Write a file whole or not at all: a temporary name first, then a rename. */
export function writeFileAtomically(path: string, text: string): void {
  const temporary = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(temporary, text);
    renameSync(temporary, path);
  } catch (err) {
    throw new LigerError("IO_ERROR", `${path}: could not be written (${(err as Error).message})`, { cause: err });
  }
}

function callAddon<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw toLigerError(err);
  }
}
