// A module worker for workerd, run by test/edge.test.ts: the wasm module is one of the worker's
// modules (workerd refuses WebAssembly.compile of bytes at run time), the bundle is fetched from the URL in the
// request's `bundle` parameter, and the greedy generation comes back as JSON. With `stream=1`
// the bundle streams straight into wasm memory (`engine.fetchBundle`), and `maxMemory` sets
// the engine's wasm memory maximum in bytes.
import { createEngine, fetchBundle } from "../../npm/wasm/index.js";
import module from "../../npm/wasm/liger.wasm";

export default {
  async fetch(request) {
    const params = new URL(request.url).searchParams;
    try {
      const maxMemoryBytes = params.has("maxMemory") ? Number(params.get("maxMemory")) : undefined;
      const engine = await createEngine({ source: module, maxMemoryBytes });
      const url = params.get("bundle");
      const model =
        params.get("stream") === "1" ? await loadStreamed(engine, url) : engine.loadBundle(await fetchBundle(url));
      const memoryAfterLoad = engine.memoryBytes();
      const ids = model.encode(params.get("prompt"));
      const generation = model.startGeneration(ids, { maxTokens: Number(params.get("tokens")), temperature: 0 });
      while (generation.step() !== null);
      const { tokens, text } = generation.result;
      globalThis.gc?.();
      return Response.json({ tokens, text, memoryAfterLoad, memoryBytes: engine.memoryBytes() });
    } catch (err) {
      return Response.json(
        { error: { name: err.name, code: err.code ?? null, message: err.message } },
        { status: 500 },
      );
    }
  },
};

/**
 * `engine.fetchBundle(url)`, but where the runtime exposes `gc` (workerd with V8's
 * --expose-gc, as the test runs it) the chunks already copied into wasm memory are collected
 * as loading goes, as a Worker's heap limit would make V8 do: the process's peak memory then
 * shows what the isolate needs rather than garbage nothing asked to collect.
 */
async function loadStreamed(engine, url) {
  if (typeof globalThis.gc !== "function") return engine.fetchBundle(url);
  const response = await fetch(url);
  if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status}`);
  let chunks = 0;
  const collecting = new TransformStream({
    transform(chunk, controller) {
      controller.enqueue(chunk);
      if (++chunks % 64 === 0) globalThis.gc();
    },
  });
  return engine.loadBundleStream(response.body.pipeThrough(collecting));
}
