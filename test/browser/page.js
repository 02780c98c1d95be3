// Loads the Liger bundle named in the page's query (?bundle=URL&prompt=...&tokens=N) with the
// wasm engine and streams the generated tokens into #output, one DOM update per token.
// `window.ligerRun` records what happened, for the test that drives this page.
import { createEngine, fetchBundle } from "/npm/wasm/index.js";

const params = new URLSearchParams(location.search);
const status = document.getElementById("status");
const output = document.getElementById("output");
const run = (window.ligerRun = { updates: [], done: false, error: null });

async function main() {
  const prompt = params.get("prompt") ?? "The capital of France is";
  const maxTokens = Number(params.get("tokens") ?? 16);
  document.getElementById("prompt").textContent = prompt;
  status.textContent = "fetching the bundle";
  const bundle = await fetchBundle(params.get("bundle"), (f) => (status.textContent = `fetching the bundle: ${Math.round(f * 100)}%`));
  const engine = await createEngine();
  status.textContent = "loading";
  const model = engine.loadBundle(bundle);
  run.info = { quantization: model.info.quantization, numLayers: model.info.numLayers, memoryBytes: engine.memoryBytes() };
  status.textContent = "generating";
  const generation = model.startGeneration(model.encode(prompt), { maxTokens, temperature: 0 });
  for (let next = generation.step(); next !== null; next = generation.step()) {
    output.textContent += next.text;
    run.updates.push({ id: next.id, at: performance.now(), shown: output.textContent });
    // Hand control back so the page renders each token as it arrives.
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  run.result = generation.result;
  run.memoryBytes = engine.memoryBytes();
  status.textContent = "done";
  run.done = true;
}

main().catch((err) => {
  run.error = { name: err.name, code: err.code ?? null, message: err.message };
  status.textContent = `error: ${err.message}`;
  run.done = true;
});
