/** `liger generate`: stream a completion to stdout. Ctrl-C stops it cleanly. */
import type { Command } from "commander";

import { addSamplingOptions, loadModelWithProgress, type ModelOption } from "./common.js";

interface GenerateCliOptions extends ModelOption {
  prompt: string;
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  chat?: boolean;
  stop?: string[];
  ignoreEos?: boolean;
  stats?: boolean;
}

export function registerGenerate(program: Command): void {
  addSamplingOptions(
    program
      .command("generate")
      .description("generate text from a prompt, streaming it to stdout")
      .requiredOption("-p, --prompt <text>", "the prompt")
      .option("-m, --model <path>", "a .gguf file or Hugging Face model directory (default: SmolLM2-135M-Instruct)"),
    "to generate",
  )
    .option("--chat", "wrap the prompt as a user message in the model's chat template")
    .option("--device <device>", "where generation runs: cpu (default), cuda (the first NVIDIA GPU) or auto")
    .option("--stop <strings...>", "stop when one of these strings appears")
    .option("--ignore-eos", "keep generating past the end-of-sequence token")
    .option("--stats", "print token counts and speed to stderr at the end")
    .action(async (options: GenerateCliOptions) => {
      const model = await loadModelWithProgress(options);
      const controller = new AbortController();
      // First Ctrl-C stops generation (the text so far stays printed); a second one exits.
      const onSigint = () => {
        if (controller.signal.aborted) process.exit(130);
        controller.abort();
      };
      process.on("SIGINT", onSigint);
      try {
        const generation = model.generate(options.prompt, {
          maxTokens: options.maxTokens,
          temperature: options.temperature,
          topK: options.topK,
          topP: options.topP,
          seed: options.seed,
          stop: options.stop,
          chat: options.chat,
          ignoreEos: options.ignoreEos,
          signal: controller.signal,
        });
        for await (const token of generation) process.stdout.write(token.text);
        const result = await generation.result;
        process.stdout.write("\n");
        if (options.stats) {
          const tokensPerSecond = result.tokens.length / Math.max(result.decodeMs / 1000, 1e-9);
          process.stderr.write(
            `prompt ${result.promptTokens} tokens in ${result.prefillMs.toFixed(0)} ms; ` +
              `generated ${result.tokens.length} tokens (${tokensPerSecond.toFixed(1)}/s); ` +
              `finish: ${result.finishReason}\n`,
          );
        }
        if (result.finishReason === "aborted") {
          process.stderr.write("liger: generation aborted\n");
          process.exitCode = 130;
        }
      } finally {
        process.off("SIGINT", onSigint);
      }
    });
}
