/** `liger export`: a Liger checkpoint written in another format. */
import type { Command } from "commander";

import { exportModel, type ExportModelOptions } from "../export.js";
import { invalidArgument } from "../errors.js";

interface ExportCliOptions {
  model?: string;
  out?: string;
  format: string;
  dtype?: string;
  overwrite?: boolean;
}

export function registerExport(program: Command): void {
  program
    .command("export")
    .description(
      "write a model in another format; hf: the reference implementation's liger_gla directory (adapters merged); bundle: the edge engine's one-file format",
    )
    .option(
      "-m, --model <path>",
      "a Liger checkpoint directory or run folder (from liger linearize); for bundle also a base model (.gguf, converted with the default Liger options)",
    )
    .option("--format <name>", "hf or bundle", "hf")
    .option("-o, --out <path>", "the output: a folder (hf, new or empty) or a file (bundle)")
    .option("--dtype <type>", "hf: f32 (default), bf16 or f16; bundle: int8 (default), q4_1, q4 or f32")
    .option("--overwrite", "replace an output that an earlier export wrote")
    .action(async (options: ExportCliOptions) => {
      if (!options.model) throw invalidArgument("--model is required: the Liger checkpoint to export");
      if (!options.out) throw invalidArgument("--out is required: the folder to write");
      const out = await exportModel(options.model, options.out, {
        format: options.format as ExportModelOptions["format"],
        dtype: options.dtype as ExportModelOptions["dtype"],
        overwrite: options.overwrite ?? false,
      });
      process.stdout.write(`exported: ${out}\n`);
    });
}
