/** What every command shares: loading the model with progress, and reporting errors. */
import type { Command } from "commander";

import { LigerError, toLigerError } from "../errors.js";
import { loadModel, type LigerModel, type LoadModelOptions } from "../model.js";
import { StageProgress } from "./progress.js";

export interface ModelOption {
  model?: string;
  device?: string;
}

/**
 * Load `--model` (a path, or a Hub id such as `owner/name/file.gguf`, downloaded with a bar),
 * or the default model (fetched into the cache if needed).
 */
export async function loadModelWithProgress(options: ModelOption): Promise<LigerModel> {
  const progress = new StageProgress();
  try {
    const device = options.device as LoadModelOptions["device"];
    return await loadModel(options.model, { onProgress: progress.update, device });
  } finally {
    progress.stop();
  }
}

/** Print `liger: CODE: message` to stderr and set a failing exit code. */
export function reportError(err: unknown): void {
  const error = err instanceof LigerError ? err : toLigerError(err);
  process.stderr.write(`liger: ${error.code}: ${error.message}\n`);
  process.exitCode = 1;
}

/** Parse a numeric option, leaving validation of its range to the library. */
/**
 * The sampling options `generate` and `chat` share: --max-tokens, --temperature, --top-k,
 * --top-p and --seed. `per` says what --max-tokens counts ("to generate", "per reply").
 */
export function addSamplingOptions(command: Command, per: string): Command {
  return command
    .option("-n, --max-tokens <n>", `most tokens ${per} (default 256)`, parseNumber("max-tokens"))
    .option("-t, --temperature <t>", "sampling temperature, 0 = greedy (default 0.8)", parseNumber("temperature"))
    .option("--top-k <k>", "sample among the k most likely tokens, 0 = all (default 40)", parseNumber("top-k"))
    .option("--top-p <p>", "nucleus sampling threshold, 1 = off (default 0.95)", parseNumber("top-p"))
    .option("-s, --seed <n>", "sampler seed, for reproducible output", parseNumber("seed"));
}

export function parseNumber(name: string): (value: string) => number {
  return (value: string) => {
    const parsed = Number(value);
    if (value.trim() === "" || Number.isNaN(parsed)) {
      throw new LigerError("INVALID_ARGUMENT", `--${name} expects a number, got ${JSON.stringify(value)}`);
    }
    return parsed;
  };
}
