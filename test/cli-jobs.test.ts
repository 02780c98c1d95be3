/** `liger eval` and `liger linearize`, run as separate processes. */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { dataDir, liger, modelPath } from "./helpers.js";

const work = mkdtempSync(join(tmpdir(), "liger-cli-jobs-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
// The commands run here read their data from the folder the tests read.
process.env.LIGER_DATA_DIR = dataDir();

describe("liger eval", () => {
  it("prints a table per model, the recovery, and writes JSON and HTML", () => {
    const json = join(work, "eval.json");
    const html = join(work, "eval.html");
    const text = join(work, "text.txt");
    writeFileSync(text, "A short text to score, written twice. A short text to score, written twice.");
    const run = liger([
      "eval",
      "--model",
      modelPath(),
      "--compare",
      modelPath(),
      "--tasks",
      "arc_easy,lambada_openai",
      "--limit",
      "3",
      "--ppl",
      text,
      "--window",
      "64",
      "--json",
      json,
      "--html",
      html,
    ]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/arc_easy\s+3\s+acc/);
    expect(run.stdout).toMatch(/lambada_openai\s+3\s+acc/);
    expect(run.stdout).toMatch(/perplexity of .*text\.txt: token/);
    // The same model twice: everything is recovered exactly.
    expect(run.stdout).toMatch(/ratio of averages: 1\.0000\s+mean of ratios: 1\.0000/);
    expect(run.stdout).toMatch(/mean of ratios: mean of the per-task recoveries/);
    const written = JSON.parse(readFileSync(json, "utf8"));
    expect(written.reports).toHaveLength(2);
    expect(written.comparison.rows).toHaveLength(2);
    expect(written.perplexities[0].perplexity.tokenPerplexity).toBeGreaterThan(1);
    expect(readFileSync(html, "utf8")).toMatch(/^<!DOCTYPE html>.*<svg/s);
  });

  it("says how to point at the data when there is none", () => {
    const run = liger(["eval", "--model", modelPath(), "--tasks", "arc_easy", "--limit", "1"], {
      env: { LIGER_DATA_DIR: "" },
    });
    // In a checkout with ../shared/data next to it the default folder exists; otherwise the error says --data.
    if (run.code !== 0)
      expect(run.stderr).toMatch(/INVALID_ARGUMENT: no task data folder: set dataDir \(the CLI's --data\)/);
    const unknown = liger(["eval", "--model", modelPath(), "--tasks", "arc_medium"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^liger: INVALID_ARGUMENT: unknown task "arc_medium"/);
  });
});

describe("liger linearize", () => {
  it("trains a few steps, prints the perplexity table and a sample, and the checkpoint is usable", () => {
    const records = JSON.parse(readFileSync(join(dataDir(), "alpaca_cleaned", "alpaca_data_cleaned_1.json"), "utf8"));
    const data = join(work, "alpaca.json");
    writeFileSync(data, JSON.stringify(records.slice(0, 80)));
    const out = join(work, "ckpt");
    const run = liger([
      "linearize",
      "--model",
      modelPath(),
      "--data",
      data,
      "--out",
      out,
      "--steps",
      "2",
      "--seq-len",
      "64",
      "--dtype",
      "bf16",
      "--sample",
      "Name a color.",
    ]);
    expect(run.code, run.stderr).toBe(0);
    // The device is chosen automatically: no GPU here, so the first line says why and where it trains.
    expect(run.stderr).toMatch(
      /^No usable NVIDIA GPU \(.*NVIDIA.*\)\.\nTraining on the CPU: with the options given\./m,
    );
    expect(run.stderr).toMatch(/step 2\/2\s+loss \d/);
    expect(run.stdout).toMatch(/base \(softmax attention\)\s+\d+\.\d+\s+\d+\.\d+/);
    expect(run.stdout).toMatch(/liger, converted, untrained\s+\d+\.\d+\s+\d+\.\d+/);
    expect(run.stdout).toMatch(/liger, trained\s+\d+\.\d+\s+\d+\.\d+/);
    expect(run.stdout).toMatch(/sample:/);
    expect(run.stdout.trimEnd().split("\n").at(-1)).toBe(`report: ${join(out, "report.html")}`);
    // A run folder: the final model in model/, loaded by naming the folder.
    expect(existsSync(join(out, "liger-run.json")) && existsSync(join(out, "model", "config.json"))).toBe(true);
    // Beside it the report: its numbers, and the page drawn from them with every chart of a trained run.
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    expect(report.history.steps).toHaveLength(2);
    expect(report.memory.baseBytesPerToken).toBeGreaterThan(0);
    const page = readFileSync(join(out, "report.html"), "utf8");
    for (const id of ["validation", "loss", "learning-rate", "throughput", "memory"]) {
      expect(page).toMatch(new RegExp(`<section id="${id}"><h2>[^<]*</h2><svg`));
    }
    const info = liger(["info", "--model", out]);
    expect(info.code, info.stderr).toBe(0);
    expect(info.stdout).toMatch(/liger\s+gla mixer \+ 65-key sliding window/);
    expect(info.stdout).toMatch(/state\s+\d+\.\d+ MiB per sequence/);
  });

  it("--no-train converts and saves with a surprise cache; it refuses training flags", () => {
    const out = join(work, "untrained-surprise");
    const run = liger([
      "linearize",
      "--model",
      modelPath(),
      "--out",
      out,
      "--no-train",
      "--sinks",
      "2",
      "--surprise-keys",
      "8",
      "--surprise-repeats",
      "0.05",
      "--alpha",
      "0",
      "--beta",
      "1",
    ]);
    expect(run.code, run.stderr).toBe(0);
    const info = liger(["info", "--model", out]);
    expect(info.code, info.stderr).toBe(0);
    expect(info.stdout).toMatch(
      /liger\s+gla mixer \+ 65-key sliding window and 2 sink tokens, 8 surprise keys \(repeats within 0.05 skipped\)/,
    );
    expect(info.stdout).toMatch(/mix\s+0 x recurrent \+ 1 x window/);
    // Branch weights are learned in training: not with --no-train.
    const learn = liger([
      "linearize",
      "--model",
      modelPath(),
      "--out",
      join(work, "never"),
      "--no-train",
      "--learn-mix",
    ]);
    expect(learn.code).toBe(1);
    expect(learn.stderr).toMatch(/INVALID_ARGUMENT: --no-train converts without training: .*--learn-mix/);
    const both = liger([
      "linearize",
      "--model",
      modelPath(),
      "--out",
      join(work, "never"),
      "--no-train",
      "--steps",
      "3",
    ]);
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/INVALID_ARGUMENT: --no-train converts without training/);
    const after = liger([
      "linearize",
      "--model",
      modelPath(),
      "--out",
      join(work, "never"),
      "--no-train",
      "--surprise-after-training",
    ]);
    expect(after.code).toBe(1);
    expect(after.stderr).toMatch(/INVALID_ARGUMENT: surpriseAfterTraining .*set surpriseKeys/);
  });

  it("--softmax-layers retrieval:N keeps the layers where the base model retrieves most", () => {
    const text = join(work, "select.raw");
    writeFileSync(text, readFileSync(join(dataDir(), "wikitext2_raw", "wiki.valid.raw"), "utf8").slice(0, 6000));
    const out = join(work, "retrieval");
    const args = ["linearize", "--model", modelPath(), "--out", out, "--no-train", "--window", "32"];
    const run = liger([...args, "--softmax-layers", "retrieval:1", "--select-data", text]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout + run.stderr).toMatch(/retrieves beyond the 32-key window/);
    const kept = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
    expect(kept.softmaxLayers).toHaveLength(1);
    expect(kept.layerRetrieval).toHaveLength(30);
    const bad = liger([...args, "--softmax-layers", "retrieval:x"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/INVALID_ARGUMENT: --softmax-layers/);
  });

  it("--device cuda and bad flags fail with typed errors", () => {
    const cuda = liger(["linearize", "--device", "cuda", "--out", join(work, "never")]);
    expect(cuda.code).toBe(1);
    // This machine has no NVIDIA GPU: the GPU engine says so and points at the CPU backend.
    expect(cuda.stderr).toMatch(/^liger: DEVICE_UNAVAILABLE: .*NVIDIA.*use the CPU backend/m);
    const evalCuda = liger(["eval", "--device", "cuda", "--tasks", "arc_easy", "--limit", "2"]);
    expect(evalCuda.code).toBe(1);
    expect(evalCuda.stderr).toMatch(/^liger: DEVICE_UNAVAILABLE: .*NVIDIA.*use the CPU backend/m);
    const mixer = liger(["linearize", "--mixer", "transformer", "--out", join(work, "never")]);
    expect(mixer.code).toBe(1);
    expect(mixer.stderr).toMatch(/INVALID_ARGUMENT: mixer must be one of gla/);
    const steps = liger(["linearize", "--steps", "many", "--out", join(work, "never")]);
    expect(steps.code).toBe(1);
    expect(steps.stderr).toMatch(/INVALID_ARGUMENT: --steps expects a number/);
    expect(existsSync(join(work, "never"))).toBe(false);
  });
});
