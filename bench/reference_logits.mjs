// Full-sequence logits of a model as this library computes them, for bench/reference_check.py.
//
//   node bench/reference_logits.mjs <model dir> <out.json> ["prompt text"]
//
// Writes {"tokens": [...], "logits": [[vocab floats] per position]}: position i holds the logits
// after tokens[0..=i] (each computed as the last logits of that prefix). Needs `npm run build`.
import { writeFileSync } from "node:fs";

import { loadModel } from "../ts/dist/index.js";

const [model, out, prompt = "The three primary colors are red, yellow and blue. Mixing two of them gives"] =
  process.argv.slice(2);
if (!model || !out) {
  console.error("usage: node bench/reference_logits.mjs <model dir> <out.json> [prompt]");
  process.exit(2);
}
const m = await loadModel(model);
const tokens = m.tokenize(prompt);
const logits = [];
for (let i = 1; i <= tokens.length; i++) logits.push(Array.from(await m.logits(tokens.slice(0, i))));
writeFileSync(out, JSON.stringify({ model, tokens, logits }));
console.log(JSON.stringify({ out, tokens: tokens.length, vocab: logits[0].length }));
