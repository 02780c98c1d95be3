/** `liger fetch-model`: download the default model into the cache (no-op when present). */
import type { Command } from "commander";

import { fetchDefaultModel } from "../fetch.js";
import { StageProgress } from "./progress.js";

export function registerFetchModel(program: Command): void {
  program
    .command("fetch-model")
    .description("download and verify the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into the cache")
    .action(async () => {
      const progress = new StageProgress();
      try {
        process.stdout.write(`${await fetchDefaultModel({ onProgress: progress.update })}\n`);
      } finally {
        progress.stop();
      }
    });
}
