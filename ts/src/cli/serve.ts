/** `liger serve`: an OpenAI-compatible HTTP server. Ctrl-C stops it. */
import type { Command } from "commander";

import { serve, type ServeOptions } from "../serve/server.js";
import { StageProgress } from "./progress.js";
import { parseNumber, type ModelOption } from "./common.js";

interface ServeCliOptions extends ModelOption {
  modelName?: string;
  host: string;
  port: number;
  maxBatch: number;
  apiKey?: string;
  maxBodyBytes: number;
  timeoutMs: number;
  maxTokens: number;
}

export function registerServe(program: Command): void {
  program
    .command("serve")
    .description("serve a model over HTTP with the OpenAI API (chat/completions, completions, models)")
    .option("-m, --model <path>", "a .gguf file or Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    .option("--model-name <id>", "the model's id in the API (default: the model file's base name)")
    .option(
      "--device <device>",
      "where generation runs: cpu (default), cuda (the first NVIDIA GPU; one generation decodes at a time) or auto",
    )
    .option("--host <address>", "address to listen on", "127.0.0.1")
    .option("--port <n>", "port to listen on, 0 = any free port", parseNumber("port"), 8080)
    .option("--max-batch <n>", "most generations running at once; more wait in a queue", parseNumber("max-batch"), 4)
    .option("--api-key <key>", "require `Authorization: Bearer <key>` (default: $LIGER_API_KEY, else none)")
    .option("--max-body-bytes <n>", "largest request body accepted", parseNumber("max-body-bytes"), 1 << 20)
    .option(
      "--timeout-ms <n>",
      "abort a request running longer than this, 0 = never",
      parseNumber("timeout-ms"),
      600_000,
    )
    .option(
      "--max-tokens <n>",
      "largest max_tokens a request may ask for, and what one asking for none gets",
      parseNumber("max-tokens"),
      2048,
    )
    .action(async (options: ServeCliOptions) => {
      const progress = new StageProgress();
      let server;
      try {
        server = await serve({
          model: options.model,
          modelName: options.modelName,
          device: options.device as ServeOptions["device"],
          host: options.host,
          port: options.port,
          maxBatch: options.maxBatch,
          apiKey: options.apiKey ?? (process.env.LIGER_API_KEY || undefined),
          maxBodyBytes: options.maxBodyBytes,
          timeoutMs: options.timeoutMs,
          maxTokens: options.maxTokens,
          onProgress: progress.update,
        });
      } finally {
        progress.stop();
      }
      const turns = server.device === "cuda" ? ", one generation at a time" : "";
      process.stdout.write(`liger: serving ${server.modelName} at ${server.url}/v1 on ${server.device}${turns}\n`);
      // Ctrl-C (or a stop signal) closes the server: running generations are aborted.
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          server.close().then(resolve);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      });
    });
}
