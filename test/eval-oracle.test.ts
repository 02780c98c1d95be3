/**
 * Log-likelihoods of (context, continuation) pairs against llama.cpp (node-llama-cpp, CPU
 * build) on the same GGUF and the same tokens: the sum of the continuation's log-probabilities
 * must agree, and so must the flag "greedy decoding reproduces the continuation".
 *
 * Pairs: rows of the real task files (ARC-Easy, ARC-Challenge, LAMBADA, WikiText-2) rendered as
 * the tasks render them, plus hand-written ones for the tokenization edge cases (trailing space
 * moved to the continuation, an empty context, special tokens in text, a multi-token code tail).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { getLlama, LlamaLogLevel, type Llama, type LlamaContext, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { LigerModel, LoglikelihoodRequest, LoglikelihoodScore } from "../ts/dist/index.js";
import { dataDir, logSoftmax, modelPath, sharedModel } from "./helpers.js";

/**
 * Tolerances, measured on these 23 pairs (SmolLM2-135M Q4_1; llama.cpp with an f32 K/V cache,
 * 2026-11-22): the sums differ by at most 0.51 (a 3-token ARC choice; median 0.09), a single
 * token by at most 0.26 (the 17-token code continuation scored token by token); all 23 greedy
 * flags agree. oracle.test.ts explains the source: both engines read the same Q4_1 weights,
 * but llama.cpp rounds activations to 8 bits before every quantized product, which alone moves
 * log-probabilities by a few tenths; its own f16 vs f32 cache spread reaches 0.40. The
 * per-token tolerance is the one oracle.test.ts uses (0.75); a sum of n tokens may drift by at
 * most 0.75 * sqrt(n) (independent per-token rounding).
 */
const TOKEN_TOLERANCE = 0.75;
const sumTolerance = (tokens: number) => TOKEN_TOLERANCE * Math.sqrt(tokens);
/** A greedy flag may differ only where llama.cpp's own top-2 margin is inside rounding noise. */
const TIE_MARGIN = 0.05;

function jsonl(path: string): Record<string, unknown>[] {
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((l) => l.trim().length > 0)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** ARC rows as the task renders them: "Question: {stem}\nAnswer:" + " {choice}" per choice. */
function arcPairs(file: string, rows: number[]): LoglikelihoodRequest[] {
  const all = jsonl(file);
  return rows.flatMap((row) => {
    const q = all[row].question as { stem: string; choices: { text: string }[] };
    return q.choices.map((c) => ({ context: `Question: ${q.stem}\nAnswer:`, continuation: ` ${c.text}` }));
  });
}

/** LAMBADA rows: the text before the last space, then " " + the last word. */
function lambadaPairs(file: string, rows: number[]): LoglikelihoodRequest[] {
  const all = jsonl(file);
  return rows.map((row) => {
    const text = all[row].text as string;
    const cut = text.lastIndexOf(" ");
    return { context: text.slice(0, cut), continuation: ` ${text.slice(cut + 1)}` };
  });
}

/** WikiText: the first words of a paragraph as context, the next few as the continuation. */
function wikitextPairs(file: string): LoglikelihoodRequest[] {
  const paragraphs = readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim().split(" ").length > 60);
  return paragraphs.slice(0, 2).map((p) => {
    const words = p.trim().split(" ");
    return { context: words.slice(0, 40).join(" "), continuation: ` ${words.slice(40, 46).join(" ")}` };
  });
}

const HAND_WRITTEN: LoglikelihoodRequest[] = [
  { context: "The capital of France is", continuation: " Paris" },
  // The trailing space moves to the continuation (lm-eval's rule).
  { context: "The capital of France is ", continuation: "Paris" },
  // An empty context: the model reads only the prefix token.
  { context: "", continuation: "Hello, world." },
  { context: "1, 1, 2, 3, 5, 8, 13,", continuation: " 21, 34" },
  {
    context: "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    continuation: "100 degrees Celsius",
  },
  {
    context: "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    continuation: " fibonacci(n - 1) + fibonacci(n - 2)",
  },
];

/** The ARC questions of the set, as [first pair, number of choices]: their answers must agree. */
const ARC_QUESTIONS: [number, number][] = [];

