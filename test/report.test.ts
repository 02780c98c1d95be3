/**
 * The report pages (report.html of a linearize run, `liger eval --html`): the builder on fixed
 * synthetic reports, then the pages opened in headless Chromium (Debian's `chromium`, installed
 * by setup) with playwright-core.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { renderEvalHtml, renderLinearizeHtml, type EvalReport, type LinearizeReport } from "../ts/dist/index.js";
import { escapeHtml, formatNumber, lineChart } from "../ts/dist/report/svg.js";

const HOSTILE = `<script>alert("x")</script>&'`;

/** A run of 40 steps with validations every 10, a hybrid model, and a name that is markup. */
function linearizeReport(): LinearizeReport {
  const steps = Array.from({ length: 40 }, (_, i) => ({
    step: i + 1,
    loss: 3 - i * 0.02,
    lr: i < 5 ? (1e-3 * (i + 1)) / 5 : 1e-3,
    gradNorm: 1,
    tokensPerS: 40 + (i % 3),
  }));
  return {
    modelName: `SmolLM2 ${HOSTILE}`,
    trainRecords: 500,
    valRecords: 10,
    skippedRows: 0,
    trainSequences: 160,
    valSequences: 4,
    baseEval: { loss: 2.1, ppl: 8.166, tokens: 1024 },
    untrainedEval: { loss: 3.4, ppl: 29.96, tokens: 1024 },
    trainedEval: { loss: 2.5, ppl: 12.18, tokens: 1024 },
    stepsDone: 40,
    totalSteps: 40,
    losses: steps.map((s) => s.loss),
    trainSeconds: 245.5,
    tokensPerS: 41.7,
    cancelled: false,
    outDir: "runs/a&b",
    sample: "Blue.",
    stateBytes: 3 * 2 ** 20,
    softmaxLayers: [7, 15],
    layerCosts: null,
    layerRetrieval: Array.from({ length: 24 }, (_, layer) => (layer === 7 || layer === 15 ? 0.04 : 0.002)),
    attentionTransfer: null,
    longContext: null,
    headMix: [{ alpha: [0.125, 0.375], beta: [0.875, 0.625] }, null],
    history: { steps, evals: [10, 20, 30, 40].map((step) => ({ step, loss: 2.5, ppl: 30 - step / 2 })) },
    memory: { baseBytesPerToken: 46080, ligerConstantBytes: 3 * 2 ** 20, ligerBytesPerToken: 2048 },
  };
}

function evalReport(model: string, acc: number): EvalReport {
  const task = (name: string, metrics: Record<string, number>, primaryMetric: string, higherIsBetter: boolean) => ({
    task: name,
    source: `${name}.jsonl`,
    n: 100,
    metrics,
    primaryMetric,
    higherIsBetter,
    warnings: name === "wikitext" ? [`short <document>`] : [],
    stats: { requests: 100, forwards: 100, truncated: 0, tokensProcessed: 5000, seconds: 10 },
    tokensPerSecond: 500,
  });
  return {
    model,
    options: { maxLength: null, limit: 100, seed: 1234, addBos: false, perplexityWindow: null },
    tasks: [
      task("arc_easy", { acc, acc_stderr: 0.0432, acc_norm: acc - 0.05, acc_norm_stderr: 0.04 }, "acc", true),
      task("hellaswag", { acc: acc - 0.1, acc_norm: acc - 0.08, acc_norm_stderr: 0.0411 }, "acc_norm", true),
      task("wikitext", { word_perplexity: 33.61 }, "word_perplexity", false),
    ],
    passkey: {
      method: "greedy",
      accuracy: 0.5,
      cells: [{ length: 1024, depth: 0.5, trials: 2, correct: 1, accuracy: 0.5 }],
    },
    seconds: 30,
    tokensProcessed: 15000,
    tokensPerSecond: 500,
  };
}

function evalPage(): string {
  const base = evalReport(`base ${HOSTILE}`, 0.6125);
  const liger = evalReport("liger-run", 0.5875);
  const comparison = {
    baseModel: base.model,
    linearizedModel: liger.model,
    rows: [
      { task: "arc_easy", metric: "acc", higherIsBetter: true, base: 0.6125, linearized: 0.5875, recovery: 0.9592 },
      {
        task: "hellaswag",
        metric: "acc_norm",
        higherIsBetter: true,
        base: 0.5325,
        linearized: 0.5075,
        recovery: 0.953,
      },
      {
        task: "wikitext",
        metric: "word_perplexity",
        higherIsBetter: false,
        base: 33.61,
        linearized: 35.4,
        recovery: null,
      },
    ],
    ratioOfAverages: 0.9561,
    meanOfRatios: 0.9561,
    definitions: { recovery: "linearized / base for accuracies" },
  };
  return renderEvalHtml([base, liger], comparison);
}

const svgCount = (html: string) => html.match(/<svg/g)?.length ?? 0;

