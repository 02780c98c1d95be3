/** Bad input ends in a LigerError with the right code, never a crash or a hang. */
import { mkdtempSync, openSync, readSync, closeSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { LigerError, loadModel, type LigerErrorCode, type LigerModel } from "../ts/dist/index.js";
import { modelPath, sharedModel } from "./helpers.js";

let model: LigerModel;
beforeAll(async () => {
  model = await sharedModel();
});

async function expectCode(work: () => unknown, code: LigerErrorCode): Promise<LigerError> {
  let caught: unknown;
  try {
    await work();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected a LigerError ${code}`).toBeInstanceOf(LigerError);
  const error = caught as LigerError;
  expect(error.code, error.message).toBe(code);
  expect(error.message.length).toBeGreaterThan(10);
  return error;
}

const scratch = mkdtempSync(join(tmpdir(), "liger-errors-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** The first `bytes` bytes of the real model, as a new file. */
function truncatedCopy(bytes: number): string {
  const buffer = Buffer.alloc(bytes);
  const fd = openSync(modelPath(), "r");
  readSync(fd, buffer, 0, bytes, 0);
  closeSync(fd);
  const path = join(scratch, `truncated-${bytes}.gguf`);
  writeFileSync(path, buffer);
  return path;
}

describe("loading bad files", () => {
  it("a missing file is IO_ERROR and names the path", async () => {
    const path = join(scratch, "does-not-exist.gguf");
    const err = await expectCode(() => loadModel(path), "IO_ERROR");
    expect(err.message).toContain(path);
  });

  it.each([3, 1000, 5_000_000])("a GGUF truncated to %i bytes is INVALID_FILE", async (bytes) => {
    await expectCode(() => loadModel(truncatedCopy(bytes)), "INVALID_FILE");
  });

  it("a file that is not a GGUF is INVALID_FILE", async () => {
    const path = join(scratch, "text.gguf");
    writeFileSync(path, "this is plain text, not a model file at all\n".repeat(100));
    await expectCode(() => loadModel(path), "INVALID_FILE");
  });

  it("an empty path is INVALID_ARGUMENT", async () => {
    await expectCode(() => loadModel(""), "INVALID_ARGUMENT");
  });
});

describe("bad requests", () => {
  it("a prompt longer than the context is CONTEXT_OVERFLOW", async () => {
    const tooLong = Array.from({ length: model.info.contextLength + 10 }, (_, i) => 100 + (i % 1000));
    await expectCode(() => model.logits(tooLong), "CONTEXT_OVERFLOW");
    const text = "hello ".repeat(model.info.contextLength + 10);
    const generation = model.generate(text, { maxTokens: 4 });
    await expectCode(() => generation.result, "CONTEXT_OVERFLOW");
    // The iterator ends with the same error.
    await expectCode(async () => {
      for await (const _ of generation);
    }, "CONTEXT_OVERFLOW");
  });

  it.each([
    ["negative maxTokens", { maxTokens: -1 }],
    ["zero maxTokens", { maxTokens: 0 }],
    ["fractional maxTokens", { maxTokens: 2.5 }],
    ["negative temperature", { temperature: -0.5 }],
    ["NaN temperature", { temperature: Number.NaN }],
    ["fractional topK", { topK: 1.5 }],
    ["topP of 0", { topP: 0 }],
    ["topP above 1", { topP: 1.5 }],
    ["negative seed", { seed: -3 }],
    ["empty stop string", { stop: [""] }],
    ["non-signal signal", { signal: {} as AbortSignal }],
  ])("%s is INVALID_ARGUMENT", async (_name, options) => {
    await expectCode(() => model.generate("hi", options), "INVALID_ARGUMENT");
  });

  it("token ids outside the vocabulary are INVALID_ARGUMENT", async () => {
    await expectCode(() => model.logits([1, model.info.vocabSize]), "INVALID_ARGUMENT");
    await expectCode(() => model.logits([1, -1]), "INVALID_ARGUMENT");
    await expectCode(() => model.logits([]), "INVALID_ARGUMENT");
    await expectCode(() => model.detokenize([0.5]), "INVALID_ARGUMENT");
  });

  it("malformed chat messages are INVALID_ARGUMENT", async () => {
    await expectCode(() => model.applyChatTemplate([]), "INVALID_ARGUMENT");
    await expectCode(() => model.applyChatTemplate([{ role: "user" } as never]), "INVALID_ARGUMENT");
    await expectCode(() => model.generate([{ content: "x" } as never]), "INVALID_ARGUMENT");
  });

  it("an empty prompt is INVALID_ARGUMENT", async () => {
    await expectCode(() => model.generate("", { maxTokens: 2 }), "INVALID_ARGUMENT");
  });

  it("the model still works after all of the above", async () => {
    const result = await model.generate("Hello", { temperature: 0, maxTokens: 2, ignoreEos: true }).result;
    expect(result.tokens.length).toBe(2);
  });
});
