/**
 * The wasm engine in two edge runtimes besides Node and the browser: Deno (the `deno` npm
 * package's binary) and workerd, Cloudflare's Workers runtime (the `workerd` npm package's
 * binary). Each loads the wasm package and fetches the int8 bundle of the default model's Liger
 * conversion from a local HTTP server, generates greedily, and must give the token ids that the
 * same generation gives in Node. In workerd the wasm memory and the process's peak resident
 * memory are measured against the 128 MB that a Worker may use.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createReadStream, readFileSync, statSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createRequire } from "node:module";
import { connect, createServer as createNetServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";

import { createEngine } from "@liger/wasm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { bundlePath, repoRoot } from "./helpers.js";

const MIB = 1024 * 1024;
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
    "/npm/wasm/index.js": [join(repoRoot, "npm", "wasm", "index.js"), "text/javascript"],
    "/npm/wasm/liger.wasm": [join(repoRoot, "npm", "wasm", "liger.wasm"), "application/wasm"],
    "/model.bundle": [bundlePath("int8"), "application/octet-stream"],
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

let server: Server;
let origin: string;
let work: string;
let node: Run;
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
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  if (work) await rm(work, { recursive: true, force: true });
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
  let child: ChildProcess | undefined;
  afterAll(() => {
    child?.kill();
  });

  it("a module worker fetches the bundle, generates Node's tokens and returns them as JSON", async (ctx) => {
    ctx.skip(workerd.unusable !== null, workerd.unusable ?? "");
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
        (name = "npm/wasm/liger.wasm", wasm = embed ${embed("npm/wasm/liger.wasm")}),
      ],
      compatibilityDate = ${JSON.stringify(require("workerd").compatibilityDate)},
      globalOutbound = "loopback",
    )),
    (name = "loopback", network = (allow = ["local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:${port}", http = (), service = "main")],
);
`;
    await writeFile(join(work, "workerd.capnp"), config);
    child = spawn(workerd.path!, ["serve", "workerd.capnp"], { cwd: work, stdio: ["ignore", "pipe", "pipe"] });
    let log = "";
    child.stdout!.on("data", (d) => (log += d));
    child.stderr!.on("data", (d) => (log += d));
    await waitForPort(port, child, () => log);
    const idle = residentBytes(child.pid!);

    const query = new URLSearchParams({ bundle: `${origin}/model.bundle`, prompt: PROMPT, tokens: String(TOKENS) });
    const response = await fetch(`http://127.0.0.1:${port}/?${query}`);
    const body = (await response.json()) as Run & { memoryAfterLoad: number; error?: unknown };
    expect(body.error, `workerd log:\n${log}`).toBeUndefined();
    expect(response.status).toBe(200);
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
});

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
