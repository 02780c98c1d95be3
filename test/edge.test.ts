/**
 * The wasm engine in two edge runtimes besides Node and the browser: Deno (the `deno` npm
 * package's binary) and workerd, Cloudflare's Workers runtime (the `workerd` npm package's
 * binary). Each loads the wasm package and fetches the int8 bundle of the default model's Liger
 * conversion from a local HTTP server, generates greedily, and must give the token ids that the
 * same generation gives in Node. In workerd the q4_1 bundle streams into wasm memory
 * (`engine.fetchBundle`) and must fit the 128 MB that a Worker may use: workerd has no setting
 * for that limit, so the engine's wasm memory maximum is set under it, and the wasm memory
 * (read in the worker) plus the JavaScript heap's largest committed size (from V8's --trace-gc,
 * with the worker collecting garbage as the bundle streams, as a heap limit would make V8 do)
 * is asserted under it. Streaming itself is tested in Node: the same model as loading the
 * whole file, and typed errors for short, long and failing streams.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createReadStream, readFileSync, statSync } from "node:fs";
import { Readable } from "node:stream";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createRequire } from "node:module";
import { connect, createServer as createNetServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";

import { createEngine } from "@liger/wasm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { bundlePath, repoRoot, wasmPackageFiles } from "./helpers.js";

const MIB = 1024 * 1024;
/** What a Worker may use: 128 MB of memory, wasm memory and JavaScript heap together. */
const WORKER_LIMIT_BYTES = 128_000_000;
/** The engine's wasm memory maximum in the Worker: under the limit, in whole 64 KiB pages. */
const WORKER_WASM_MAX_BYTES = 118 * MIB;
const PROMPT = "The capital of France is";
const TOKENS = 16;
const require = createRequire(import.meta.url);

interface Run {
  tokens: number[];
  text: string;
  memoryBytes: number;
}

/** Serves the wasm package and the bundle (nothing else) on a free port of 127.0.0.1. */
function serve(): Promise<Server> {
  const files: Record<string, [path: string, type: string]> = {
    ...wasmPackageFiles(),
    "/model.bundle": [bundlePath("int8"), "application/octet-stream"],
    "/model.q4_1.bundle": [bundlePath("q4_1"), "application/octet-stream"],
  };
  const server = createServer((req, res) => {
    const file = files[new URL(req.url ?? "/", "http://localhost").pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": file[1], "content-length": statSync(file[0]).size });
    createReadStream(file[0]).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/**
 * The binary an npm package installed for this platform, or why it cannot run here (the only
 * reason a test below skips).
 */
function binary(locate: () => string): { path: string; unusable: null } | { path: null; unusable: string } {
  let path: string;
  try {
    path = locate();
  } catch (err) {
    return { path: null, unusable: `no binary for ${process.platform}-${process.arch}: ${(err as Error).message}` };
  }
  try {
    execFileSync(path, ["--version"], { stdio: "pipe", timeout: 30_000 });
  } catch (err) {
    return {
      path: null,
      unusable: `${path} does not run on ${process.platform}-${process.arch}: ${(err as Error).message}`,
    };
  }
  return { path, unusable: null };
}

// The deno package finds its platform package's binary (@deno/<target>) itself.
const deno = binary(() => require("deno/install_api.cjs").runInstall());
// The workerd package's main export is the path of its platform package's binary.
const workerd = binary(() => require("workerd").default);

/** Peak and current resident memory of a process, in bytes (Linux), or null. */
function residentBytes(pid: number): { peak: number; now: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)![1]) * 1024;
    return { peak: kib("VmHWM"), now: kib("VmRSS") };
  } catch {
    return null;
  }
}

/** A bundle file as a web stream of Uint8Array chunks, as a response body gives it. */
function fileStream(path: string): ReadableStream<Uint8Array> {
  return Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>;
}

/** `bytes` as a stream of `chunk`-byte pieces, failing with `fail` at the end if given. */
function bytesStream(bytes: Uint8Array, chunk: number, fail?: Error): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) {
        if (fail) controller.error(fail);
        else controller.close();
        return;
      }
      controller.enqueue(bytes.slice(at, at + chunk));
      at += chunk;
    },
  });
}

