/** The TypeScript API on the default model: info, tokenizer, chat template, generation. */
import { basename } from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";

import { loadModel, type LigerModel, type ProgressEvent } from "../ts/dist/index.js";
import { modelPath, sharedModel } from "./helpers.js";

let model: LigerModel;
beforeAll(async () => {
  model = await sharedModel();
});

/** Bytes per block and elements per block of the GGUF types the default model uses. */
const GGML_TYPES: Record<number, { name: string; blockElems: number; blockBytes: number }> = {
  0: { name: "F32", blockElems: 1, blockBytes: 4 },
  3: { name: "Q4_1", blockElems: 32, blockBytes: 20 },
  8: { name: "Q8_0", blockElems: 32, blockBytes: 34 },
};

describe("loadModel and info", () => {
  it("reports the architecture of SmolLM2-135M", () => {
    const info = model.info;
    expect(info.architecture).toBe("llama");
    // The file's name, not the converter's run label in general.name.
    expect(info.name).toBe(basename(modelPath(), ".gguf"));
    expect(info.format).toBe("gguf");
    expect(info.numLayers).toBe(30);
    expect(info.hiddenSize).toBe(576);
    expect(info.numHeads).toBe(9);
    expect(info.numKvHeads).toBe(3);
    expect(info.headDim).toBe(64);
    expect(info.vocabSize).toBe(49152);
    expect(info.contextLength).toBe(8192);
    expect(info.intermediateSize).toBe(1536);
    expect(info.tieWordEmbeddings).toBe(true);
    expect(info.ropeTheta).toBe(100000);
    expect(info.hasChatTemplate).toBe(true);
  });

  it("counts parameters, bytes and tensor types as the GGUF header does (read by llama.cpp's reader)", async () => {
    const gguf = await readGgufFileInfo(modelPath());
    const tensors = gguf.fullTensorInfo ?? gguf.tensorInfo ?? [];
    let params = 0;
    let bytes = 0;
    const types: Record<string, number> = {};
    for (const t of tensors) {
      const elems = t.dimensions.reduce((a: number, d) => a * Number(d), 1);
      const type = GGML_TYPES[t.ggmlType];
      expect(type, `tensor ${t.name} has type ${t.ggmlType}`).toBeDefined();
      params += elems;
      bytes += (elems / type.blockElems) * type.blockBytes;
      // tensorTypes counts the weight matrices (norm vectors are always f32).
      if (t.dimensions.length >= 2) types[type.name] = (types[type.name] ?? 0) + 1;
    }
    expect(model.info.numParams).toBe(params);
    expect(model.info.weightBytes).toBe(bytes);
    expect(model.info.tensorTypes).toEqual(types);
    // Keys and values in f32 for every layer and KV head.
    const { numLayers, numKvHeads, headDim } = model.info;
    expect(model.info.kvCacheBytesPerToken).toBe(2 * numLayers * numKvHeads * headDim * 4);
  });

  it("generates where it was loaded: cpu by default, cuda only with a usable GPU (typed errors otherwise)", async () => {
    const onCpu = await loadModel(modelPath(), { device: "cpu" });
    expect(onCpu.info.device).toBe("cpu");
    // The test machine has no NVIDIA GPU: auto is the CPU, cuda a DEVICE_UNAVAILABLE error.
    expect((await loadModel(modelPath(), { device: "auto" })).info.device).toBe("cpu");
    await expect(loadModel(modelPath(), { device: "cuda" })).rejects.toMatchObject({
      code: "DEVICE_UNAVAILABLE",
      message: expect.stringMatching(/NVIDIA|GPU/),
    });
    await expect(loadModel(modelPath(), { device: "tpu" as never })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringMatching(/"cpu", "cuda" or "auto"/),
    });
    // The wasm engine runs on the CPU only.
    await expect(loadModel("model.bundle", { backend: "wasm", device: "cuda" })).rejects.toMatchObject({
      code: "DEVICE_UNAVAILABLE",
      message: expect.stringMatching(/wasm engine runs on the CPU only/),
    });
  });

  it("reports load progress through onProgress", async () => {
    const events: ProgressEvent[] = [];
    const again = await loadModel(modelPath(), { onProgress: (e) => events.push(e) });
    expect(again.info.numLayers).toBe(30);
    expect(events.length).toBeGreaterThan(0);
    for (const e of events) {
      expect(typeof e.stage).toBe("string");
      expect(e.fraction).toBeGreaterThanOrEqual(0);
      expect(e.fraction).toBeLessThanOrEqual(1);
    }
  });
});

describe("tokenize / detokenize", () => {
  const texts = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🦊🚀, numbers 1234567.89",
    "def f(x):\n    return x ** 2  # code",
  ];

  it.each(texts)("round-trips %j", (text) => {
    const ids = model.tokenize(text);
    expect(ids.length).toBeGreaterThan(0);
    for (const id of ids) expect(id).toBeLessThan(model.info.vocabSize);
    expect(model.detokenize(ids)).toBe(text);
  });

  it("adds BOS on request, and parses special tokens only on request", () => {
    const plain = model.tokenize("hi");
    expect(model.tokenize("hi", { addBos: true })).toEqual([1, ...plain]);
    const special = model.tokenize("<|im_start|>user", { special: true });
    expect(special[0]).toBe(1); // <|im_start|> is token 1 in SmolLM2
    expect(special.length).toBe(2);
    expect(model.tokenize("<|im_start|>user").length).toBeGreaterThan(2);
    expect(model.detokenize(special, { skipSpecial: true })).toBe("user");
  });
});

