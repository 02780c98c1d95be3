#!/usr/bin/env node
/**
 * Decode and prefill speed of the wasm engine in Node (one thread, SIMD128) on the default
 * model's Liger conversion as int8 and f32 bundles, against llama.cpp (node-llama-cpp, CPU,
 * all cores) running the softmax base model (the Q4_1 GGUF), at each context length.
 *
 *   node bench/wasm-decode.mjs [--contexts 512,8192] [--decode 32] [--engines wasm-int8,wasm-f32,llama.cpp] [--package DIR]
 *
 * `--package`: the wasm package's folder (default npm/wasm), e.g. another build's, to compare.
 * Bundles: `scripts/make-bundle.sh int8` and `scripts/make-bundle.sh f32` (cache folder).
 * Prompt: fixed pseudo-random token ids (seeded), the same for every engine. Prefill tok/s:
 * prompt tokens / time to the first logits. Decode tok/s: (decode - 1) single-token steps /
 * their time (greedy, EOS ignored). One run per engine and length; machine load is recorded.
 * The native CPU path of the Liger model is measured by the Rust example `bench_liger`.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const cache = process.env.LIGER_CACHE_DIR || path.join(os.homedir(), ".cache", "liger");
const GIB = 1024 ** 3;

function parseArgs(argv) {
  const args = { contexts: [512, 8192], decode: 32, engines: ["wasm-int8", "wasm-f32", "llama.cpp"], package: path.join(repoRoot, "npm", "wasm") };
  for (let i = 2; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--contexts") args.contexts = value.split(",").map(Number);
    else if (flag === "--decode") args.decode = Number(value);
    else if (flag === "--engines") args.engines = value.split(",");
    else if (flag === "--package") args.package = path.resolve(value);
    else throw new Error(`unknown option ${flag}; see the comment at the top of bench/wasm-decode.mjs`);
  }
  return args;
}

/** `n` token ids from a seeded generator (mulberry32), below `vocab`, avoiding special ids. */
function promptIds(n, vocab) {
  let a = 12345;
  const rand = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Uint32Array.from({ length: n }, () => 100 + Math.floor(rand() * (vocab - 100)));
}

async function wasmEngine(quant, pkg) {
  const { createEngine } = await import(path.join(pkg, "index.js"));
  const bundle = path.join(cache, `SmolLM2-135M-Instruct.liger.${quant}.bundle`);
  if (!fs.existsSync(bundle)) throw new Error(`${bundle} is missing: run scripts/make-bundle.sh ${quant}`);
  const engine = await createEngine({ source: fs.readFileSync(path.join(pkg, "liger.wasm")), maxMemoryBytes: quant === "int8" ? 256 * 1024 ** 2 : 2 * GIB });
  const model = engine.loadBundle(fs.readFileSync(bundle));
  return {
    vocab: model.info.vocabSize,
    run(ids, decode) {
      const t0 = performance.now();
      const gen = model.startGeneration(ids, { maxTokens: decode, ignoreEos: true, temperature: 0 });
      const prefillMs = performance.now() - t0;
      gen.step(); // the first token comes from the prefill's logits
      const t1 = performance.now();
      let n = 0;
      while (gen.step() !== null) n++;
      return { prefillMs, decodeMs: performance.now() - t1, steps: n, memoryBytes: engine.memoryBytes(), stateBytes: model.info.liger.stateBytesPerSequence };
    },
  };
}

async function llamaEngine(maxContext, decode) {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const threads = os.availableParallelism();
  const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf"), gpuLayers: 0 });
  const context = await model.createContext({ contextSize: maxContext + decode + 16, threads, batchSize: 512, sequences: 1 });
  const sequence = context.getSequence();
  return {
    vocab: 49152,
    async run(ids, decode) {
      await sequence.clearHistory();
      const t0 = performance.now();
      const it = sequence.evaluate(Array.from(ids), { temperature: 0, yieldEogToken: true });
      await it.next();
      const prefillMs = performance.now() - t0;
      const t1 = performance.now();
      for (let i = 1; i < decode; i++) await it.next();
      const decodeMs = performance.now() - t1;
      await it.return();
      return { prefillMs, decodeMs, steps: decode - 1 };
    },
  };
}

async function main() {
  const args = parseArgs(process.argv);
  const report = { date: new Date().toISOString(), cpu: os.cpus()[0]?.model, cores: os.availableParallelism(), loadavgBefore: os.loadavg().map((x) => +x.toFixed(2)), decode: args.decode, results: [] };
  for (const name of args.engines) {
    const engine = name === "llama.cpp" ? await llamaEngine(Math.max(...args.contexts), args.decode) : await wasmEngine(name.slice("wasm-".length), args.package);
    for (const ctx of args.contexts) {
      const r = await engine.run(promptIds(ctx, engine.vocab), args.decode);
      const row = { engine: name, context: ctx, prefillTokS: +((ctx * 1e3) / r.prefillMs).toFixed(1), decodeTokS: +((r.steps * 1e3) / r.decodeMs).toFixed(2), memoryMiB: r.memoryBytes && +(r.memoryBytes / 2 ** 20).toFixed(1), loadavg: os.loadavg()[0].toFixed(2) };
      report.results.push(row);
      console.error(JSON.stringify(row));
    }
  }
  report.loadavgAfter = os.loadavg().map((x) => +x.toFixed(2));
  console.log(JSON.stringify(report, null, 2));
  const lines = ["| engine | context | prefill tok/s | decode tok/s | wasm memory MiB |", "|---|---|---|---|---|"];
  for (const r of report.results) lines.push(`| ${r.engine} | ${r.context} | ${r.prefillTokS} | ${r.decodeTokS} | ${r.memoryMiB ?? "-"} |`);
  console.log(lines.join("\n"));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
