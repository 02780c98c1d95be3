// Run by test/edge.test.ts in Deno: imports the wasm package over HTTP from the test's local
// server (the module fetches liger.wasm next to itself), fetches the bundle, generates greedily
// and prints one line of JSON (with the process's resident memory). Arguments: the server's
// origin, the prompt, the token count.
const [origin, prompt, tokens] = Deno.args;
const { createEngine, fetchBundle } = await import(`${origin}/npm/wasm/index.js`);
const engine = await createEngine();
const model = engine.loadBundle(await fetchBundle(`${origin}/model.bundle`));
const generation = model.startGeneration(model.encode(prompt), { maxTokens: Number(tokens), temperature: 0 });
while (generation.step() !== null);
console.log(
  JSON.stringify({
    tokens: generation.result.tokens,
    text: generation.result.text,
    memoryBytes: engine.memoryBytes(),
    rss: Deno.memoryUsage().rss,
  }),
);
