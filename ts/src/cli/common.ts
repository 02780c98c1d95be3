/** What every command shares: loading the model with progress, and reporting errors. */
import { LigerError, toLigerError } from "../errors.js";
import { loadModel, type LigerModel } from "../model.js";
import { StageProgress } from "./progress.js";

export interface ModelOption {
  model?: string;
}

/**
 * Load `--model` (a path, or a Hub id such as `owner/name/file.gguf`, downloaded with a bar),
 * or the default model (fetched into the cache if needed).
 */
export async function loadModelWithProgress(options: ModelOption): Promise<LigerModel> {
  const progress = new StageProgress();
  try {
    return await loadModel(options.model, { onProgress: progress.update });
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
export function parseNumber(name: string): (value: string) => number {
  return (value: string) => {
    const parsed = Number(value);
    if (value.trim() === "" || Number.isNaN(parsed)) {
      throw new LigerError("INVALID_ARGUMENT", `--${name} expects a number, got ${JSON.stringify(value)}`);
    }
    return parsed;
  };
}
