#!/usr/bin/env node
/**
 * Size and start-up cost of the wasm engine in Node: the module's size (raw and gzip -9), the
 * JavaScript a runtime loads with it, and, each in a fresh process (V8 caches compiled wasm
 * within one), the time to import the package, compile the module, instantiate an engine
 * (a second engine: instantiation only), and load the int8 bundle into it.
 *
 *   node bench/wasm-load.mjs [--package DIR] [--runs 7] [--bundle PATH]
 *
 * `--package`: the wasm package's folder (default npm/wasm), e.g. another build's, to compare.
 * Prints JSON (medians over the runs, and every run) and a table.
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const cache = process.env.LIGER_CACHE_DIR || path.join(os.homedir(), ".cache", "liger");

function parseArgs(argv) {
  const args = {
    package: path.join(repoRoot, "npm", "wasm"),
    runs: 7,
    bundle: path.join(cache, "SmolLM2-135M-Instruct.liger.int8.bundle"),
    child: false,
  };
  for (let i = 2; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--child") args.child = true;
    else if (flag === "--package") args.package = path.resolve(argv[++i]);
    else if (flag === "--runs") args.runs = Number(argv[++i]);
    else if (flag === "--bundle") args.bundle = path.resolve(argv[++i]);
    else throw new Error(`unknown option ${flag}; see the comment at the top of bench/wasm-load.mjs`);
  }
  return args;
}

/** One cold measurement, in this (fresh) process. */
async function measureOnce(args) {
  const ms = (t) => +(performance.now() - t).toFixed(2);
  let t = performance.now();
  const { createEngine } = await import(pathToFileURL(path.join(args.package, "index.js")).href);
  const importMs = ms(t);
  const bytes = fs.readFileSync(path.join(args.package, "liger.wasm"));
  t = performance.now();
  const module = await WebAssembly.compile(bytes);
  const compileMs = ms(t);
  t = performance.now();
  await createEngine({ source: module });
  const firstEngineMs = ms(t);
  t = performance.now();
  const engine = await createEngine({ source: module });
  const engineMs = ms(t);
  const bundle = fs.readFileSync(args.bundle);
  t = performance.now();
  engine.loadBundle(bundle);
  const loadBundleMs = ms(t);
  return { importMs, compileMs, firstEngineMs, engineMs, loadBundleMs, memoryAfterLoadMiB: engine.memoryBytes() / 2 ** 20 };
}

function sizes(pkg) {
  const gz = (buf) => gzipSync(buf, { level: 9 }).length;
  const wasm = fs.readFileSync(path.join(pkg, "liger.wasm"));
  const { files } = JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8"));
  const js = files.filter((f) => f.endsWith(".js") && f !== "node.js").map((f) => fs.readFileSync(path.join(pkg, f)));
  const jsAll = Buffer.concat(js);
  return { wasmBytes: wasm.length, wasmGzipBytes: gz(wasm), jsBytes: jsAll.length, jsGzipBytes: js.reduce((n, b) => n + gz(b), 0) };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const args = parseArgs(process.argv);
  if (args.child) {
    console.log(JSON.stringify(await measureOnce(args)));
    return;
  }
  if (!fs.existsSync(args.bundle)) throw new Error(`${args.bundle} is missing: run scripts/make-bundle.sh int8`);
  const runs = [];
  for (let i = 0; i < args.runs; i++) {
    const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), "--child", "--package", args.package, "--bundle", args.bundle], { encoding: "utf8" });
    runs.push(JSON.parse(out.trim().split("\n").at(-1)));
  }
  const keys = Object.keys(runs[0]);
  const medians = Object.fromEntries(keys.map((k) => [k, median(runs.map((r) => r[k]))]));
  const report = { date: new Date().toISOString(), node: process.version, cpu: os.cpus()[0]?.model, cores: os.availableParallelism(), loadavg: os.loadavg().map((x) => +x.toFixed(2)), package: path.relative(repoRoot, args.package) || args.package, ...sizes(args.package), medians, runs };
  console.log(JSON.stringify(report, null, 2));
  const kib = (n) => (n / 1024).toFixed(1);
  console.log(
    [
      "| wasm KiB (gzip) | JS KiB (gzip) | import ms | compile ms | first engine ms | engine ms | int8 loadBundle ms | memory after load MiB |",
      "|---|---|---|---|---|---|---|---|",
      `| ${kib(report.wasmBytes)} (${kib(report.wasmGzipBytes)}) | ${kib(report.jsBytes)} (${kib(report.jsGzipBytes)}) | ${medians.importMs} | ${medians.compileMs} | ${medians.firstEngineMs} | ${medians.engineMs} | ${medians.loadBundleMs} | ${medians.memoryAfterLoadMiB} |`,
    ].join("\n"),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