describe("report pages, as markup", () => {
  it("the linearize page has every section, its numbers, and escapes the model name", () => {
    const html = renderLinearizeHtml(linearizeReport());
    const ids = [
      "summary",
      "layer-choice",
      "head-mix",
      "validation",
      "loss",
      "learning-rate",
      "validation-steps",
      "throughput",
    ];
    for (const id of [...ids, "memory"]) {
      expect(html).toContain(`<section id="${id}">`);
    }
    // Bars of the layer choice, the learned branch weights and the validation; the loss,
    // learning rate, validation over steps, throughput, memory.
    expect(svgCount(html)).toBe(8);
    expect(html).toContain("retrieval rate");
    // Layer 0's mean weights over its two heads, each with its spread (the softmax layer 1 has none).
    expect(html).toContain("recurrent (alpha)");
    expect(html).toContain("0.25 ± 0.125");
    expect(html).toContain("0.75 ± 0.125");
    expect(html).toContain("8.166");
    expect(html).toContain("29.96");
    expect(html).toContain("12.18");
    expect(html).toContain("41.7 tokens/s");
    expect(html).toContain("7, 15");
    expect(html).toContain("46080");
    expect(html).not.toContain("<script");
    expect(html).toContain(escapeHtml(`SmolLM2 ${HOSTILE}`));
    expect(html).toContain("runs/a&amp;b");
    expect(html).not.toMatch(/NaN|Infinity/);
    // No resource from elsewhere: nothing with a src or an href.
    expect(html).not.toMatch(/\b(src|href)=/);
  });

  it("a run that measured nothing still has every section, each saying so", () => {
    const empty: LinearizeReport = {
      ...linearizeReport(),
      baseEval: null,
      untrainedEval: null,
      trainedEval: null,
      losses: [],
      stepsDone: 0,
      history: { steps: [], evals: [] },
      memory: { baseBytesPerToken: 0, ligerConstantBytes: 0, ligerBytesPerToken: 0 },
      layerRetrieval: null,
      headMix: [],
    };
    const html = renderLinearizeHtml(empty);
    expect(svgCount(html)).toBe(0);
    expect(html.match(/Nothing to show/g)).toHaveLength(8);
    expect(html).not.toMatch(/NaN|Infinity/);
  });

  it("the eval page draws standard errors as whiskers, escapes names, and shows the comparison", () => {
    const html = evalPage();
    // Both models on two accuracy tasks: each bar has its whisker; wikitext (a perplexity) is a table row.
    expect(html.match(/class="stderr"/g)).toHaveLength(4);
    expect(html.match(/<rect class="bar"/g)).toHaveLength(4);
    expect(html).toContain("0.6125 ± 0.0432");
    expect(html).toContain('<section id="comparison">');
    expect(html).toContain("0.9592");
    expect(html).toContain("33.61");
    expect(html).toContain("short &lt;document&gt;");
    expect(html).toContain("Passkey retrieval (greedy)");
    expect(html).not.toContain("<script");
    expect(html).toContain(escapeHtml(`base ${HOSTILE}`));
  });

  it("numbers, escaping and degenerate charts", () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe("&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    expect([0.001, 12.3456, 123456.7, NaN, Infinity].map(formatNumber)).toEqual([
      "0.001",
      "12.35",
      "123,457",
      "n/a",
      "n/a",
    ]);
    expect(lineChart({ title: "t", xLabel: "x", yLabel: "y", series: [{ name: "s", points: [[1, NaN]] }] })).toBe("");
    // One point, flat: still a finite drawing.
    const one = lineChart({ title: "t", xLabel: "x", yLabel: "y", series: [{ name: "s", points: [[3, 2]] }] });
    expect(one).toContain("<circle");
    expect(one).not.toMatch(/NaN|Infinity/);
  });
});

const chromiumPath = process.env.LIGER_CHROMIUM || "/usr/bin/chromium";

describe("report pages, in headless Chromium", () => {
  const work = mkdtempSync(join(tmpdir(), "liger-report-"));
  let browser: Browser;
  beforeAll(async () => {
    // As in the browser test of the wasm engine: setup installs Chromium, so missing is a failure.
    if (!existsSync(chromiumPath))
      throw new Error(
        `Chromium is missing at ${chromiumPath}: run scripts/setup.sh (apt install chromium) or set LIGER_CHROMIUM`,
      );
    browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu"] });
  });
  afterAll(async () => {
    await browser?.close();
    rmSync(work, { recursive: true, force: true });
  });

  for (const [name, render, charts] of [
    ["linearize", () => renderLinearizeHtml(linearizeReport()), 8],
    ["eval", evalPage, 1],
  ] as const) {
    it(`the ${name} page renders from a file with no errors, no requests, and drawn charts`, async () => {
      const file = join(work, `${name}.html`);
      writeFileSync(file, render());
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning") problems.push(m.text());
      });
      page.on("pageerror", (e) => problems.push(e.message));
      const requests: string[] = [];
      page.on("request", (r) => requests.push(r.url()));
      await page.goto(pathToFileURL(file).href, { waitUntil: "load" });

      const drawn = await page.$$eval("svg", (svgs) =>
        svgs.map((svg) => {
          const box = svg.getBoundingClientRect();
          const marks = Array.from(svg.querySelectorAll("polyline, rect.bar, circle"));
          return {
            width: box.width,
            height: box.height,
            marks: marks.length,
            // A mark with an area or a length on screen was really drawn, not parsed and dropped.
            visible: marks.filter((m) => {
              const b = (m as SVGGraphicsElement).getBBox();
              return b.width > 0 || b.height > 0;
            }).length,
          };
        }),
      );
      expect(problems).toEqual([]);
      expect(requests).toEqual([pathToFileURL(file).href]);
      expect(drawn).toHaveLength(charts);
      for (const svg of drawn) {
        expect(svg.width).toBeGreaterThan(100);
        expect(svg.height).toBeGreaterThan(100);
        expect(svg.visible).toBeGreaterThan(0);
      }
      expect(await page.title()).not.toBe("");
      // The hostile model name is text on the page, not markup.
      expect(await page.locator("script").count()).toBe(0);
      expect(await page.locator("h1").innerText()).toMatch(name === "linearize" ? /<script>alert/ : /Evaluation/);
      await page.close();
    });
  }
});
