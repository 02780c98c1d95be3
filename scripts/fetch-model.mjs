#!/usr/bin/env node
// Download and verify the default model into the cache ($LIGER_CACHE_DIR or ~/.cache/liger);
// a no-op when it is already there. Used by set-up, tests and CI. It runs before the full
// build, so it compiles the TypeScript (quick, no addon needed) when that was not done yet.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const compiled = join(root, "ts", "dist", "fetch.js");
if (!existsSync(compiled)) {
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", join(root, "ts", "tsconfig.json")], { stdio: "inherit" });
}
const { fetchDefaultModel } = await import(pathToFileURL(compiled).href);
const { StageProgress } = await import(pathToFileURL(join(root, "ts", "dist", "cli", "progress.js")).href);

const progress = new StageProgress();
try {
  const path = await fetchDefaultModel({ onProgress: progress.update });
  progress.stop();
  console.log(path);
} catch (err) {
  progress.stop();
  console.error(`fetch-model: ${err.code ?? "ERROR"}: ${err.message}`);
  process.exitCode = 1;
}
