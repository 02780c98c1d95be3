/**
 * exportModel: a model written in another format. "hf" is the reference implementation's
 * `liger_gla` Hugging Face directory (adapters merged into q/k/v/o), which its transformers +
 * flash-linear-attention modeling code loads as is, and loadModel reads back. "bundle" is the
 * edge engine's one-file format (loadModel with the wasm backend, in browsers, Deno, Workers),
 * from a Liger checkpoint or a base model converted with the default Liger options.
 */
import { invalidArgument } from "./errors.js";
import { nativeExport } from "./native.js";

export const EXPORT_FORMATS = ["hf", "bundle"] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface ExportModelOptions {
  /** "hf" (the default): the reference's liger_gla directory; "bundle": an edge bundle file. */
  format?: ExportFormat;
  /**
   * Type of the written weights. hf: "f32" (the default, exact), "bf16" or "f16"; bundle:
   * "int8" (the default), "q4_1" (4-bit layers, int8 embeddings: fits a Worker), "q4"
   * (smallest, costs perplexity) or "f32".
   */
  dtype?: "f32" | "bf16" | "f16" | "int8" | "q4" | "q4_1";
  /**
   * hf: replace a non-empty output folder that an earlier export wrote (a user's files are
   * never deleted); bundle: replace an existing file.
   */
  overwrite?: boolean;
}

/**
 * Export the Liger checkpoint (or run folder) at `model` into the folder `out` (hf), or a Liger
 * checkpoint or base model into the file `out` (bundle); resolves to `out`.
 * Options the reference cannot express (softmax layers, sinks, a surprise cache, mixers other
 * than gla, ...) are refused with INVALID_ARGUMENT naming them; so is an existing non-empty
 * `out` without `overwrite`.
 */
export async function exportModel(model: string, out: string, options: ExportModelOptions = {}): Promise<string> {
  if (typeof model !== "string" || model === "") throw invalidArgument("model must be the path of a Liger checkpoint");
  if (typeof out !== "string" || out === "") throw invalidArgument("out must be the path of the output folder");
  const { format = "hf", dtype = "", overwrite = false } = options;
  if (typeof format !== "string" || typeof dtype !== "string")
    throw invalidArgument("format and dtype must be strings");
  if (typeof overwrite !== "boolean") throw invalidArgument("overwrite must be true or false");
  return nativeExport(model, out, format, dtype, overwrite);
}
