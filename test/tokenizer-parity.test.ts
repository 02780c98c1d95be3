/** Our tokenizer against llama.cpp's (node-llama-cpp) on the same GGUF vocabulary. */
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { LigerModel } from "../ts/dist/index.js";
import { tokenizerCorpus } from "./fixtures/tokenizer-corpus.js";
import { modelPath, sharedModel } from "./helpers.js";

let ours: LigerModel;
let llama: Llama;
let theirs: LlamaModel;

beforeAll(async () => {
  ours = await sharedModel();
  llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error });
  theirs = await llama.loadModel({ modelPath: modelPath() });
});

afterAll(async () => {
  await theirs?.dispose();
  await llama?.dispose();
});

// A fresh corpus every run (the seed is printed so a failure can be replayed).
const seed = Number(process.env.LIGER_CORPUS_SEED ?? Math.floor(Math.random() * 2 ** 31));

describe.each([false, true])("tokenize(special: %s) matches llama.cpp", (special) => {
  it(`on 3000 generated texts (seed ${seed})`, () => {
    const corpus = tokenizerCorpus(seed, 3000);
    expect(corpus.length).toBe(3000);
    const mismatches: string[] = [];
    for (const text of corpus) {
      const expected = theirs.tokenize(text, special).map(Number);
      const actual = ours.tokenize(text, { addBos: false, special });
      if (actual.length !== expected.length || actual.some((t, i) => t !== expected[i])) {
        mismatches.push(
          `${JSON.stringify(text)}\n    ours  ${JSON.stringify(actual)}\n    llama ${JSON.stringify(expected)}`,
        );
      }
    }
    expect(mismatches.length, `${mismatches.length} mismatches, e.g.\n  ${mismatches.slice(0, 5).join("\n  ")}`).toBe(
      0,
    );
  });

  it("decodes every text of the corpus back to itself", () => {
    for (const text of tokenizerCorpus(seed + 1, 300)) {
      expect(ours.detokenize(ours.tokenize(text, { addBos: false, special }))).toBe(text);
    }
  });
});
