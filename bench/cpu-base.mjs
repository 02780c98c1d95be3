#!/usr/bin/env node
/**
 * CPU speed of the base model: liger (through the built package) against llama.cpp (through
 * the npm package node-llama-cpp), on the same GGUF file and the same prompt token ids.
 *
 * Usage (after `npm ci && npm run build` in the repository root):
 *
 *   node bench/cpu-base.mjs [--model FILE.gguf] [--prompts 512,4096] [--decode 64] [--runs 3]
 *                           [--engines liger,llama.cpp]
 *
 * What is measured, per prompt length, for each engine:
 * - prefill: evaluating the prompt tokens until the logits of the last one are ready
 *   (liger: `result.prefillMs`; llama.cpp: until the first generated token comes back, which
 *   adds one greedy sample, a few microseconds);
 * - decode: `--decode` greedy tokens past the end-of-sequence token. Both engines run the
 *   same loop: sample, feed the token back as a single-token evaluation; the last token is
 *   not fed back. Decode tokens/s counts those single-token evaluations: (decode - 1) / time.
 *   (The CLI divides all generated tokens by decodeMs: 64/63 of this figure for 64 tokens.)
 * Each engine gets one warm-up run per prompt length, then `--runs` timed runs; the runs of
 * the two engines alternate, so that a change in machine load hits both. Medians are reported.
 *
 * The prompt is a fixed token sequence: the start of WikiText-2 (validation split) from
 * `$LIGER_DATA_DIR/wikitext2_raw` (default `<repo>/../shared/data`), cut to the prompt length
 * at a point where text -> tokens -> text -> tokens round-trips, so that liger's string API
 * sees exactly those ids. Without the data, a text of seeded pseudo-words is used instead.
 *
 * Caveats:
 * - Both engines use every core: rayon's default pool for liger, `threads` =
 *   os.availableParallelism() for llama.cpp. On a shared machine other processes (compiles)
 *   steal time; the output records os.loadavg() before and after. Check `uptime` first.
 * - llama.cpp runs with its defaults apart from threads and context size: f16 key/value cache,
 *   batch size 512 (a 4096-token prompt is evaluated in 8 batches), flash attention as
 *   node-llama-cpp picks it (reported). liger keeps f32 keys and values.
 * - The greedy continuations are compared (matching leading tokens) as a sanity check only:
 *   the two engines quantize activations differently, so texts may part after a while.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function parseArgs(argv) {
  const args = {
    model: path.join(os.homedir(), ".cache", "liger", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    prompts: [512, 4096],
    decode: 64,
    runs: 3,
    engines: ["liger", "llama.cpp"],
  };
  for (let i = 2; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[++i];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === "--model") args.model = path.resolve(value);
    else if (flag === "--prompts") args.prompts = value.split(",").map((s) => positiveInt(flag, s));
    else if (flag === "--decode") args.decode = positiveInt(flag, value);
    else if (flag === "--runs") args.runs = positiveInt(flag, value);
    else if (flag === "--engines") args.engines = value.split(",");
    else fail(`unknown option ${flag}; see the comment at the top of bench/cpu-base.mjs`);
  }
  if (args.decode < 2) fail("--decode must be at least 2 (decode speed counts tokens fed back)");
  for (const e of args.engines) if (e !== "liger" && e !== "llama.cpp") fail(`unknown engine ${e}`);
  if (!fs.existsSync(args.model)) fail(`model file not found: ${args.model} (run \`npm run fetch-model\` or pass --model)`);
  return args;
}

function positiveInt(flag, s) {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1) fail(`${flag} takes positive integers, got ${JSON.stringify(s)}`);
  return n;
}

function fail(message) {
  console.error(`cpu-base: ${message}`);
  process.exit(2);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const sameIds = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** A deterministic generator (mulberry32), for the fallback prompt. */
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A prompt of exactly `length` ids whose text tokenizes back to the same ids (so the string
 * API of liger sees the same sequence llama.cpp is given). Cuts the corpus a few tokens
 * further along until the round-trip holds.
 */
function makePrompt(model, corpusIds, length) {
  for (let start = 0; start + length <= corpusIds.length && start < 200; start++) {
    const ids = corpusIds.slice(start, start + length);
    const text = model.detokenize(ids);
    if (sameIds(model.tokenize(text), ids)) return { ids, text };
  }
  throw new Error(`no ${length}-token window of the prompt source round-trips through the tokenizer`);
}

function promptSource(model) {
  const dataDir = process.env.LIGER_DATA_DIR ?? path.join(repoRoot, "..", "shared", "data");
  const file = path.join(dataDir, "wikitext2_raw", "wiki.valid.raw");
  if (fs.existsSync(file)) {
    const ids = model.tokenize(fs.readFileSync(file, "utf8"), { addBos: false });
    return { name: "wikitext2_raw/wiki.valid.raw", ids };
  }
  console.error(`cpu-base: ${file} not found (set LIGER_DATA_DIR); using seeded pseudo-words`);
  // No corpus: seeded pseudo-words (letters and spaces), which round-trip through the tokenizer.
  const rand = seededRandom(1);
  const word = () => Array.from({ length: 2 + Math.floor(rand() * 7) }, () => "etaoinshrdlucmfwyp"[Math.floor(rand() * 18)]).join("");
  const text = Array.from({ length: 12000 }, word).join(" ");
  return { name: "seeded pseudo-words", ids: model.tokenize(text, { addBos: false }) };
}

