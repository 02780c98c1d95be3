/**
 * The base model against llama.cpp (through node-llama-cpp, CPU build) on the same GGUF:
 * for several prompts, the next-token distribution after the prompt must agree.
 */
import { getLlama, LlamaLogLevel, type Llama, type LlamaContext, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { LigerModel } from "../ts/dist/index.js";
import { logSoftmax, modelPath, sharedModel, topK } from "./helpers.js";

/**
 * Tolerances, measured (SmolLM2-135M Q4_1, CPU builds):
 * - ours vs llama.cpp, |log p| difference over llama.cpp's 10 most likely tokens: at most 0.38
 *   on these prompts, 0.51 over 16 random texts of the tokenizer corpus; KL(llama.cpp || ours)
 *   at most 2.1e-2.
 * - llama.cpp against itself on the same tokens: f16 vs f32 K/V cache differs by up to 0.40,
 *   and evaluating a prompt in one batch vs token by token by up to 0.53 (its batched kernels
 *   quantize activations differently). Both run Q4_1 weights, but llama.cpp rounds the
 *   activations to 8 bits (Q8_1 blocks) before every quantized product; simulating that
 *   rounding in our model brings the first position from 0.16 down to 0.05.
 * So these log-probabilities move by a few tenths under rounding alone: the tolerance sits
 * just above llama.cpp's own spread. A wrong RoPE base (10000 instead of 100000) already
 * moves them by 0.6 after a few tokens; a wrong head layout or norm changes the top token.
 */
const LOGPROB_TOLERANCE = 0.75;
const KL_TOLERANCE = 0.05;

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
let contexts: { f32: LlamaContext; f16: LlamaContext };

beforeAll(async () => {
  ours = await sharedModel();
  llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
  theirs = await llama.loadModel({ modelPath: modelPath() });
  // The reference: f32 K/V cache and no flash attention, llama.cpp's most precise setting.
  // The f16 one only shows how much llama.cpp's own rounding moves the numbers.
  const context = (kv: "F32" | "F16") =>
    theirs.createContext({
      contextSize: 512,
      threads: 2,
      flashAttention: false,
      experimentalKvCacheKeyType: kv,
      experimentalKvCacheValueType: kv,
    });
  contexts = { f32: await context("F32"), f16: await context("F16") };
});

afterAll(async () => {
  await contexts?.f32.dispose();
  await contexts?.f16.dispose();
  await theirs?.dispose();
  await llama?.dispose();
});

/** llama.cpp's log-probabilities of the token after `tokens`. */
async function llamaLogProbs(context: LlamaContext, tokens: number[]): Promise<Float64Array> {
  const sequence = context.getSequence();
  try {
    const input = tokens.map((t, i) =>
      i === tokens.length - 1 ? ([t, { generateNext: { logits: true } }] as const) : t,
    );
    const output = await sequence.controlledEvaluate(input as never);
    const logits = output[tokens.length - 1]?.next.logits;
    if (!logits) throw new Error("node-llama-cpp returned no logits");
    const dense = new Float64Array(ours.info.vocabSize).fill(-Infinity);
    for (const [token, value] of logits) dense[token as number] = value;
    return logSoftmax(dense);
  } finally {
    await sequence.clearHistory();
    sequence.dispose();
  }
}

function maxDiffOverTop10(reference: Float64Array, other: Float64Array): number {
  let maxDiff = 0;
  for (const token of topK(reference, 10)) maxDiff = Math.max(maxDiff, Math.abs(other[token] - reference[token]));
  return maxDiff;
}

function klDivergence(p: Float64Array, q: Float64Array): number {
  let kl = 0;
  for (let i = 0; i < p.length; i++) if (p[i] > -Infinity) kl += Math.exp(p[i]) * (p[i] - q[i]);
  return kl;
}

describe("next-token distribution vs llama.cpp", () => {
  it.each(PROMPTS.map((p) => [p.slice(0, 40).replace(/\n/g, "\\n"), p]))("%s...", async (_label, prompt) => {
    const tokens = theirs.tokenize(prompt, true).map(Number);
    const reference = await llamaLogProbs(contexts.f32, tokens);
    const llamaF16 = await llamaLogProbs(contexts.f16, tokens);
    const mine = logSoftmax(await ours.logits(tokens));
    expect(mine.length).toBe(reference.length);

    const diff = maxDiffOverTop10(reference, mine);
    const kl = klDivergence(reference, mine);
    console.log(
      `${tokens.length} tokens: ours vs llama.cpp max |dlogp| (top 10) ${diff.toFixed(3)}, KL ${kl.toExponential(2)}; ` +
        `llama.cpp f16 vs f32 cache ${maxDiffOverTop10(reference, llamaF16).toFixed(3)}`,
    );
    expect(topK(mine, 1)[0]).toBe(topK(reference, 1)[0]);
    expect(diff).toBeLessThan(LOGPROB_TOLERANCE);
    expect(kl).toBeLessThan(KL_TOLERANCE);
  });
});
