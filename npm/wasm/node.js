// The package's Node entry: the same engine, whose module is read from this package's folder
// when no `source` is given (Node's fetch does not read file: URLs) and compiled once per
// process, so that each further engine only instantiates it.

import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

import { createEngine as createEngineFrom, LigerWasmError } from "./index.js";

export * from "./index.js";

const modulePath = fileURLToPath(new URL("./liger.wasm", import.meta.url));
let compiled;

/** The package's module, compiled once. */
function packageModule() {
  compiled ??= readFile(modulePath).then(
    (bytes) => WebAssembly.compile(bytes),
    (err) => {
      throw new LigerWasmError("IO_ERROR", `the wasm engine ${modulePath} cannot be read (${err.message}); build it with scripts/build-wasm.sh`, { cause: err });
    },
  );
  compiled.catch(() => (compiled = undefined));
  return compiled;
}

/** As `createEngine` of the package's main entry; the module defaults to the package's own. */
export async function createEngine(options = {}) {
  if (options.source !== undefined) return createEngineFrom(options);
  return createEngineFrom({ ...options, source: await packageModule() });
}