async function runLiger(model, prompt, decode) {
  const generation = model.generate(prompt.text, { maxTokens: decode, temperature: 0, ignoreEos: true, seed: 0 });
  const r = await generation.result;
  if (r.promptTokens !== prompt.ids.length || r.tokens.length !== decode) {
    throw new Error(`liger ran ${r.promptTokens} prompt tokens and made ${r.tokens.length}, expected ${prompt.ids.length} and ${decode}`);
  }
  return { prefillMs: r.prefillMs, decodeMs: r.decodeMs, tokens: r.tokens };
}

async function runLlama(sequence, prompt, decode) {
  await sequence.clearHistory();
  const t0 = performance.now();
  const it = sequence.evaluate(prompt.ids, { temperature: 0, yieldEogToken: true });
  let step = await it.next();
  const prefillMs = performance.now() - t0;
  const tokens = [step.value];
  const t1 = performance.now();
  while (tokens.length < decode) {
    step = await it.next();
    if (step.done) throw new Error("llama.cpp stopped generating early");
    tokens.push(step.value);
  }
  const decodeMs = performance.now() - t1;
  await it.return();
  return { prefillMs, decodeMs, tokens };
}

function leadingMatch(a, b) {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

async function main() {
  const args = parseArgs(process.argv);
  const threads = os.availableParallelism();
  const load = { before: os.loadavg().map((x) => +x.toFixed(2)) };

  const liger = await import(path.join(repoRoot, "ts", "dist", "index.js"));
  const ligerModel = await liger.loadModel(args.model);
  const source = promptSource(ligerModel);
  const prompts = args.prompts.map((n) => makePrompt(ligerModel, source.ids, n));

  let llamaSequence;
  let llamaInfo;
  if (args.engines.includes("llama.cpp")) {
    const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
    const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.error });
    const llamaModel = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
    const contextSize = Math.max(...args.prompts) + args.decode + 16;
    const context = await llamaModel.createContext({ contextSize, threads, batchSize: 512, sequences: 1 });
    llamaSequence = context.getSequence();
    llamaInfo = {
      version: JSON.parse(fs.readFileSync(path.join(repoRoot, "node_modules", "node-llama-cpp", "package.json"), "utf8")).version,
      cpuBackend: llama.gpu === false ? "cpu" : String(llama.gpu),
      contextSize: context.contextSize,
      batchSize: context.batchSize,
      threads: context.idealThreads,
      flashAttention: context.flashAttention,
      // Does llama.cpp's own tokenizer give the same ids for the prompt text? (informative)
      sameTokenization: prompts.map((p) => sameIds(llamaModel.tokenize(p.text), p.ids)),
    };
  }

  const results = [];
  for (const prompt of prompts) {
    const engines = {};
    const runOnce = {
      liger: () => runLiger(ligerModel, prompt, args.decode),
      "llama.cpp": () => runLlama(llamaSequence, prompt, args.decode),
    };
    for (const e of args.engines) {
      await runOnce[e](); // warm-up
      engines[e] = [];
    }
    for (let r = 0; r < args.runs; r++) {
      for (const e of args.engines) engines[e].push(await runOnce[e]());
    }
    const row = { promptTokens: prompt.ids.length, decodeTokens: args.decode };
    for (const e of args.engines) {
      const runs = engines[e];
      row[e] = {
        prefillTokS: +median(runs.map((x) => (prompt.ids.length * 1e3) / x.prefillMs)).toFixed(1),
        decodeTokS: +median(runs.map((x) => ((args.decode - 1) * 1e3) / x.decodeMs)).toFixed(2),
        prefillMs: runs.map((x) => +x.prefillMs.toFixed(1)),
        decodeMs: runs.map((x) => +x.decodeMs.toFixed(1)),
      };
    }
    if (row.liger && row["llama.cpp"]) {
      row.ratio = {
        prefill: +(row.liger.prefillTokS / row["llama.cpp"].prefillTokS).toFixed(3),
        decode: +(row.liger.decodeTokS / row["llama.cpp"].decodeTokS).toFixed(3),
      };
      row.greedyTokensMatching = leadingMatch(engines.liger[0].tokens, engines["llama.cpp"][0].tokens);
    }
    results.push(row);
    console.error(`done: prompt ${prompt.ids.length} tokens`);
  }
  load.after = os.loadavg().map((x) => +x.toFixed(2));

  const report = {
    date: new Date().toISOString(),
    model: path.basename(args.model),
    cpu: os.cpus()[0]?.model ?? "unknown",
    threads,
    loadavg: load,
    promptSource: source.name,
    runs: args.runs,
    llamaCpp: llamaInfo,
    results,
  };
  console.log(JSON.stringify(report, null, 2));
  console.log(markdownTable(report, args.engines));
}

function markdownTable(report, engines) {
  const both = engines.length === 2;
  const head = ["prompt", "decode"];
  for (const e of engines) head.push(`${e} prefill tok/s`, `${e} decode tok/s`);
  if (both) head.push("prefill ours/llama.cpp", "decode ours/llama.cpp");
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  for (const r of report.results) {
    const cells = [r.promptTokens, r.decodeTokens];
    for (const e of engines) cells.push(r[e].prefillTokS, r[e].decodeTokS);
    if (both) cells.push(r.ratio.prefill, r.ratio.decode);
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