/** Greedy tokens of the prompt. */
function greedy(model: ReturnType<Awaited<ReturnType<typeof createEngine>>["loadBundle"]>): number[] {
  const generation = model.startGeneration(model.encode(PROMPT), { maxTokens: TOKENS, temperature: 0 });
  while (generation.step() !== null);
  return (generation.result as { tokens: number[] }).tokens;
}

let server: Server;
let origin: string;
let work: string;
let node: Run;
/** The q4_1 bundle's generation in Node, streamed from the file. */
let nodeQ41: Run;
beforeAll(async () => {
  server = await serve();
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  work = await mkdtemp(join(tmpdir(), "liger-edge-"));
  // The reference: the same package, bundle and generation in Node.
  const engine = await createEngine({ source: await readFile(join(repoRoot, "npm", "wasm", "liger.wasm")) });
  const model = engine.loadBundle(await readFile(bundlePath("int8")));
  const generation = model.startGeneration(model.encode(PROMPT), { maxTokens: TOKENS, temperature: 0 });
  while (generation.step() !== null);
  const result = generation.result as { tokens: number[]; text: string };
  node = { tokens: result.tokens, text: result.text, memoryBytes: engine.memoryBytes() };
  console.log(`node: ${JSON.stringify(node.text)} ${JSON.stringify(node.tokens)}`);
  expect(node.tokens.length).toBeGreaterThan(0);
  const small = await createEngine({ source: await readFile(join(repoRoot, "npm", "wasm", "liger.wasm")) });
  const q41 = await small.loadBundleStream(fileStream(bundlePath("q4_1")));
  const q41Generation = q41.startGeneration(q41.encode(PROMPT), { maxTokens: TOKENS, temperature: 0 });
  while (q41Generation.step() !== null);
  const r = q41Generation.result as { tokens: number[]; text: string };
  nodeQ41 = { tokens: r.tokens, text: r.text, memoryBytes: small.memoryBytes() };
  console.log(
    `node, q4_1 streamed: ${JSON.stringify(nodeQ41.text)}, wasm memory ${(nodeQ41.memoryBytes / MIB).toFixed(1)} MiB`,
  );
  expect(nodeQ41.tokens.length).toBeGreaterThan(0);
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  if (work) await rm(work, { recursive: true, force: true });
});

describe("streaming a bundle into wasm memory", () => {
  it("gives the model that loading the whole file gives", async () => {
    const engine = await createEngine({ source: await readFile(join(repoRoot, "npm", "wasm", "liger.wasm")) });
    const whole = engine.loadBundle(await readFile(bundlePath("q4_1")));
    expect(greedy(whole)).toEqual(nodeQ41.tokens);
    expect(whole.info.quantization).toBe("q4_1");
    whole.free();
  });

  it("refuses short, long, corrupt and failing streams with typed errors, and loads after them", async () => {
    const engine = await createEngine({ source: await readFile(join(repoRoot, "npm", "wasm", "liger.wasm")) });
    const bytes = new Uint8Array(await readFile(bundlePath("q4_1")));
    const headerEnd = 24 + Number(new DataView(bytes.buffer, bytes.byteOffset + 16, 8).getBigUint64(0, true));
    const chunk = 1 << 20;
    for (const cut of [10, 30, headerEnd - 1, headerEnd + 100, bytes.length - 1]) {
      await expect(engine.loadBundleStream(bytesStream(bytes.subarray(0, cut), chunk))).rejects.toMatchObject({
        code: "INVALID_FILE",
        message: expect.stringContaining("truncated"),
      });
    }
    const longer = new Uint8Array(bytes.length + 7);
    longer.set(bytes);
    await expect(engine.loadBundleStream(bytesStream(longer, chunk))).rejects.toMatchObject({
      code: "INVALID_FILE",
      message: expect.stringContaining("longer than its header states"),
    });
    const noise = bytes.slice(0, 4096).reverse();
    await expect(engine.loadBundleStream(bytesStream(noise, 1000))).rejects.toMatchObject({ code: "INVALID_FILE" });
    const failing = bytesStream(bytes.subarray(0, headerEnd + chunk), chunk, new Error("connection reset"));
    await expect(engine.loadBundleStream(failing)).rejects.toMatchObject({
      code: "IO_ERROR",
      message: expect.stringContaining("connection reset"),
    });
    // Every failed load freed its buffer: the file still fits once more, in odd-sized chunks.
    const model = await engine.loadBundleStream(bytesStream(bytes, 65_537));
    expect(greedy(model)).toEqual(nodeQ41.tokens);
    expect(engine.memoryBytes()).toBeLessThan(nodeQ41.memoryBytes + 2 * bytes.length);
  });

  it("refuses a model over the memory maximum before reading its weights", async () => {
    const engine = await createEngine({
      source: await readFile(join(repoRoot, "npm", "wasm", "liger.wasm")),
      maxMemoryBytes: 64 * MIB,
    });
    const stream = fileStream(bundlePath("q4_1"));
    await expect(engine.loadBundleStream(stream)).rejects.toMatchObject({ code: "OUT_OF_MEMORY" });
    expect(engine.memoryBytes()).toBeLessThan(32 * MIB);
  });
});

