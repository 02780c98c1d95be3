/**
 * The base model against llama.cpp (through node-llama-cpp, CPU build) on the same GGUF:
 * for several prompts, the next-token distribution after the prompt must agree.
 */
import { getLlama, type Llama, type LlamaContext, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { LigerModel } from "../ts/dist/index.js";
import { logSoftmax, modelPath, sharedModel, topK } from "./helpers.js";

/**
 * Largest allowed |log p_ours - log p_llama.cpp| over llama.cpp's 10 most likely tokens.
 * TOLERANCE_MEASURED_BELOW
 */
const LOGPROB_TOLERANCE = 0.1;

const PROMPTS = [
  "The capital of France is",
  "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
  "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
  "1, 1, 2, 3, 5, 8, 13,",
  // A longer prompt, so positions far from 0 (RoPE, attention over many keys) are covered.
  "In the early days of computing, machines filled entire rooms and consumed enormous amounts of power. " +
    "Programmers wrote instructions on punched cards, waited hours for results, and debugged by reading " +
    "long printouts line by line. Over the following decades transistors replaced vacuum tubes, integrated " +
    "circuits replaced transistors, and the personal computer brought this power into ordinary homes. " +
    "Today a phone in a pocket is millions of times faster than those first machines, and the story of how",
];

let ours: LigerModel;
let llama: Llama;
let theirs: LlamaModel;
let context: LlamaContext;

beforeAll(async () => {
  ours = await sharedModel();
  llama = await getLlama({ gpu: false, logLevel: "error" });
  theirs = await llama.loadModel({ modelPath: modelPath() });
  // f32 K/V cache and no flash attention: keep llama.cpp's own rounding as small as it goes.
  context = await theirs.createContext({
    contextSize: 1024,
    threads: 2,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  });
});

afterAll(async () => {
  await context?.dispose();
  await theirs?.dispose();
  await llama?.dispose();
});

/** llama.cpp's raw logits after `tokens`, as a dense array. */
async function llamaLogits(tokens: number[]): Promise<Float64Array> {
  const sequence = context.getSequence();
  try {
    const input = tokens.map((t, i) =>
      i === tokens.length - 1 ? ([t, { generateNext: { logits: true } }] as const) : t,
    );
    const output = await sequence.controlledEvaluate(input as never);
    const logits = output[tokens.length - 1]?.next.logits;
    if (!logits) throw new Error("node-llama-cpp returned no logits");
    const dense = new Float64Array(theirs.fileInsights.vocabularySize ?? logits.size).fill(-Infinity);
    for (const [token, value] of logits) dense[token as number] = value;
    return dense;
  } finally {
    sequence.dispose();
  }
}

describe("next-token distribution vs llama.cpp", () => {
  const worst = { diff: 0, prompt: "" };

  it.each(PROMPTS.map((p) => [p.slice(0, 40).replace(/\n/g, "\\n"), p]))("%s...", async (_label, prompt) => {
    const tokens = theirs.tokenize(prompt, true).map(Number);
    const reference = logSoftmax(await llamaLogits(tokens));
    const mine = logSoftmax(await ours.logits(tokens));
    expect(mine.length).toBe(reference.length);

    const referenceTop = topK(reference, 10);
    expect(topK(mine, 1)[0]).toBe(referenceTop[0]);
    let maxDiff = 0;
    for (const token of referenceTop) maxDiff = Math.max(maxDiff, Math.abs(mine[token] - reference[token]));
    if (maxDiff > worst.diff) Object.assign(worst, { diff: maxDiff, prompt });
    console.log(`${tokens.length} tokens: max |dlogp| over llama.cpp's top 10 = ${maxDiff.toExponential(3)}`);
    expect(maxDiff).toBeLessThan(LOGPROB_TOLERANCE);
  });
});
