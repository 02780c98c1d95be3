/**
 * The WebAssembly engine, run for real (npm/wasm/liger.wasm, built by scripts/build-wasm.sh)
 * in Node: the kernels it was compiled with, the default model's Liger conversion as an
 * int8 bundle through the TypeScript API (`backend: "wasm"`), memory limits, and errors.
 */
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";

import { createEngine, type Engine } from "@liger/wasm";
import { beforeAll, describe, expect, it } from "vitest";

import {
  LigerError,
  loadModel,
  resolveBackend,
  wasmBackend,
  nativeBackend,
  type LigerModel,
} from "../ts/dist/index.js";
import { bundlePath, repoRoot } from "./helpers.js";

const MIB = 1024 * 1024;
const wasmPath = join(repoRoot, "npm", "wasm", "liger.wasm");

let model: LigerModel;
let bundle: Uint8Array;
beforeAll(async () => {
  bundle = await readFile(bundlePath("int8"));
  model = await loadModel(bundlePath("int8"), { backend: "wasm" });
});

async function engine(maxMemoryBytes = 256 * MIB): Promise<Engine> {
  return createEngine({ source: await readFile(wasmPath), maxMemoryBytes });
}

/** `bundle` with its JSON header rewritten by `edit` (the data section kept). */
function editHeader(bytes: Uint8Array, edit: (header: Record<string, any>) => void): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const h = Number(view.getBigUint64(16, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(24, 24 + h)));
  const dataStart = Math.ceil((24 + h) / 64) * 64;
  edit(header);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const start = Math.ceil((24 + json.length) / 64) * 64;
  const out = new Uint8Array(start + bytes.length - dataStart);
  out.set(bytes.subarray(0, 16));
  new DataView(out.buffer).setBigUint64(16, BigInt(json.length), true);
  out.set(json, 24);
  out.set(bytes.subarray(dataStart), start);
  return out;
}

async function expectLigerError(promise: Promise<unknown> | (() => unknown), code: string): Promise<LigerError> {
  let caught: unknown;
  try {
    await (typeof promise === "function" ? promise() : promise);
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected a LigerError ${code}`).toBeInstanceOf(LigerError);
  expect((caught as LigerError).code).toBe(code);
  return caught as LigerError;
}

describe("the wasm module", () => {
  it("uses SIMD128 dot products that match float64 for every storage type", async () => {
    const { kernel, errors } = (await engine()).selfTest(Date.now() % 100000);
    console.log(`wasm dot kernel ${kernel}; max relative errors`, errors);
    expect(kernel).toBe("Simd128");
    expect(Object.keys(errors)).toContain("I8_ROW");
    for (const [ty, err] of Object.entries(errors)) expect(err as number, ty).toBeLessThan(1e-4);
  });

  it("enforces its memory maximum: a model past it fails as OUT_OF_MEMORY, not a trap", async () => {
    const e = await engine(64 * MIB);
    expect(e.maxMemoryBytes).toBe(64 * MIB);
    expect(() => e.loadBundle(bundle)).toThrow(expect.objectContaining({ code: "OUT_OF_MEMORY" }));
    await expect(
      e.loadBundleStream(Readable.toWeb(createReadStream(bundlePath("int8"))) as ReadableStream<Uint8Array>),
    ).rejects.toMatchObject({ code: "OUT_OF_MEMORY" });
    expect(e.memoryBytes()).toBeLessThanOrEqual(64 * MIB);
    // The engine did not stop: it still runs.
    expect(e.selfTest(1).kernel).toBe("Simd128");
  });

  it("gives each engine its own instance and memory; a freed model lives on while it generates", async () => {
    const [a, b] = await Promise.all([engine(), engine(128 * MIB)]);
    const before = b.memoryBytes();
    const m = a.loadBundle(bundle);
    expect(a.memoryBytes()).toBeGreaterThan(128 * MIB);
    expect(b.memoryBytes()).toBe(before);
    const generation = m.startGeneration(m.encode("The capital of France is"), { maxTokens: 3, temperature: 0 });
    m.free();
    let n = 0;
    while (generation.step() !== null) n += 1;
    expect(n).toBe(3);
    expect(generation.result?.finishReason).toBe("length");
  });
});

describe("the default model's Liger conversion, int8, in wasm", () => {
  it("loads as a bundle with the Liger attention and int8 weights", () => {
    const info = model.info as any;
    expect(info.format).toBe("bundle");
    expect(info.quantization).toBe("int8");
    expect(info.numLayers).toBe(30);
    expect(info.tensorTypes.I8_ROW).toBe(211);
    expect(info.liger.mixer).toBe("gla");
    expect(info.liger.softmaxLayers).toEqual([]);
  });

  it("tokenizes like the GGUF's tokenizer and round-trips text", () => {
    const text = "The quick brown fox jumps over the lazy dog. Ünïcödé ✓";
    const ids = model.tokenize(text);
    expect(ids.length).toBeGreaterThan(10);
    expect(model.detokenize(ids)).toBe(text);
    expect(model.applyChatTemplate([{ role: "user", content: "Hi" }])).toContain("<|im_start|>user\nHi<|im_end|>");
  });

  it("streams the tokens of a greedy generation, the same as its final result", async () => {
    const gen = model.generate("The capital of France is", { maxTokens: 12, temperature: 0 });
    const streamed: number[] = [];
    let text = "";
    for await (const t of gen) {
      streamed.push(t.id);
      text += t.text;
    }
    const result = await gen.result;
    console.log(
      `wasm int8 greedy: ${JSON.stringify(result.text)} (prefill ${result.prefillMs.toFixed(0)} ms, ${(result.tokens.length / (result.decodeMs / 1000)).toFixed(1)} tok/s)`,
    );
    expect(result.tokens).toEqual(streamed);
    expect(result.text).toBe(text);
    expect(result.tokens.length).toBeGreaterThan(0);
    // Greedy decoding is deterministic, and its first token is the argmax of the logits.
    const again = await model.generate("The capital of France is", { maxTokens: 12, temperature: 0 }).result;
    expect(again.tokens).toEqual(result.tokens);
    const logits = await model.logits(model.tokenize("The capital of France is"));
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    expect(result.tokens[0]).toBe(best);
  });

  it("loads a bundle from an http URL by streaming it into the engine, the same model as from the file", async () => {
    const { createServer } = await import("node:http");
    const server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": bundle.length });
      res.end(bundle);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as { port: number };
      const stages: string[] = [];
      const remote = await loadModel(`http://127.0.0.1:${port}/model.bundle`, {
        backend: "wasm",
        onProgress: (p) => stages.push(p.stage),
      });
      expect(stages).toContain("download");
      const prompt = "The capital of France is";
      const want = await model.generate(prompt, { maxTokens: 8, temperature: 0 }).result;
      const got = await remote.generate(prompt, { maxTokens: 8, temperature: 0 }).result;
      expect(got.tokens).toEqual(want.tokens);
    } finally {
      server.close();
    }
  });

  it("stays within 256 MiB and its memory does not grow with the generation's length", async () => {
    const e = await engine(256 * MIB);
    const m = e.loadBundle(bundle);
    const afterLoad = e.memoryBytes();
    // A prompt longer than the sliding window (65 keys), so the window's ring buffer is full
    // from the start and the state is at its (constant) size.
    const prompt = m.encode(
      "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker. ".repeat(4),
    );
    expect(prompt.length).toBeGreaterThan(65);
    const gen = m.startGeneration(prompt, { maxTokens: 256, ignoreEos: true, temperature: 0.8, seed: 3 });
    const at: Record<number, { memory: number; state: number }> = {};
    let n = 0;
    while (gen.step() !== null) {
      n += 1;
      if (n === 32 || n === 256) at[n] = { memory: e.memoryBytes(), state: gen.stateBytes() };
    }
    console.log(
      `wasm memory: ${afterLoad / MIB} MiB after load, ${at[32].memory / MIB} MiB after 32 tokens, ${at[256].memory / MIB} MiB after 256; state ${at[32].state} / ${at[256].state} bytes`,
    );
    expect(n).toBe(256);
    expect(at[256].memory).toBe(at[32].memory);
    expect(at[256].state).toBe(at[32].state);
    expect(at[32].state).toBe((m.info as any).liger.stateBytesPerSequence);
    expect(at[256].memory).toBeLessThanOrEqual(256 * MIB);
  });
});

