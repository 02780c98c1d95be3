/** Evaluation, perplexity and linearize through the library API. */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  compareReports,
  exportModel,
  defaultGpuRecipe,
  gpuInfo,
  linearize,
  loadModel,
  LigerError,
  RECIPES,
  type LinearizeEvent,
  type LinearizeOptions,
  type LinearizeReport,
} from "../ts/dist/index.js";
import { DEFAULT_TASKS, resolveEvalOptions } from "../ts/dist/eval.js";
import { DEFAULT_SAMPLE_PROMPT, resolveLinearizeOptions } from "../ts/dist/linearize.js";
import { evalDefaults, linearizeDefaults } from "../ts/dist/native.js";
import { dataDir, logSoftmax, modelPath, sharedModel } from "./helpers.js";

const work = mkdtempSync(join(tmpdir(), "liger-jobs-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A small slice of Alpaca records in a file of its own. */
function alpacaSlice(count: number): string {
  const records = JSON.parse(readFileSync(join(dataDir(), "alpaca_cleaned", "alpaca_data_cleaned_0.json"), "utf8"));
  const file = join(work, `alpaca-${count}.json`);
  writeFileSync(file, JSON.stringify(records.slice(0, count)));
  return file;
}

async function expectCode(promise: Promise<unknown>, code: string, message?: RegExp) {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LigerError);
  expect((err as LigerError).code, (err as Error).message).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

describe("options not given take the facade's defaults", () => {
  it("linearize: the addon's defaults (LinearizeOptions::new), under a recipe's settings", () => {
    const d = linearizeDefaults();
    expect(d).toMatchObject({ mixer: "gla", window: 65, sinks: 0, alpha: 0.5, beta: 0.5, loraRank: 8, steps: 30 });
    expect(d).toMatchObject({ seqLen: 256, lr: 1e-3, valFraction: 0.02, maxValSequences: 16, device: "cpu" });
    expect(d.samplePrompt).toBe(DEFAULT_SAMPLE_PROMPT);
    const resolved = resolveLinearizeOptions("m.gguf", { out: "o", data: null });
    expect(resolved).toEqual({ ...d, modelPath: "m.gguf", outDir: "o", dataPath: undefined });
    // A recipe's settings win over the defaults; its distillation only where the GPU runs.
    const cpu = resolveLinearizeOptions("m.gguf", { out: "o", data: null, recipe: "memory", device: "cpu" });
    expect(cpu).toMatchObject({ window: 257, sinks: 4, seqLen: 1024, epochs: 1, steps: undefined, distillWeight: 0 });
    const cuda = resolveLinearizeOptions("m.gguf", { out: "o", data: null, recipe: "memory", device: "cuda" });
    expect(cuda.distillWeight).toBe(0.5);
    // The recipe's surprise cache is the one a repeat rule given alone applies to.
    const repeats = { out: "o", data: null, recipe: "memory" as const, device: "cpu" as const };
    const withRule = resolveLinearizeOptions("m.gguf", { ...repeats, surpriseRepeatTolerance: 0.3 });
    expect(withRule).toMatchObject({ surpriseKeys: 512, surpriseRepeatTolerance: 0.3 });
    // The recipe brings its own rule (0.05); turned off by 0, and gone with the cache.
    expect(resolveLinearizeOptions("m.gguf", repeats).surpriseRepeatTolerance).toBe(0.05);
    expect(resolveLinearizeOptions("m.gguf", { ...repeats, surpriseRepeatTolerance: 0 })).toMatchObject({
      surpriseRepeatTolerance: 0,
    });
    expect(resolveLinearizeOptions("m.gguf", { ...repeats, surpriseKeys: 0 })).toMatchObject({
      surpriseKeys: 0,
      surpriseRepeatTolerance: 0,
    });
  });

  it("evaluate: the addon's defaults (EvaluateOptions::default)", () => {
    const d = evalDefaults();
    expect(d.tasks).toEqual([...DEFAULT_TASKS]);
    const resolved = resolveEvalOptions({ dataDir: "data" }, "model");
    expect(resolved).toMatchObject({ tasks: d.tasks, seed: d.seed, addBos: d.addBos, device: d.device });
    expect(resolved.seed).toBe(1234);
  });
});

describe("evaluate", () => {
  it("scores a 5-item subset of arc_easy and lambada", async () => {
    const model = await sharedModel();
    const events: string[] = [];
    const report = await model.evaluate({
      tasks: ["arc_easy", "lambada_openai"],
      limit: 5,
      dataDir: dataDir(),
      onProgress: (e) => events.push(e.kind),
    });
    expect(report.tasks.map((t) => t.task)).toEqual(["arc_easy", "lambada_openai"]);
    for (const t of report.tasks) {
      expect(t.n).toBe(5);
      expect(t.metrics.acc).toBeGreaterThanOrEqual(0);
      expect(t.metrics.acc).toBeLessThanOrEqual(1);
      expect(t.primaryMetric).toBe("acc");
      expect(t.stats.tokensProcessed).toBeGreaterThan(0);
    }
    expect(report.tasks[0].metrics.acc_norm).toBeGreaterThanOrEqual(0);
    expect(report.tasks[0].metrics.acc_norm).toBeLessThanOrEqual(1);
    expect(report.tasks[1].metrics.perplexity).toBeGreaterThan(1);
    expect(report.options.limit).toBe(5);
    expect(events.filter((k) => k === "task")).toHaveLength(2);
    expect(events.filter((k) => k === "taskDone")).toHaveLength(2);
    expect(events).toContain("progress");
  });

  it("device cuda without a GPU is DEVICE_UNAVAILABLE; an unknown device is INVALID_ARGUMENT", async () => {
    const model = await sharedModel();
    const options = { tasks: ["arc_easy"], limit: 2, dataDir: dataDir() };
    // No NVIDIA GPU on the test machine: a typed error that points at the CPU backend.
    await expectCode(
      model.evaluate({ ...options, device: "cuda" }),
      "DEVICE_UNAVAILABLE",
      /NVIDIA.*use the CPU backend/,
    );
    await expectCode(
      model.evaluate({ ...options, device: "tpu" as never }),
      "INVALID_ARGUMENT",
      /device must be "cpu" or "cuda"/,
    );
    const onCpu = await model.evaluate({ ...options, device: "cpu" });
    expect(onCpu.tasks[0].n).toBe(2);
  });

  it("compares two reports: per-task recovery, ratio of averages, mean of ratios", async () => {
    const model = await sharedModel();
    const real = await model.evaluate({ tasks: ["arc_easy", "lambada_openai"], limit: 5, seed: 1, dataDir: dataDir() });
    // Real reports with accuracies set to fresh random values in (0.05, 1), so that no
    // ratio divides by zero.
    const withAcc = (values: number[]) => ({
      ...real,
      tasks: real.tasks.map((t, i) => ({ ...t, metrics: { ...t.metrics, acc: values[i] } })),
    });
    const draw = () => real.tasks.map(() => 0.05 + 0.95 * Math.random());
    const [accA, accB] = [draw(), draw()];
    const c = compareReports(withAcc(accA), withAcc(accB));
    expect(c.rows.map((r) => r.task)).toEqual(["arc_easy", "lambada_openai"]);
    const ratios = accA.map((a, i) => accB[i] / a);
    for (const [i, row] of c.rows.entries()) {
      expect(row).toMatchObject({ metric: "acc", higherIsBetter: true, base: accA[i], linearized: accB[i] });
      expect(Math.abs(row.recovery! - ratios[i]) / ratios[i]).toBeLessThan(1e-12);
    }
    const mean = (v: number[]) => v.reduce((s, x) => s + x, 0) / v.length;
    expect(Math.abs(c.ratioOfAverages! - mean(accB) / mean(accA))).toBeLessThan(1e-12);
    expect(Math.abs(c.meanOfRatios! - mean(ratios))).toBeLessThan(1e-12);
    expect(Object.keys(c.definitions)).toEqual(expect.arrayContaining(["recovery", "ratioOfAverages", "meanOfRatios"]));
    expect(() => compareReports(real, { ...real, tasks: [] })).toThrow(/share no task/);
  });

  it("bad tasks and missing data are typed errors", async () => {
    const model = await sharedModel();
    await expectCode(model.evaluate({ tasks: ["arc_medium"], dataDir: dataDir() }), "INVALID_ARGUMENT", /unknown task/);
    await expectCode(
      model.evaluate({ tasks: ["arc_easy"], limit: 0, dataDir: dataDir() }),
      "INVALID_ARGUMENT",
      /limit/,
    );
    await expectCode(
      model.evaluate({ tasks: ["arc_easy"], dataDir: join(work, "nothing-here") }),
      "IO_ERROR",
      /ARC-Easy-Test/,
    );
  });

  it("fills passkey prompts from a text file; a missing file or a filler without lengths is a typed error", async () => {
    const model = await sharedModel();
    const filler = join(work, "filler.txt");
    writeFileSync(filler, readFileSync(join(dataDir(), "wikitext2_raw", "wiki.valid.raw"), "utf8").slice(0, 20000));
    const options = { tasks: [], passkey: [200], passkeyDepths: [0.3, 0.8] };
    const report = await model.evaluate({ ...options, passkeyFiller: filler });
    expect(report.passkey!.cells.map((c) => [c.length, c.depth, c.trials])).toEqual([
      [200, 0.3, 1],
      [200, 0.8, 1],
    ]);
    await expectCode(
      model.evaluate({ ...options, passkeyFiller: join(work, "no-such-filler.txt") }),
      "IO_ERROR",
      /no-such-filler\.txt/,
    );
    await expectCode(
      model.evaluate({ tasks: ["arc_easy"], dataDir: dataDir(), passkeyFiller: filler }),
      "INVALID_ARGUMENT",
      /passkeyFiller .*passkey lengths/,
    );
  });

  it("stops with ABORTED when its signal fires", async () => {
    const model = await sharedModel();
    const controller = new AbortController();
    const job = model.evaluate({
      tasks: ["arc_easy"],
      limit: 200,
      dataDir: dataDir(),
      signal: controller.signal,
      onProgress: (e) => e.kind === "progress" && e.done > 0 && controller.abort(),
    });
    await expectCode(job, "ABORTED");
  });
});

describe("perplexity", () => {
  it("matches a float64 computation from per-position logits", async () => {
    const model = await sharedModel();
    const text = "The cat sat on the mat. It was a sunny day, and the birds were singing.";
    const result = await model.perplexity(text, { window: 64 });
    const ids = model.tokenize(text, { addBos: false });
    const prefix = model.tokenize("", { addBos: true });
    expect(prefix).toHaveLength(1);
    expect(ids.length).toBeLessThan(64);
    let nll = 0;
    for (let i = 0; i < ids.length; i++) {
      const logp = logSoftmax(await model.logits([...prefix, ...ids.slice(0, i)]));
      nll -= logp[ids[i]];
    }
    const expected = Math.exp(nll / ids.length);
    const relError = Math.abs(result.tokenPerplexity - expected) / expected;
    console.log(
      `perplexity ${result.tokenPerplexity.toFixed(6)} vs float64 reference ${expected.toFixed(6)}: rel error ${relError.toExponential(2)}`,
    );
    expect(relError).toBeLessThan(1e-4);
    expect(result.tokens).toBe(ids.length);
    expect(result.windows).toBe(1);
  });

  it("reads a file, and rejects a bad window or a missing file", async () => {
    const model = await sharedModel();
    const file = join(work, "text.txt");
    writeFileSync(file, "One two three four five six seven eight nine ten. ".repeat(8));
    const result = await model.perplexity({ file }, { window: 32 });
    expect(result.windows).toBeGreaterThan(1);
    expect(result.tokenPerplexity).toBeGreaterThan(1);
    await expectCode(model.perplexity("x", { window: 0 }), "INVALID_ARGUMENT", /window/);
    await expectCode(model.perplexity({ file: join(work, "missing.txt") }), "IO_ERROR");
  });
});

describe("linearize", () => {
  const out = join(work, "checkpoint");
  const events: LinearizeEvent[] = [];
  let report: LinearizeReport;

  beforeAll(async () => {
    report = await linearize(modelPath(), {
      out,
      data: alpacaSlice(120),
      steps: 3,
      attentionTransfer: 2,
      longContext: { steps: 1, seqLen: 128 },
      seqLen: 64,
      valFraction: 0.05,
      maxValSequences: 3,
      sampleMaxTokens: 6,
      dtype: "bf16",
      onProgress: (e) => events.push(e),
    });
  });

  it("reports progress, three perplexities and the sample", () => {
    const steps = events.filter((e) => e.kind === "step");
    // Two steps of attention transfer, the three of training, then one on longer sequences.
    expect(steps.map((e) => e.step)).toEqual([1, 2, 1, 2, 3, 1]);
    expect(report.longContext?.stepsDone).toBe(1);
    const stages = events.flatMap((e) => (e.kind === "stage" ? [e.stage] : []));
    expect(stages.findIndex((s) => s.startsWith("attention transfer: 2 steps"))).toBeLessThan(
      stages.findIndex((s) => s.startsWith("training: 3 steps")),
    );
    expect(stages.some((s) => s.startsWith("long context: 1 steps"))).toBe(true);
    expect(report.attentionTransfer?.stepsDone).toBe(2);
    expect(report.attentionTransfer?.losses.every((l) => Number.isFinite(l) && l > 0)).toBe(true);
    for (const s of steps) {
      expect(Number.isFinite(s.loss)).toBe(true);
      expect(s.tokensPerSecond).toBeGreaterThan(0);
    }
    expect(events.filter((e) => e.kind === "eval").map((e) => e.name)).toEqual([
      "base",
      "liger (untrained)",
      "liger (trained)",
    ]);
    for (const e of [report.baseEval, report.untrainedEval, report.trainedEval]) {
      expect(e).not.toBeNull();
      expect(e!.ppl).toBeCloseTo(Math.exp(e!.loss), 8);
      expect(e!.tokens).toBeGreaterThan(0);
    }
    expect(report.stepsDone).toBe(3);
    expect(report.losses).toHaveLength(3);
    expect(report.stateBytes).toBeGreaterThan(0);
    expect(typeof report.sample).toBe("string");
  });

  it("writes a checkpoint that loads back as a Liger model and generates", async () => {
    expect(existsSync(join(out, "model", "config.json"))).toBe(true);
    const model = await loadModel(out);
    expect(model.info.liger).toMatchObject({
      mixer: "gla",
      windowKeys: 65,
      softmaxLayers: [],
      stateBytesPerSequence: report.stateBytes,
    });
    const result = await model.generate("Hello", { maxTokens: 5, temperature: 0, ignoreEos: true }).result;
    expect(result.tokens).toHaveLength(5);
    const evaluated = await model.evaluate({ tasks: ["lambada_openai"], limit: 3, dataDir: dataDir() });
    expect(evaluated.model).toMatch(/liger gla/);
  });

  it("a hostile chat template stops at its budget, renders off the JavaScript thread and can be aborted", async () => {
    const dir = join(work, "hostile-template");
    await linearize(modelPath(), { out: dir, data: null, sample: false });
    const templates = [
      "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}{% endfor %}{% endfor %}{% endfor %}",
      "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    ];
    const messages = [{ role: "user", content: "hi" }];
    for (const template of templates) {
      writeFileSync(join(dir, "model", "chat_template.jinja"), template);
      const model = await loadModel(dir);
      expect(() => model.applyChatTemplate(messages)).toThrow(/budget/);
      // Off the thread: timers keep firing while the template runs.
      let ticks = 0;
      const timer = setInterval(() => ticks++, 1);
      await expectCode(model.applyChatTemplateAsync(messages), "INVALID_ARGUMENT", /budget/);
      clearInterval(timer);
      expect(ticks).toBeGreaterThan(0);
      const controller = new AbortController();
      const pending = model.applyChatTemplateAsync(messages, { signal: controller.signal });
      controller.abort();
      await expectCode(pending, "ABORTED");
      // A chat prompt renders the same way; the error arrives through the result.
      await expectCode(model.generate(messages, { maxTokens: 2 }).result, "INVALID_ARGUMENT", /budget/);
    }
  });

  it("gsa keeps its slots and query scale: the reference's unscaled read-out by default, 1/sqrt(D) when asked", async () => {
    const infoOf = async (gsa: LinearizeOptions["gsa"]) => {
      const dir = join(work, `gsa-${gsa?.scale ?? "default"}`);
      await linearize(modelPath(), { out: dir, data: null, mixer: "gsa", gsa, sample: false });
      const model = await loadModel(dir);
      const result = await model.generate("The sky is", { maxTokens: 4, temperature: 0, ignoreEos: true }).result;
      return { info: model.info.liger!, tokens: result.tokens };
    };
    const plain = await infoOf(undefined);
    expect([plain.info.mixer, plain.info.gsaSlots, plain.info.gsaScale]).toEqual(["gsa", 64, "one"]);
    const scaled = await infoOf({ slots: 32, scale: "inv_sqrt_head_dim" });
    expect([scaled.info.gsaSlots, scaled.info.gsaScale]).toEqual([32, "inv_sqrt_head_dim"]);
    expect(scaled.tokens).toHaveLength(4);
    await expectCode(
      linearize(modelPath(), { out: join(work, "gsa-bad"), data: null, mixer: "gsa", gsa: { scale: "half" as never } }),
      "INVALID_ARGUMENT",
      /gsa.scale/,
    );
    await expectCode(
      linearize(modelPath(), { out: join(work, "gsa-bad2"), data: null, mixer: "gsa", gsa: { slots: 48 } }),
      "INVALID_ARGUMENT",
      /gsa_slots/,
    );
  });

  it("sinks and the normalised recurrent branch convert, load back, report their state and generate", async () => {
    const dir = join(work, "sinks-norm");
    const converted = await linearize(modelPath(), { out: dir, data: null, sinks: 4, grmNorm: true, sample: false });
    const model = await loadModel(dir);
    expect(model.info.liger).toMatchObject({
      mixer: "gla",
      windowKeys: 65,
      sinkKeys: 4,
      grmNorm: true,
      stateBytesPerSequence: converted.stateBytes,
    });
    // The normaliser's recurrence doubles the recurrent state; the sinks add 4 keys and values per layer.
    const plain = (await loadModel(out)).info.liger!.stateBytesPerSequence;
    const c = model.info;
    const sinkBytes = c.numLayers * 2 * 4 * c.numKvHeads * c.headDim * 4;
    const grmBytes = c.numLayers * c.numKvHeads * c.headDim * c.headDim * 4;
    expect(converted.stateBytes).toBe(plain + grmBytes + sinkBytes);
    const result = await model.generate("Hello", { maxTokens: 5, temperature: 0, ignoreEos: true }).result;
    expect(result.tokens).toHaveLength(5);
  });

  it("a surprise cache is saved with the model, reports its state, generates and scores on the CPU", async () => {
    const dir = join(work, "surprise");
    const converted = await linearize(modelPath(), { out: dir, data: null, surpriseKeys: 16, sample: false });
    const model = await loadModel(dir);
    expect(model.info.liger).toMatchObject({
      windowKeys: 65,
      sinkKeys: 0,
      surpriseKeys: 16,
      surpriseRepeatTolerance: 0,
      stateBytesPerSequence: converted.stateBytes,
    });
    // Per layer: the recurrence over values of one (the score reads it), and beside the 65-key
    // window 16 cached tokens per key-value head, each token with its score per head.
    const plain = (await loadModel(out)).info.liger!.stateBytesPerSequence;
    const c = model.info;
    const ones = c.numKvHeads * c.headDim * c.headDim * 4;
    const window = 2 * 65 * c.numKvHeads * c.headDim * 4;
    const withCache = (65 + 16) * c.numKvHeads * (2 * c.headDim + 1) * 4;
    expect(converted.stateBytes).toBe(plain + c.numLayers * (ones + withCache - window));
    const result = await model.generate("Hello", { maxTokens: 5, temperature: 0, ignoreEos: true }).result;
    expect(result.tokens).toHaveLength(5);
    const evaluated = await model.evaluate({ tasks: ["lambada_openai"], limit: 2, dataDir: dataDir() });
    expect(Number.isFinite(evaluated.tasks[0].metrics.perplexity)).toBe(true);
    expect(evaluated.tasks[0].metrics.perplexity).toBeGreaterThan(1);
  });

  it("learned branch weights per head train with the adapters, load back and generate", async () => {
    const dir = join(work, "learned-mix");
    const trained = await linearize(modelPath(), {
      out: dir,
      data: alpacaSlice(60),
      steps: 2,
      seqLen: 64,
      maxValSequences: 1,
      learnMix: true,
      alpha: 0,
      beta: 1,
      softmaxLayers: [1],
      sample: false,
    });
    const model = await loadModel(dir);
    const c = model.info;
    expect(c.liger).toMatchObject({ learnedHeadMix: true, alpha: 0, beta: 1, softmaxLayers: [1] });
    expect(trained.headMix).toHaveLength(c.numLayers);
    trained.headMix.forEach((m, layer) => {
      if (layer === 1) return expect(m).toBeNull();
      expect(m!.alpha).toHaveLength(c.numHeads);
      expect(m!.beta).toHaveLength(c.numHeads);
    });
    // Two optimizer steps move every head's weights away from the start (0 and 1).
    const learned = trained.headMix.filter((m) => m !== null);
    expect(learned.flatMap((m) => m!.alpha).every((a) => a !== 0)).toBe(true);
    expect(learned.flatMap((m) => m!.beta).some((b) => b !== 1)).toBe(true);
    // The weights add nothing to the decoding state.
    const plain = await linearize(modelPath(), {
      out: join(work, "fixed-mix"),
      data: null,
      softmaxLayers: [1],
      sample: false,
    });
    expect(trained.stateBytes).toBe(plain.stateBytes);
    const result = await model.generate("Hello", { maxTokens: 5, temperature: 0, ignoreEos: true }).result;
    expect(result.tokens).toHaveLength(5);
    // The edge bundle carries the weights to the WebAssembly engine, which decodes with them.
    const bundle = join(work, "learned-mix.bundle");
    await exportModel(dir, bundle, { format: "bundle", dtype: "int8" });
    const edge = await loadModel(bundle, { backend: "wasm" });
    expect(edge.info.liger).toMatchObject({ learnedHeadMix: true, alpha: 0, beta: 1, softmaxLayers: [1] });
    const edgeResult = await edge.generate("Hello", { maxTokens: 5, temperature: 0, ignoreEos: true }).result;
    expect(edgeResult.tokens).toHaveLength(5);
    await expectCode(
      linearize(modelPath(), { out: join(work, "bad-mix"), learnMix: "yes" as never }),
      "INVALID_ARGUMENT",
      /learnMix/,
    );
  });

  it("aborting mid-training rejects with ABORTED", async () => {
    const controller = new AbortController();
    const job = linearize(modelPath(), {
      out: join(work, "aborted"),
      data: alpacaSlice(60),
      steps: 50,
      seqLen: 64,
      valFraction: 0,
      sample: false,
      signal: controller.signal,
      onProgress: (e) => e.kind === "step" && controller.abort(),
    });
    await expectCode(job, "ABORTED", /aborted after 1 of 50/);
  });

  it("never deletes a folder of the user's: --out with files of its own is refused before any work", async () => {
    const mine = join(work, "users-folder");
    mkdirSync(mine, { recursive: true });
    writeFileSync(join(mine, "a.txt"), "keep");
    const events: LinearizeEvent[] = [];
    const job = linearize(modelPath(), {
      out: mine,
      data: alpacaSlice(20),
      steps: 1,
      seqLen: 32,
      valFraction: 0,
      sample: false,
      onProgress: (e) => events.push(e),
    });
    await expectCode(job, "INVALID_ARGUMENT", /a\.txt.*nothing was changed/);
    expect(readFileSync(join(mine, "a.txt"), "utf8")).toBe("keep");
    expect(readdirSync(mine)).toEqual(["a.txt"]);
    expect(events.filter((e) => e.kind === "step")).toHaveLength(0);
    // With overwrite the run goes beside the user's file, as a run folder that loads.
    const opts = { out: mine, data: alpacaSlice(20), steps: 1, seqLen: 32, valFraction: 0, sample: false as const };
    await linearize(modelPath(), { ...opts, overwrite: true });
    expect(readdirSync(mine).sort()).toEqual(["a.txt", "liger-run.json", "model", "report.html", "report.json"]);
    expect(readFileSync(join(mine, "a.txt"), "utf8")).toBe("keep");
    expect((await loadModel(mine)).info.liger).toBeTruthy();
    // A run folder is not started again by accident.
    await expectCode(linearize(modelPath(), opts), "INVALID_ARGUMENT", /holds a liger run.*--overwrite/);
  });

  it("keeps softmax attention in the layers where the base model retrieves beyond the window", async () => {
    const selectData = join(work, "select-wiki.raw");
    writeFileSync(selectData, readFileSync(join(dataDir(), "wikitext2_raw", "wiki.valid.raw"), "utf8").slice(0, 6000));
    const report = await linearize(modelPath(), {
      out: join(work, "retrieval"),
      data: null,
      window: 32,
      seqLen: 256,
      softmaxAuto: 2,
      softmaxAutoBy: "retrieval",
      selectData,
      sample: false,
    });
    const rates = report.layerRetrieval!;
    expect(rates).toHaveLength(30);
    expect(rates.every((r) => r >= 0 && r <= 1)).toBe(true);
    expect(report.layerCosts).toBeNull();
    // The two layers kept are the two of highest rate (the earlier on a tie).
    const top = rates
      .map((r, layer) => ({ r, layer }))
      .sort((a, b) => b.r - a.r || a.layer - b.layer)
      .slice(0, 2)
      .map((x) => x.layer)
      .sort((a, b) => a - b);
    expect(report.softmaxLayers).toEqual(top);
    expect(Math.max(...rates)).toBeGreaterThan(0);
    await expectCode(
      linearize(modelPath(), { out: join(work, "never"), data: null, softmaxAuto: 1, softmaxAutoBy: "kl" as never }),
      "INVALID_ARGUMENT",
      /softmaxAutoBy/,
    );
  });

  it("bad options are INVALID_ARGUMENT; the GPU engine without a GPU is DEVICE_UNAVAILABLE", async () => {
    const base = { out: join(work, "never"), data: alpacaSlice(20) };
    await expectCode(linearize(modelPath(), { ...base, window: 0 }), "INVALID_ARGUMENT", /window/);
    await expectCode(linearize(modelPath(), { ...base, mixer: "transformer" as never }), "INVALID_ARGUMENT", /mixer/);
    await expectCode(
      linearize(modelPath(), { ...base, softmaxLayers: [99] }),
      "INVALID_ARGUMENT",
      /layer 99 does not exist/,
    );
    await expectCode(linearize(modelPath(), { ...base, lora: { rank: 0 } }), "INVALID_ARGUMENT", /lora.rank/);
    await expectCode(linearize(modelPath(), { ...base, lora: { rank: 100_000 } }), "INVALID_ARGUMENT", /smaller rank/);
    await expectCode(linearize(modelPath(), { ...base, recipe: "bogus" as never }), "INVALID_ARGUMENT", /recipe/);
    await expectCode(
      linearize(modelPath(), { ...base, longContext: { steps: 0, seqLen: 4096 } }),
      "INVALID_ARGUMENT",
      /longContext/,
    );
    await expectCode(
      linearize(modelPath(), { ...base, attentionTransfer: 1.5 }),
      "INVALID_ARGUMENT",
      /attentionTransfer/,
    );
    await expectCode(linearize(modelPath(), { ...base, steps: 3, epochs: 1 }), "INVALID_ARGUMENT", /steps or epochs/);
    await expectCode(linearize(modelPath(), { ...base, softmaxAuto: 31 }), "INVALID_ARGUMENT", /softmax_auto/);
    await expectCode(linearize(modelPath(), { ...base, batch: 1_000_000 }), "INVALID_ARGUMENT", /micro_batch.*limit/);
    await expectCode(linearize(modelPath(), { ...base, sinks: -1 }), "INVALID_ARGUMENT", /sinks/);
    await expectCode(linearize(modelPath(), { ...base, sinks: 5000 }), "INVALID_ARGUMENT", /sinks/);
    await expectCode(linearize(modelPath(), { ...base, grmNorm: "yes" as never }), "INVALID_ARGUMENT", /grmNorm/);
    await expectCode(
      linearize(modelPath(), { ...base, mixer: "gsa", grmNorm: true }),
      "INVALID_ARGUMENT",
      /grm_norm.*gsa/,
    );
    await expectCode(linearize(modelPath(), { ...base, surpriseKeys: -1 }), "INVALID_ARGUMENT", /surpriseKeys/);
    await expectCode(linearize(modelPath(), { ...base, surpriseKeys: 5000 }), "INVALID_ARGUMENT", /surpriseKeys/);
    await expectCode(
      linearize(modelPath(), { ...base, mixer: "gsa", surpriseKeys: 8 }),
      "INVALID_ARGUMENT",
      /surprise_keys.*gsa/,
    );
    await expectCode(
      linearize(modelPath(), { ...base, useSwa: false, surpriseKeys: 8 }),
      "INVALID_ARGUMENT",
      /surprise_keys/,
    );
    await expectCode(linearize(modelPath(), { ...base, keepCheckpoints: 0 }), "INVALID_ARGUMENT", /keepCheckpoints/);
    await expectCode(linearize(modelPath(), { ...base, overwrite: "yes" as never }), "INVALID_ARGUMENT", /overwrite/);
    await expectCode(
      linearize(modelPath(), { ...base, surpriseKeys: 8, surpriseRepeatTolerance: 0.7 }),
      "INVALID_ARGUMENT",
      /surpriseRepeatTolerance/,
    );
    await expectCode(
      linearize(modelPath(), { ...base, surpriseRepeatTolerance: 0.05 }),
      "INVALID_ARGUMENT",
      /surpriseRepeatTolerance.*surpriseKeys/,
    );
    await expectCode(
      linearize(modelPath(), { ...base, surpriseAfterTraining: true }),
      "INVALID_ARGUMENT",
      /surpriseAfterTraining.*surpriseKeys/,
    );
    await expectCode(
      linearize(modelPath(), { ...base, surpriseKeys: 8, surpriseAfterTraining: 1 as never }),
      "INVALID_ARGUMENT",
      /surpriseAfterTraining/,
    );
    await expectCode(linearize(modelPath(), { ...base, distill: 1.5 }), "INVALID_ARGUMENT", /distill.*\[0, 1\]/);
    // Distillation runs the base model beside the one in training: the GPU engine only.
    await expectCode(linearize(modelPath(), { ...base, distill: 0.5 }), "INVALID_ARGUMENT", /GPU engine only/);
    // No NVIDIA GPU on the test machine: a typed error that points at the CPU backend.
    await expectCode(
      linearize(modelPath(), { ...base, device: "cuda" }),
      "DEVICE_UNAVAILABLE",
      /NVIDIA.*use the CPU backend/,
    );
    expect(existsSync(base.out)).toBe(false);
    await expectCode(linearize(modelPath(), { ...base, device: "tpu" as never }), "INVALID_ARGUMENT", /"auto"/);
  });

  it("gpuInfo says why there is no GPU; device auto then trains on the CPU with the short run's length", async () => {
    const gpu = gpuInfo();
    // The test machine has no NVIDIA GPU (as the DEVICE_UNAVAILABLE test above assumes).
    expect(gpu.available).toBe(false);
    if (!gpu.available) expect(gpu.reason).toMatch(/NVIDIA/);
    // Without a GPU, auto is the CPU, and the GPU recipe is not applied: steps stay as given.
    const report = await linearize(modelPath(), {
      out: join(work, "auto-device"),
      data: alpacaSlice(20),
      steps: 1,
      seqLen: 32,
      valFraction: 0,
      sample: false,
      device: "auto",
    });
    expect(report.totalSteps).toBe(1);
    expect(report.history.steps).toHaveLength(1);
  });

  it("the memory recipe sets the window, sinks, surprise cache and mix; options given win", async () => {
    // The GPU default: memory, except where a surprise cache cannot go (gsa, no window branch).
    expect(defaultGpuRecipe({})).toBe("memory");
    expect(defaultGpuRecipe({ mixer: "gsa" })).toBe("paper");
    expect(defaultGpuRecipe({ useSwa: false })).toBe("paper");
    const out = join(work, "memory-recipe");
    // The recipe's length is overridden here (steps, seqLen, batch) to keep the CPU run short;
    // on the CPU the recipe trains without its distillation (which needs the GPU engine).
    expect(RECIPES.memory.distill).toBe(0.5);
    await linearize(modelPath(), {
      out,
      data: alpacaSlice(20),
      recipe: "memory",
      steps: 1,
      seqLen: 32,
      batch: 1,
      sinks: 2,
      valFraction: 0,
      sample: false,
      device: "cpu",
    });
    const liger = (await loadModel(out)).info.liger;
    expect(liger).toMatchObject({
      windowKeys: RECIPES.memory.window,
      sinkKeys: 2,
      surpriseKeys: RECIPES.memory.surpriseKeys,
      surpriseRepeatTolerance: 0.05,
      alpha: 0,
      beta: 1,
    });
  });
});
