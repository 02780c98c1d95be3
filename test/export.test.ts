/**
 * `liger export --format hf`: a checkpoint from a short CPU linearize run, written as the
 * reference implementation's liger_gla directory and loaded back with loadModel.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { exportModel, LigerError, loadModel, type LigerModel } from "../ts/dist/index.js";
import { dataDir, liger, modelPath } from "./helpers.js";

const work = mkdtempSync(join(tmpdir(), "liger-export-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
// The commands run here read their data from the folder the tests read.
process.env.LIGER_DATA_DIR = dataDir();

const checkpoint = join(work, "run");

beforeAll(() => {
  const records = JSON.parse(readFileSync(join(dataDir(), "alpaca_cleaned", "alpaca_data_cleaned_1.json"), "utf8"));
  const data = join(work, "alpaca.json");
  writeFileSync(data, JSON.stringify(records.slice(0, 40)));
  const run = liger([
    "linearize",
    "--model",
    modelPath(),
    "--data",
    data,
    "--out",
    checkpoint,
    "--steps",
    "2",
    "--seq-len",
    "32",
  ]);
  expect(run.code, run.stderr).toBe(0);
}, 180_000);

async function greedy(model: LigerModel, prompt: string): Promise<number[]> {
  const generation = model.generate(prompt, { temperature: 0, maxTokens: 12, ignoreEos: true });
  const ids: number[] = [];
  for await (const token of generation) ids.push(token.id);
  return ids;
}

describe("liger export --format hf", () => {
  it("writes the reference's liger_gla directory, which loadModel reads as the same model", async () => {
    const out = join(work, "hf");
    const run = liger(["export", "--model", checkpoint, "--format", "hf", "--out", out]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.trim()).toBe(`exported: ${out}`);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.model_type).toBe("liger_gla");
    expect(config.architectures).toEqual(["LigerGLAForCausalLM"]);
    expect(config.liger).toBeUndefined();
    expect(existsSync(join(out, "model.safetensors")) && existsSync(join(out, "tokenizer.json"))).toBe(true);
    expect(existsSync(join(out, "adapter_model.safetensors"))).toBe(false);

    const original = await loadModel(checkpoint);
    const exported = await loadModel(out);
    expect(exported.info.liger?.mixer).toBe("gla");
    expect(exported.info.liger?.windowKeys).toBe(65);
    expect(exported.info.liger?.softmaxLayers).toEqual([]);
    const prompt = "The three primary colors are";
    expect(await greedy(exported, prompt)).toEqual(await greedy(original, prompt));
    const ids = [...original.tokenize(prompt)];
    const [a, b] = [await original.logits(ids), await exported.logits(ids)];
    let maxAbs = 0;
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(a[i]));
      maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
    }
    expect(maxDiff / maxAbs).toBeLessThan(1e-4);
  }, 120_000);

  it("refuses a non-empty output folder unless --overwrite, and keeps a user's files", async () => {
    const out = join(work, "hf-twice");
    expect(liger(["export", "--model", checkpoint, "--out", out]).code).toBe(0);
    const again = liger(["export", "--model", checkpoint, "--out", out]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^liger: INVALID_ARGUMENT: .*not empty/);
    expect(liger(["export", "--model", checkpoint, "--out", out, "--overwrite"]).code).toBe(0);

    const mine = join(work, "mine");
    mkdirSync(mine);
    writeFileSync(join(mine, "notes.txt"), "keep me");
    const err = await exportModel(checkpoint, mine, { overwrite: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LigerError);
    expect((err as LigerError).code).toBe("INVALID_ARGUMENT");
    expect(readFileSync(join(mine, "notes.txt"), "utf8")).toBe("keep me");
  }, 120_000);

  it("bad inputs are typed errors", async () => {
    const notLiger = await exportModel(modelPath(), join(work, "x")).catch((e: unknown) => e);
    expect((notLiger as LigerError).code).toBe("INVALID_ARGUMENT");
    const format = liger(["export", "--model", checkpoint, "--format", "gguf", "--out", join(work, "y")]);
    expect(format.stderr).toMatch(/^liger: INVALID_ARGUMENT: format must be one of hf/);
    const dtype = await exportModel(checkpoint, join(work, "z"), { dtype: "f8" as "f32" }).catch((e: unknown) => e);
    expect((dtype as LigerError).code).toBe("INVALID_ARGUMENT");
    const missing = await exportModel(join(work, "nothing"), join(work, "w")).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(LigerError);
    expect(existsSync(join(work, "x")) || existsSync(join(work, "y")) || existsSync(join(work, "z"))).toBe(false);
  });

  it("refuses a model the reference cannot express, naming the option", () => {
    const out = join(work, "sinks");
    const made = liger(["linearize", "--model", modelPath(), "--out", out, "--no-train", "--sinks", "2"]);
    expect(made.code, made.stderr).toBe(0);
    const run = liger(["export", "--model", out, "--out", join(work, "sinks-hf")]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^liger: INVALID_ARGUMENT: .*2 attention sinks/);
  }, 180_000);
});

describe("liger export --format bundle", () => {
  it("writes an edge bundle of the checkpoint that the wasm engine loads and generates from", async () => {
    const out = join(work, "model.q4.bundle");
    const run = liger(["export", "--model", checkpoint, "--format", "bundle", "--dtype", "q4", "--out", out]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.trim()).toBe(`exported: ${out}`);
    const edge = await loadModel(out, { backend: "wasm" });
    const native = await loadModel(checkpoint);
    // The bundle keeps the conversion: the same window, mix and mixer.
    expect(edge.info.liger).toMatchObject({
      mixer: native.info.liger?.mixer,
      windowKeys: native.info.liger?.windowKeys,
      alpha: native.info.liger?.alpha,
      beta: native.info.liger?.beta,
    });
    expect(await greedy(edge, "The capital of France is")).toHaveLength(12);
    // An existing file is replaced only with --overwrite; a folder or a bad dtype is refused.
    const again = liger(["export", "--model", checkpoint, "--format", "bundle", "--dtype", "q4", "--out", out]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/INVALID_ARGUMENT: .*exists; pass overwrite/);
    const replaced = liger([
      "export",
      "-m",
      checkpoint,
      "--format",
      "bundle",
      "--dtype",
      "q4",
      "--out",
      out,
      "--overwrite",
    ]);
    expect(replaced.code, replaced.stderr).toBe(0);
    const folder = await exportModel(checkpoint, work, { format: "bundle" }).catch((e: unknown) => e);
    expect((folder as LigerError).code).toBe("INVALID_ARGUMENT");
    expect((folder as LigerError).message).toMatch(/is a folder/);
    const bad = await exportModel(checkpoint, join(work, "x.bundle"), { format: "bundle", dtype: "bf16" }).catch(
      (e: unknown) => e,
    );
    expect((bad as LigerError).code).toBe("INVALID_ARGUMENT");
    expect((bad as LigerError).message).toMatch(/int8, q4, f32/);
    expect(existsSync(join(work, "x.bundle"))).toBe(false);
  }, 120_000);
});