function allPairs(): LoglikelihoodRequest[] {
  const data = dataDir();
  const arc = [
    ...arcPairs(join(data, "arc_easy", "ARC-Easy-Test.jsonl"), [0]),
    ...arcPairs(join(data, "arc_easy", "ARC-Easy-Test.jsonl"), [1]),
    ...arcPairs(join(data, "arc_challenge", "ARC-Challenge-Test.jsonl"), [0]),
  ];
  ARC_QUESTIONS.length = 0;
  for (let start = 0; start < arc.length;) {
    const n = arc.filter((p) => p.context === arc[start].context).length;
    ARC_QUESTIONS.push([start, n]);
    start += n;
  }
  return [
    ...arc,
    ...lambadaPairs(join(data, "lambada_openai", "lambada_test.jsonl"), [0, 1, 2]),
    ...wikitextPairs(join(data, "wikitext2_raw", "wiki.test.raw")),
    ...HAND_WRITTEN,
  ];
}

interface LlamaScore {
  /** Per continuation token: llama.cpp's log-probability of it. */
  tokenLogprobs: number[];
  isGreedy: boolean;
  /** Smallest gap between the top two log-probabilities at any continuation position. */
  minTopMargin: number;
}

let ours: LigerModel;
let llama: Llama;
let theirs: LlamaModel;
let context: LlamaContext;

beforeAll(async () => {
  ours = await sharedModel();
  llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
  theirs = await llama.loadModel({ modelPath: modelPath() });
  // llama.cpp's most precise setting: f32 K/V cache, no flash attention.
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

/** llama.cpp's scores of `continuation` after `contextTokens`: the same input our model reads. */
async function llamaScore(contextTokens: number[], continuation: number[]): Promise<LlamaScore> {
  const whole = [...contextTokens, ...continuation];
  const input = whole.slice(0, -1);
  const firstRow = input.length - continuation.length;
  const sequence = context.getSequence();
  try {
    const items = input.map((t, i) => (i >= firstRow ? ([t, { generateNext: { logits: true } }] as const) : t));
    const output = await sequence.controlledEvaluate(items as never);
    const score: LlamaScore = { tokenLogprobs: [], isGreedy: true, minTopMargin: Infinity };
    continuation.forEach((target, j) => {
      const logits = output[firstRow + j]?.next.logits;
      if (!logits) throw new Error(`node-llama-cpp returned no logits at position ${firstRow + j}`);
      const dense = new Float64Array(ours.info.vocabSize).fill(-Infinity);
      for (const [token, value] of logits) dense[token as number] = value;
      const logp = logSoftmax(dense);
      const [first, second] = [...logp].map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0]);
      score.tokenLogprobs.push(logp[target]);
      score.isGreedy &&= first[1] === target;
      score.minTopMargin = Math.min(score.minTopMargin, first[0] - second[0]);
    });
    return score;
  } finally {
    await sequence.clearHistory();
    sequence.dispose();
  }
}

