/** The `liger` command line. Each command lives in its own file. */
import { Command, CommanderError } from "commander";
import { createRequire } from "node:module";

import { registerChat } from "./chat.js";
import { reportError } from "./common.js";
import { registerEval } from "./eval.js";
import { registerExport } from "./export.js";
import { registerFetchModel } from "./fetch-model.js";
import { registerGenerate } from "./generate.js";
import { registerInfo } from "./info.js";
import { registerLinearize } from "./linearize.js";
import { registerServe } from "./serve.js";

const { version } = createRequire(import.meta.url)("../../package.json") as { version: string };

export function buildProgram(): Command {
  const program = new Command("liger")
    .description("Run Llama-family models, and turn them into gated linear recurrent models")
    .version(version)
    .showHelpAfterError()
    .exitOverride();
  registerInfo(program);
  registerGenerate(program);
  registerChat(program);
  registerEval(program);
  registerLinearize(program);
  registerExport(program);
  registerServe(program);
  registerFetchModel(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander already printed the usage problem (or the help / version text).
      process.exitCode = err.exitCode;
      return;
    }
    reportError(err);
  }
}

await main(process.argv);
