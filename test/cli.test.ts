/** The `liger` command, run as a separate process. */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

import { cliPath, liger, modelPath, sharedModel } from "./helpers.js";

describe("liger info", () => {
  it("--json prints the model's facts", async () => {
    const run = liger(["info", "--model", modelPath(), "--json"]);
    expect(run.code, run.stderr).toBe(0);
    const info = JSON.parse(run.stdout);
    expect(info).toMatchObject({ ...(await sharedModel()).info, path: modelPath() });
  });

  it("prints a readable table without --json", () => {
    const run = liger(["info", "--model", modelPath()]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/layers\s+30/);
    expect(run.stdout).toMatch(/Q4_1/);
  });

  it("fails with the error code on a missing model", () => {
    const run = liger(["info", "--model", "/nonexistent/model.gguf"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^liger: IO_ERROR: .*\/nonexistent\/model\.gguf/);
  });

  it("says how to get the addon when it cannot be loaded", () => {
    const run = liger(["info", "--model", modelPath()], { env: { LIGER_NATIVE_ADDON: "/nonexistent/liger.node" } });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/NATIVE_ADDON_MISSING/);
    expect(run.stderr).toMatch(/npm run build:addon/);
  });
});

describe("liger generate", () => {
  it("streams the same greedy text as the library", async () => {
    const prompt = "Once upon a time";
    const run = liger(["generate", "-m", modelPath(), "-p", prompt, "-n", "12", "-t", "0", "--ignore-eos", "--stats"]);
    expect(run.code, run.stderr).toBe(0);
    const model = await sharedModel();
    const expected = await model.generate(prompt, { temperature: 0, maxTokens: 12, ignoreEos: true }).result;
    expect(run.stdout).toBe(`${expected.text}\n`);
    expect(run.stderr).toMatch(/generated 12 tokens/);
  });

  it("--chat answers a question; --stop stops", () => {
    const run = liger(["generate", "-m", modelPath(), "-p", "Name a color.", "--chat", "-t", "0", "-n", "30"]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.trim().length).toBeGreaterThan(0);
    const stop = liger(["generate", "-m", modelPath(), "-p", "1, 2, 3, 4,", "-t", "0", "-n", "30", "--stop", "7"]);
    expect(stop.code, stop.stderr).toBe(0);
    expect(stop.stdout).not.toContain("7");
  });

  it("rejects bad options with INVALID_ARGUMENT", () => {
    const run = liger(["generate", "-m", modelPath(), "-p", "x", "--max-tokens", "-5"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^liger: INVALID_ARGUMENT: maxTokens/);
    const notNumber = liger(["generate", "-m", modelPath(), "-p", "x", "--temperature", "warm"]);
    expect(notNumber.code).toBe(1);
    expect(notNumber.stderr).toMatch(/INVALID_ARGUMENT: --temperature expects a number/);
    const badDevice = liger(["generate", "-m", modelPath(), "-p", "x", "--device", "tpu"]);
    expect(badDevice.code).toBe(1);
    expect(badDevice.stderr).toMatch(/INVALID_ARGUMENT: device must be "cpu", "cuda" or "auto"/);
  });

  it("--device cuda without a usable GPU is DEVICE_UNAVAILABLE; --device cpu generates", () => {
    const gpu = liger(["generate", "-m", modelPath(), "-p", "x", "-n", "2", "--device", "cuda"]);
    expect(gpu.code).toBe(1);
    expect(gpu.stderr).toMatch(/^liger: DEVICE_UNAVAILABLE: /m);
    const cpu = liger(["generate", "-m", modelPath(), "-p", "x", "-n", "2", "-t", "0", "--device", "cpu"]);
    expect(cpu.code).toBe(0);
    expect(cpu.stdout.length).toBeGreaterThan(0);
  });

  it("a missing --prompt is a usage error", () => {
    const run = liger(["generate", "-m", modelPath()]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toMatch(/--prompt/);
  });

  it("Ctrl-C stops generation cleanly", async () => {
    const child = spawn(
      process.execPath,
      [cliPath, "generate", "-m", modelPath(), "-p", "Tell me a long story.", "-n", "4000", "--ignore-eos", "-t", "0"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const exit = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    await new Promise<void>((resolve) =>
      child.stdout.on("data", (d) => {
        stdout += d;
        if (stdout.length > 20) resolve();
      }),
    );
    child.kill("SIGINT");
    expect(await exit).toBe(130);
    expect(stderr).toMatch(/generation aborted/);
    expect(stdout.length).toBeGreaterThan(20);
  });
});

describe("liger eval output", () => {
  it("a comparison whose base scored 0 prints n/a instead of crashing", async () => {
    const { formatComparison } = await import("../ts/dist/cli/eval.js");
    const text = formatComparison({
      baseModel: "base",
      linearizedModel: "liger",
      rows: [
        { task: "passkey", metric: "acc", higherIsBetter: true, base: 0, linearized: 0.4, recovery: null },
        { task: "arc_easy", metric: "acc", higherIsBetter: true, base: 0.5, linearized: 0.25, recovery: 0.5 },
      ],
      ratioOfAverages: null,
      meanOfRatios: 0.5,
      definitions: {},
    });
    expect(text).toMatch(/passkey\s+acc\s+0\.0000\s+0\.4000\s+n\/a/);
    expect(text).toMatch(/arc_easy\s+acc\s+0\.5000\s+0\.2500\s+0\.5000/);
  });
});
