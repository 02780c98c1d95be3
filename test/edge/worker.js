// A module worker for workerd, run by test/edge.test.ts: the wasm module is one of the worker's
// modules (workerd refuses WebAssembly.compile of bytes at run time), the bundle is fetched from the URL in the
// request's `bundle` parameter, and the greedy generation comes back as JSON.
import { createEngine, fetchBundle } from "../../npm/wasm/index.js";
import module from "../../npm/wasm/liger.wasm";

export default {
  async fetch(request) {
    const params = new URL(request.url).searchParams;
    try {
      const engine = await createEngine({ source: module });
      const model = engine.loadBundle(await fetchBundle(params.get("bundle")));
      const memoryAfterLoad = engine.memoryBytes();
      const ids = model.encode(params.get("prompt"));
      const generation = model.startGeneration(ids, { maxTokens: Number(params.get("tokens")), temperature: 0 });
      while (generation.step() !== null);
      const { tokens, text } = generation.result;
      return Response.json({ tokens, text, memoryAfterLoad, memoryBytes: engine.memoryBytes() });
    } catch (err) {
      return Response.json(
        { error: { name: err.name, code: err.code ?? null, message: err.message } },
        { status: 500 },
      );
    }
  },
};