describe("loglikelihood vs llama.cpp", () => {
  it("sums of continuation log-probabilities and greedy flags agree on task rows and edge cases", async () => {
    const pairs = allPairs();
    expect(pairs.length).toBeGreaterThanOrEqual(20);
    const { results, stats } = await ours.loglikelihood(pairs);
    expect(results.length).toBe(pairs.length);
    expect(stats.requests).toBe(pairs.length);

    let worstSum = 0;
    let greedyAgree = 0;
    const llamaSums: number[] = [];
    const lines: string[] = [];
    for (const [i, mine] of results.entries()) {
      const theirsScore = await llamaScore(mine.contextTokens, mine.continuationTokens);
      const n = mine.continuationTokens.length;
      const sum = theirsScore.tokenLogprobs.reduce((a, b) => a + b, 0);
      llamaSums.push(sum);
      const sumDiff = Math.abs(sum - mine.logprob);
      worstSum = Math.max(worstSum, sumDiff);
      lines.push(
        `${String(i).padStart(2)} n=${String(n).padStart(2)} ours ${mine.logprob.toFixed(3).padStart(8)} llama.cpp ${sum.toFixed(3).padStart(8)} ` +
          `|d| ${sumDiff.toFixed(3)} greedy ${mine.isGreedy}/${theirsScore.isGreedy} margin ${theirsScore.minTopMargin.toFixed(3)} ${JSON.stringify(pairs[i].continuation.slice(0, 30))}`,
      );
      expect(Number.isFinite(mine.logprob) && mine.logprob < 0).toBe(true);
      expect(mine.truncated).toBe(false);
      expect(sumDiff).toBeLessThan(sumTolerance(n));
      if (mine.isGreedy === theirsScore.isGreedy) greedyAgree++;
      else
        expect(theirsScore.minTopMargin, `greedy flags differ on pair ${i} away from a tie`).toBeLessThan(TIE_MARGIN);
    }
    console.log(
      `${lines.join("\n")}\nworst |sum difference| ${worstSum.toFixed(3)}; greedy flags agree on ${greedyAgree}/${results.length}`,
    );
    // The multiple-choice answer (argmax over a question's choices) is the same, unless the two
    // choices are a tie within the engines' rounding: together, the two engines' gaps between
    // them are inside the sums' tolerance. At most one such tie in this set.
    const argmax = (v: number[]) => v.indexOf(Math.max(...v));
    let answerTies = 0;
    for (const [start, n] of ARC_QUESTIONS) {
      const mine = results.slice(start, start + n).map((r) => r.logprob);
      const theirs = llamaSums.slice(start, start + n);
      const [a, b] = [argmax(mine), argmax(theirs)];
      if (a === b) continue;
      const gaps = mine[a] - mine[b] + (theirs[b] - theirs[a]);
      const tolerance =
        sumTolerance(results[start + a].continuationTokens.length) +
        sumTolerance(results[start + b].continuationTokens.length);
      console.log(
        `ARC question at pair ${start}: answers ${a} and ${b}, gaps together ${gaps.toFixed(3)} (tie below ${tolerance.toFixed(3)})`,
      );
      expect(gaps, `ARC question at pair ${start}: the answers differ away from a tie`).toBeLessThan(tolerance);
      answerTies++;
    }
    expect(answerTies).toBeLessThanOrEqual(1);
    // Every greedy flag agrees unless a tie explains it; at most one such tie in this set.
    expect(greedyAgree).toBeGreaterThanOrEqual(results.length - 1);
  });

  it("per-token agreement: one continuation scored token by token", async () => {
    const pair: LoglikelihoodRequest = HAND_WRITTEN[5];
    const [mine] = (await ours.loglikelihood([pair])).results;
    const theirsScore = await llamaScore(mine.contextTokens, mine.continuationTokens);
    // Our per-token log-probabilities: score each growing prefix of the continuation.
    const tokens = mine.continuationTokens;
    const prefixes = tokens.map((_, j) => ({
      context: ours.detokenize([...mine.contextTokens, ...tokens.slice(0, j)]),
      continuation: ours.detokenize(tokens.slice(j, j + 1)),
    }));
    const perToken = (await ours.loglikelihood(prefixes)).results;
    let worst = 0;
    let compared = 0;
    perToken.forEach((r: LoglikelihoodScore, j: number) => {
      // Re-tokenizing a decoded prefix can merge differently; compare only where it did not.
      if (r.continuationTokens.length === 1 && r.continuationTokens[0] === tokens[j]) {
        worst = Math.max(worst, Math.abs(r.logprob - theirsScore.tokenLogprobs[j]));
        compared++;
      }
    });
    console.log(`per-token max |dlogp| over ${compared} of ${tokens.length} tokens: ${worst.toFixed(3)}`);
    expect(compared).toBeGreaterThanOrEqual(tokens.length / 2);
    expect(worst).toBeLessThan(TOKEN_TOLERANCE);
  });
});

describe("loglikelihood: bad input", () => {
  it("rejects an empty list, a malformed request and an empty continuation with typed errors", async () => {
    await expect(ours.loglikelihood([])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(ours.loglikelihood([{ context: "a" } as unknown as LoglikelihoodRequest])).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringContaining("request 0"),
    });
    await expect(ours.loglikelihood([{ context: "a", continuation: "" }])).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await expect(ours.loglikelihood([{ context: "a", continuation: "b" }], { maxLength: 0 })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
  });

  it("cuts an input longer than maxLength from the left and says so", async () => {
    const context = "one two three four five six seven eight nine ten eleven twelve";
    const { results, stats } = await ours.loglikelihood(
      [
        { context, continuation: " thirteen" },
        { context: "one", continuation: " two" },
      ],
      { maxLength: 6 },
    );
    expect(results.map((r) => r.truncated)).toEqual([true, false]);
    expect(stats.truncated).toBe(1);
    // Cut from the left: the same score as the last 6 input tokens scored alone.
    const [cut] = results;
    const whole = [...cut.contextTokens, ...cut.continuationTokens];
    const kept = whole.slice(whole.length - 7, -cut.continuationTokens.length);
    const alone = await ours.loglikelihood([{ context: ours.detokenize(kept), continuation: " thirteen" }]);
    expect(alone.results[0].contextTokens).toEqual(kept);
    expect(Math.abs(alone.results[0].logprob - cut.logprob)).toBeLessThan(1e-5);
  });
});