describe("the wasm engine in Deno", () => {
  it("imports the package over HTTP, fetches the bundle and generates Node's tokens", async (ctx) => {
    ctx.skip(deno.unusable !== null, deno.unusable ?? "");
    const { host } = new URL(origin);
    // Network to the local server only, no file access (the package and its liger.wasm are
    // imported and fetched over HTTP), no config or lockfile, a throwaway module cache.
    const { stdout } = await promisify(execFile)(
      deno.path!,
      [
        "run",
        "--no-config",
        "--no-prompt",
        `--allow-net=${host}`,
        `--allow-import=${host}`,
        join(repoRoot, "test", "edge", "deno-generate.js"),
        origin,
        PROMPT,
        String(TOKENS),
      ],
      { cwd: work, env: { ...process.env, DENO_DIR: join(work, "deno"), DENO_NO_UPDATE_CHECK: "1" }, timeout: 170_000 },
    );
    const run = JSON.parse(stdout.trim().split("\n").at(-1)!) as Run & { rss: number };
    console.log(
      `deno: ${JSON.stringify(run.text)}, wasm memory ${(run.memoryBytes / MIB).toFixed(1)} MiB, process resident ${(run.rss / MIB).toFixed(1)} MiB`,
    );
    expect(run.tokens).toEqual(node.tokens);
    expect(run.text).toBe(node.text);
    expect(run.memoryBytes).toBe(node.memoryBytes);
  });
});

