/** Shared by the test files: where the model is, the compiled library, the CLI. */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { loadModel, type LigerModel } from "../ts/dist/index.js";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
export const cliPath = join(repoRoot, "ts", "bin", "liger.js");

export interface CliOptions {
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** Written to the command's stdin, which is then closed. */
  input?: string;
}

/** Run the `liger` command to its end: its exit code, stdout and stderr. */
export function liger(args: string[], options: CliOptions = {}) {
  const run = spawnSync(process.execPath, [cliPath, ...args], {
    encoding: "utf8",
    env: { ...process.env, ...options.env },
    input: options.input,
    timeout: 170_000,
  });
  return { code: run.status, stdout: run.stdout, stderr: run.stderr };
}

/**
 * The default model: `$LIGER_MODEL_GGUF`, else the cache's copy. Missing is a failure with
 * instructions, never a silent skip.
 */
export function modelPath(): string {
  const cache = process.env.LIGER_CACHE_DIR || join(homedir(), ".cache", "liger");
  const path = process.env.LIGER_MODEL_GGUF || join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!existsSync(path)) {
    throw new Error(`the default model is missing at ${path}: run \`npm run fetch-model\` (or set LIGER_MODEL_GGUF)`);
  }
  return path;
}

let shared: Promise<LigerModel> | undefined;

/** The default model, loaded once per test file. */
export function sharedModel(): Promise<LigerModel> {
  shared ??= loadModel(modelPath());
  return shared;
}

/** Log-softmax in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - logZ;
  return out;
}

/** Indices of the k largest values, largest first. */
export function topK(values: ArrayLike<number>, k: number): number[] {
  return Array.from({ length: values.length }, (_, i) => i)
    .sort((a, b) => values[b] - values[a])
    .slice(0, k);
}

/**
 * The task and training data: `$LIGER_DATA_DIR`, else `../shared/data` next to the
 * repository. Missing is a failure with instructions.
 */
export function dataDir(): string {
  const dir = process.env.LIGER_DATA_DIR || join(repoRoot, "..", "shared", "data");
  if (!existsSync(dir)) throw new Error(`the data folder is missing at ${dir}: set LIGER_DATA_DIR`);
  return dir;
}

/**
 * An edge bundle of the default model's Liger conversion (`int8`, `q4` or `f32`), made by
 * `scripts/make-bundle.sh` (setup makes the int8 one). Missing is a failure with instructions.
 */
export function bundlePath(quant: "int8" | "q4" | "q4_1" | "f32" = "int8"): string {
  const cache = process.env.LIGER_CACHE_DIR || join(homedir(), ".cache", "liger");
  const path = join(cache, `SmolLM2-135M-Instruct.liger.${quant}.bundle`);
  if (!existsSync(path))
    throw new Error(`the ${quant} bundle is missing at ${path}: run \`bash scripts/make-bundle.sh ${quant}\``);
  return path;
}

/**
 * The wasm package's files (npm/wasm, its package.json's `files`) as a server serves them:
 * URL path (`/npm/wasm/<file>`) to the file and its content type.
 */
export function wasmPackageFiles(): Record<string, [path: string, type: string]> {
  const dir = join(repoRoot, "npm", "wasm");
  const { files } = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { files: string[] };
  const type = (f: string) =>
    f.endsWith(".wasm") ? "application/wasm" : f.endsWith(".js") ? "text/javascript" : "text/plain";
  return Object.fromEntries(files.map((f) => [`/npm/wasm/${f}`, [join(dir, f), type(f)]]));
}