describe("chat template", () => {
  it("renders ChatML with the generation prompt", () => {
    const text = model.applyChatTemplate([{ role: "user", content: "What is 2+2?" }]);
    expect(text).toContain("<|im_start|>user\nWhat is 2+2?<|im_end|>\n");
    expect(text.endsWith("<|im_start|>assistant\n")).toBe(true);
    const noPrompt = model.applyChatTemplate([{ role: "user", content: "x" }], { addGenerationPrompt: false });
    expect(noPrompt.endsWith("<|im_end|>\n")).toBe(true);
  });
});

async function collect(model: LigerModel, prompt: Parameters<LigerModel["generate"]>[0], options = {}) {
  const generation = model.generate(prompt, options);
  const streamed: { id: number; text: string }[] = [];
  for await (const token of generation) streamed.push(token);
  return { streamed, result: await generation.result };
}

describe("generate", () => {
  const prompt = "The three primary colors are";

  it("streams tokens that add up to the result; greedy decoding is the same every run", async () => {
    const a = await collect(model, prompt, { temperature: 0, maxTokens: 16, ignoreEos: true });
    const b = await collect(model, prompt, { temperature: 0, maxTokens: 16, ignoreEos: true });
    expect(a.result.tokens.length).toBe(16);
    expect(a.result.finishReason).toBe("length");
    expect(a.streamed.map((t) => t.id)).toEqual(a.result.tokens);
    expect(a.streamed.map((t) => t.text).join("")).toBe(a.result.text);
    expect(a.result.text).toBe(model.detokenize(a.result.tokens));
    expect(b.result.tokens).toEqual(a.result.tokens);
    expect(a.result.promptTokens).toBe(model.tokenize(prompt).length);
    expect(a.result.prefillMs).toBeGreaterThan(0);
    expect(a.result.decodeMs).toBeGreaterThan(0);
  });

  it("greedy decoding picks the argmax of model.logits at each step", async () => {
    const { result } = await collect(model, prompt, { temperature: 0, maxTokens: 4, ignoreEos: true });
    let context = model.tokenize(prompt);
    for (const token of result.tokens) {
      const logits = await model.logits(context);
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
      expect(token).toBe(best);
      context = [...context, token];
    }
  });

  it("seeded sampling is reproducible, and another seed gives another text", async () => {
    const options = { temperature: 1.0, topK: 0, topP: 1, maxTokens: 24, ignoreEos: true };
    const a = await collect(model, prompt, { ...options, seed: 1234 });
    const b = await collect(model, prompt, { ...options, seed: 1234 });
    const c = await collect(model, prompt, { ...options, seed: 98765 });
    expect(b.result.tokens).toEqual(a.result.tokens);
    expect(c.result.tokens).not.toEqual(a.result.tokens);
  });

  it("stops at maxTokens", async () => {
    const { result } = await collect(model, prompt, { temperature: 0, maxTokens: 3, ignoreEos: true });
    expect(result.tokens.length).toBe(3);
    expect(result.finishReason).toBe("length");
  });

  it("stops at a stop string and cuts it from the text", async () => {
    const full = await collect(model, prompt, { temperature: 0, maxTokens: 24, ignoreEos: true });
    // A stop string taken from the middle of the greedy continuation.
    const words = full.result.text.trim().split(/\s+/);
    expect(words.length).toBeGreaterThan(3);
    const stop = words[2];
    const cut = full.result.text.slice(0, full.result.text.indexOf(stop));
    const stopped = await collect(model, prompt, { temperature: 0, maxTokens: 24, ignoreEos: true, stop: [stop] });
    expect(stopped.result.finishReason).toBe("stop");
    expect(stopped.result.text).toBe(cut);
    expect(stopped.streamed.map((t) => t.text).join("")).toBe(cut);
  });

  it("aborts through an AbortSignal", async () => {
    const controller = new AbortController();
    const generation = model.generate(prompt, {
      temperature: 0,
      maxTokens: 2000,
      ignoreEos: true,
      signal: controller.signal,
    });
    let seen = 0;
    for await (const _ of generation) {
      if (++seen === 3) controller.abort();
    }
    const result = await generation.result;
    expect(result.finishReason).toBe("aborted");
    expect(result.tokens.length).toBeGreaterThanOrEqual(3);
    expect(result.tokens.length).toBeLessThan(2000);
  });

  it("an already aborted signal ends at once with finishReason aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    const generation = model.generate(prompt, { temperature: 0, maxTokens: 2000, signal: controller.signal });
    const result = await generation.result;
    expect(result.finishReason).toBe("aborted");
    expect(result.tokens.length).toBeLessThanOrEqual(1);
  });

  it("breaking out of the loop stops the generation", async () => {
    const generation = model.generate(prompt, { temperature: 0, maxTokens: 2000, ignoreEos: true });
    for await (const _ of generation) break;
    const result = await generation.result;
    expect(result.finishReason).toBe("aborted");
    expect(result.tokens.length).toBeLessThan(2000);
  });

  it("chat: a message array and chat: true give the same templated prompt, and the model answers", async () => {
    const question = "What is the capital of France? Answer in one word.";
    const viaMessages = await collect(model, [{ role: "user", content: question }], { temperature: 0, maxTokens: 12 });
    const viaFlag = await collect(model, question, { temperature: 0, maxTokens: 12, chat: true });
    expect(viaFlag.result.tokens).toEqual(viaMessages.result.tokens);
    const templated = model.tokenize(model.applyChatTemplate([{ role: "user", content: question }]), { special: true });
    expect(viaMessages.result.promptTokens).toBe(templated.length);
    expect(viaMessages.result.text).toMatch(/Paris/);
    // The chat ends its turn with <|im_end|> (the EOS of this model) well before 12 tokens.
    expect(viaMessages.result.finishReason).toBe("eos");
  });
});
