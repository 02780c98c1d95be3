/** `liger export`: a Liger checkpoint written in another format. */
import type { Command } from "commander";

import { exportModel, type ExportModelOptions } from "../export.js";
import { invalidArgument } from "../errors.js";

interface ExportCliOptions {
  model?: string;
  out?: string;
  format: string;
  dtype: string;
  overwrite?: boolean;
}

export function registerExport(program: Command): void {
  program
    .command("export")
    .description(
      "write a Liger checkpoint in another format; hf: the reference implementation's liger_gla directory (adapters merged)",
    )
    .option("-m, --model <path>", "a Liger checkpoint directory or run folder (from liger linearize)")
    .option("--format <name>", "hf", "hf")
    .option("-o, --out <dir>", "the output folder (new or empty)")
    .option("--dtype <type>", "f32, bf16 or f16", "f32")
    .option("--overwrite", "replace an output folder that an earlier export wrote")
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