describe("bad input gives a LigerError with a code", () => {
  it("a truncated bundle", async () => {
    const e = await engine();
    for (const cut of [10, 1000, bundle.length - 1]) {
      expect(() => e.loadBundle(bundle.subarray(0, cut))).toThrow(expect.objectContaining({ code: "INVALID_FILE" }));
    }
    const err = await expectLigerError(wasmBackend().loadModel("/dev/null"), "INVALID_FILE");
    expect(err.message).toMatch(/too short/);
  });

  it("a foreign file (a GGUF model, random bytes)", async () => {
    const e = await engine();
    const gguf = new Uint8Array(4096);
    gguf.set(new TextEncoder().encode("GGUF"));
    expect(() => e.loadBundle(gguf)).toThrow(
      expect.objectContaining({ code: "INVALID_FILE", message: expect.stringMatching(/not a liger bundle/) }),
    );
    const noise = crypto.getRandomValues(new Uint8Array(65536));
    expect(() => e.loadBundle(noise)).toThrow(expect.objectContaining({ code: "INVALID_FILE" }));
  });

  it("a model too big for the wasm memory", async () => {
    const err = await expectLigerError(
      loadModel(bundlePath("int8"), { backend: wasmBackend({ maxMemoryBytes: 96 * MIB }) }),
      "OUT_OF_MEMORY",
    );
    expect(err.message).toMatch(/MiB/);
  });

  it("a quantisation this build does not know", async () => {
    const e = await engine();
    const edited = editHeader(bundle, (h) => (h.tensors[0].dtype = "Q3_HYPER"));
    expect(() => e.loadBundle(edited)).toThrow(
      expect.objectContaining({ code: "UNSUPPORTED_TENSOR_TYPE", message: expect.stringMatching(/Q3_HYPER/) }),
    );
  });

  it("token ids outside the vocabulary, an unknown backend", async () => {
    await expectLigerError(
      () => model.generate([{ role: "user", content: "x" }], { maxTokens: -1 }),
      "INVALID_ARGUMENT",
    );
    await expectLigerError(model.logits([1, 2, 999999]), "INVALID_ARGUMENT");
    await expectLigerError(() => resolveBackend("gpu" as any), "INVALID_ARGUMENT");
    expect(resolveBackend("wasm").name).toBe("wasm");
    expect(resolveBackend("native")).toBe(nativeBackend);
  });
});

describe("backend selection", () => {
  it("loadModel picks the wasm engine when the native addon cannot be loaded", async () => {
    const { execFileSync } = await import("node:child_process");
    const script = `import("./ts/dist/index.js").then(async (m) => { const model = await m.loadModel(${JSON.stringify(bundlePath("int8"))}); console.log(model.info.format); })`;
    const out = execFileSync(process.execPath, ["-e", script], {
      cwd: repoRoot,
      env: { ...process.env, LIGER_NATIVE_ADDON: "/nonexistent/liger.node" },
      encoding: "utf8",
    });
    expect(out.trim()).toBe("bundle");
  });
});
