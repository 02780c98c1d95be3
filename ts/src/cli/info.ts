/** `liger info`: what a model is (sizes, types, memory). */
import type { Command } from "commander";

import type { ModelInfo } from "../backend.js";
import { loadModelWithProgress, type ModelOption } from "./common.js";

interface InfoOptions extends ModelOption {
  json?: boolean;
}

export function registerInfo(program: Command): void {
  program
    .command("info")
    .description("show a model's architecture, sizes and storage types")
    .option("-m, --model <path>", "a .gguf file or Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    .option("--json", "print the information as JSON")
    .action(async (options: InfoOptions) => {
      const model = await loadModelWithProgress(options);
      const info = { ...model.info, path: model.path };
      process.stdout.write(options.json ? `${JSON.stringify(info, null, 2)}\n` : formatInfo(info));
    });
}

function formatInfo(info: ModelInfo & { path: string }): string {
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const types = Object.entries(info.tensorTypes)
    .map(([type, count]) => `${type} x${count}`)
    .join(", ");
  const rows: [string, string | number][] = [
    ["name", info.name],
    ["path", info.path],
    ["architecture", `${info.architecture} (${info.format})`],
    ["parameters", `${(info.numParams / 1e6).toFixed(1)} M`],
    ["weights", mib(info.weightBytes)],
    ["layers", info.numLayers],
    ["hidden size", `${info.hiddenSize} (MLP ${info.intermediateSize})`],
    ["heads", `${info.numHeads} query, ${info.numKvHeads} key/value, ${info.headDim} wide`],
    ["vocabulary", info.vocabSize],
    ["context", `${info.contextLength} tokens (RoPE theta ${info.ropeTheta})`],
    ["KV cache", `${(info.kvCacheBytesPerToken / 1024).toFixed(1)} KiB per token`],
    ["tensor types", types],
    ["chat template", info.hasChatTemplate ? "yes" : "no"],
  ];
  if (info.liger) {
    const l = info.liger;
    const softmax =
      l.softmaxLayers.length > 0 ? `softmax attention in layers ${l.softmaxLayers.join(", ")}` : "no softmax layers";
    rows.push(
      [
        "liger",
        `${l.mixer} mixer${l.grmNorm ? " (normalised)" : ""}${l.useSwa ? ` + ${l.windowKeys}-key sliding window${l.sinkKeys ? ` and ${l.sinkKeys} sink tokens` : ""}${l.surpriseKeys ? `, ${l.surpriseKeys} surprise keys${l.surpriseRepeatTolerance ? ` (repeats within ${l.surpriseRepeatTolerance} skipped)` : ""}` : ""}` : ""}, ${softmax}`,
      ],
      [
        "mix",
        l.learnedHeadMix
          ? "learned per attention head"
          : `${l.alpha} x recurrent${l.useSwa ? ` + ${l.beta} x window` : ""}`,
      ],
      ["state", `${(l.stateBytesPerSequence / 2 ** 20).toFixed(2)} MiB per sequence`],
      ["LoRA", `${(l.loraParams / 1e3).toFixed(1)} K values`],
    );
  }
  return rows.map(([key, value]) => `${key.padEnd(14)} ${value}\n`).join("");
}