describe("the wasm engine in workerd", () => {
  const children: ChildProcess[] = [];
  afterAll(() => {
    for (const child of children) child.kill();
  });

  /** A fresh workerd process serving test/edge/worker.js, with its idle resident memory. */
  async function startWorkerd() {
    const port = await freePort();
    // The worker's modules are embedded under their paths in the repository, so that its
    // imports resolve as they do on disk; `embed` paths are relative to the config file.
    const embed = (path: string) => JSON.stringify(relative(work, join(repoRoot, path)));
    const config = `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = (
      modules = [
        (name = "test/edge/worker.js", esModule = embed ${embed("test/edge/worker.js")}),
        (name = "npm/wasm/index.js", esModule = embed ${embed("npm/wasm/index.js")}),
        (name = "npm/wasm/errors.js", esModule = embed ${embed("npm/wasm/errors.js")}),
        (name = "npm/wasm/liger_wasm.js", esModule = embed ${embed("npm/wasm/liger_wasm.js")}),
        (name = "npm/wasm/liger.wasm", wasm = embed ${embed("npm/wasm/liger.wasm")}),
      ],
      compatibilityDate = ${JSON.stringify(require("workerd").compatibilityDate)},
      globalOutbound = "loopback",
    )),
    (name = "loopback", network = (allow = ["local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:${port}", http = (), service = "main")],
  v8Flags = ["--expose-gc", "--trace-gc"],
);
`;
    const file = `workerd-${port}.capnp`;
    await writeFile(join(work, file), config);
    const child = spawn(workerd.path!, ["serve", file], { cwd: work, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let log = "";
    child.stdout!.on("data", (d) => (log += d));
    child.stderr!.on("data", (d) => (log += d));
    await waitForPort(port, child, () => log);
    return { child, port, log: () => log, idle: residentBytes(child.pid!) };
  }

  /** Asks the worker to generate; the body of its JSON answer. */
  async function generate(port: number, params: Record<string, string>, log: () => string) {
    const query = new URLSearchParams({ prompt: PROMPT, tokens: String(TOKENS), ...params });
    const response = await fetch(`http://127.0.0.1:${port}/?${query}`);
    const body = (await response.json()) as Run & { memoryAfterLoad: number; error?: unknown };
    expect(body.error, `workerd log:\n${log()}`).toBeUndefined();
    expect(response.status).toBe(200);
    return body;
  }

  it("a module worker fetches the bundle, generates Node's tokens and returns them as JSON", async (ctx) => {
    ctx.skip(workerd.unusable !== null, workerd.unusable ?? "");
    const { child, port, log, idle } = await startWorkerd();
    const body = await generate(port, { bundle: `${origin}/model.bundle` }, log);
    const after = residentBytes(child.pid!);
    const bundleBytes = statSync(bundlePath("int8")).size;
    console.log(
      `workerd: ${JSON.stringify(body.text)}; bundle ${(bundleBytes / MIB).toFixed(1)} MiB, wasm memory ${(body.memoryAfterLoad / MIB).toFixed(1)} MiB after load and ${(body.memoryBytes / MIB).toFixed(1)} MiB after ${body.tokens.length} tokens` +
        (idle && after
          ? `; workerd resident ${(idle.peak / MIB).toFixed(1)} MiB idle, peak ${(after.peak / MIB).toFixed(1)} MiB, ${(after.now / MIB).toFixed(1)} MiB after the request`
          : ""),
    );
    expect(body.tokens).toEqual(node.tokens);
    expect(body.text).toBe(node.text);
    expect(body.memoryBytes).toBe(node.memoryBytes);
    expect(body.memoryBytes).toBeLessThanOrEqual(256 * MIB);
  });

  it("streams the q4_1 bundle and generates within a Worker's 128 MB", async (ctx) => {
    ctx.skip(workerd.unusable !== null, workerd.unusable ?? "");
    const { child, port, log, idle } = await startWorkerd();
    const params = { bundle: `${origin}/model.q4_1.bundle`, stream: "1", maxMemory: String(WORKER_WASM_MAX_BYTES) };
    const body = await generate(port, params, log);
    const after = residentBytes(child.pid!);
    const heap = jsHeapPeakBytes(log());
    const bundleBytes = statSync(bundlePath("q4_1")).size;
    const isolate = body.memoryBytes + heap;
    console.log(
      `workerd, q4_1 streamed: ${JSON.stringify(body.text)}; bundle ${(bundleBytes / MIB).toFixed(1)} MiB, wasm memory ${(body.memoryAfterLoad / MIB).toFixed(1)} MiB after load and ${(body.memoryBytes / MIB).toFixed(1)} MiB after ${body.tokens.length} tokens, JavaScript heap at most ${(heap / MIB).toFixed(1)} MiB: ${(isolate / 1e6).toFixed(1)} MB together` +
        (idle && after
          ? `; workerd resident ${(idle.peak / MIB).toFixed(1)} MiB idle, peak ${(after.peak / MIB).toFixed(1)} MiB`
          : ""),
    );
    expect(body.tokens).toEqual(nodeQ41.tokens);
    expect(body.text).toBe(nodeQ41.text);
    // The wasm memory never shrinks, so its size after generating is its peak; with the
    // JavaScript heap's largest committed size it must fit what a Worker may use.
    expect(body.memoryBytes).toBeLessThanOrEqual(WORKER_WASM_MAX_BYTES);
    expect(heap).toBeGreaterThan(0);
    expect(isolate).toBeLessThan(WORKER_LIMIT_BYTES);
  });
});

/**
 * The largest committed size of the JavaScript heap in V8's --trace-gc lines ("3.2 (4.8) ->
 * 2.9 (4.8) MB": used (committed) before and after, in MiB), in bytes; 0 without such lines.
 */
function jsHeapPeakBytes(log: string): number {
  let peak = 0;
  for (const m of log.matchAll(/\(([\d.]+)\) -> [\d.]+ \(([\d.]+)\) MB/g)) {
    peak = Math.max(peak, Number(m[1]), Number(m[2]));
  }
  return peak * MIB;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createNetServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

/** Waits until `port` accepts connections, failing with the log if the process exits first. */
async function waitForPort(port: number, proc: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`workerd exited with ${proc.exitCode}:\n${log()}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => (socket.destroy(), resolve(true)));
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`workerd did not listen on ${port} in 60 s:\n${log()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
