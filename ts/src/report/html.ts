/**
 * The report pages: `report.html` of a linearize run folder, and the page of `liger eval --html`.
 * Each is one self-contained file (inline CSS and SVG, no script, nothing fetched; the
 * Content-Security-Policy says so to the browser), built only from the report objects, so the
 * page of a run can be made again from its `report.json`.
 */
import type { Comparison, EvalReport, LinearizeReport, TaskResult } from "../types.js";
import { barChart, escapeHtml, formatNumber, lineChart, type BarGroup, type Series } from "./svg.js";

const STYLE =
  "body{font-family:sans-serif;margin:2em;max-width:60em;color:#222}" +
  "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}" +
  "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}svg{display:block;margin:0.5em 0}" +
  ".note{color:#555}.warn{color:#a60}";

/** The context lengths of the memory chart: 256 to 32K tokens. */
export const MEMORY_CONTEXTS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768];

const MIB = 2 ** 20;

/** The page of a linearize run: summary, validation, the curves over the steps, decoding memory. */
export function renderLinearizeHtml(r: LinearizeReport): string {
  const steps = r.history.steps;
  const summary = table(
    [],
    [
      ["model", escapeHtml(r.modelName)],
      ["steps", `${r.stepsDone} of ${r.totalSteps}${r.cancelled ? " (cancelled)" : ""}`],
      ["training / validation sequences", `${r.trainSequences} / ${r.valSequences}`],
      ["training time", `${formatNumber(r.trainSeconds)} s`],
      ["throughput", `${formatNumber(r.tokensPerS)} tokens/s`],
      ["softmax layers", r.softmaxLayers.length > 0 ? r.softmaxLayers.join(", ") : "none"],
      ["decoding state per sequence", `${formatNumber(r.stateBytes / MIB)} MiB`],
      ["run folder", escapeHtml(r.outDir)],
    ],
  );

  const validations: [string, LinearizeReport["baseEval"]][] = [
    ["base (softmax)", r.baseEval],
    ["Liger, untrained", r.untrainedEval],
    ["Liger, trained", r.trainedEval],
  ];
  const measured = validations.filter((v): v is [string, NonNullable<(typeof v)[1]>] => v[1] !== null);
  const validation =
    barChart({
      title: "validation perplexity: base against Liger",
      yLabel: "perplexity",
      legend: ["validation perplexity"],
      groups: measured.map(([name, e]) => ({ label: name, bars: [{ value: e.ppl }] })),
    }) +
    (measured.length > 0
      ? table(
          ["model", "loss (nats/token)", "perplexity", "tokens"],
          measured.map(([name, e]) => [name, formatNumber(e.loss), formatNumber(e.ppl), String(e.tokens)]),
        ) + `<p class="note">One pass over the validation set: no standard error is measured.</p>`
      : "");

  const losses: Series["points"] = r.losses.map((loss, i) => [i + 1, loss]);
  const loss = lineChart({
    title: "training loss",
    xLabel: "step",
    yLabel: "loss (nats/token)",
    series: [
      { name: "loss per step", points: losses },
      { name: "mean of the last 20 steps", points: movingMean(losses, 20) },
    ],
  });
  const lr = lineChart({
    title: "learning rate",
    yFromZero: true,
    xLabel: "step",
    yLabel: "learning rate",
    series: [{ name: "learning rate", points: steps.map((s) => [s.step, s.lr]) }],
  });
  const throughput = lineChart({
    title: "throughput",
    yFromZero: true,
    xLabel: "step",
    yLabel: "tokens/s",
    series: [{ name: "tokens/s", points: steps.map((s) => [s.step, s.tokensPerS]) }],
  });

  // Validations during training, against the two levels they move between.
  const stepsSpan = [Math.min(...steps.map((s) => s.step), 0), Math.max(r.totalSteps, 1)];
  const level = (e: LinearizeReport["baseEval"]): Series["points"] =>
    e ? stepsSpan.map((x) => [x, e.ppl] as [number, number]) : [];
  const overSteps = lineChart({
    title: "validation perplexity over the steps",
    xLabel: "step",
    yLabel: "perplexity",
    series: [
      { name: "Liger, trained so far", points: r.history.evals.map((e) => [e.step, e.ppl]) },
      { name: "base (softmax)", points: r.history.evals.length > 0 ? level(r.baseEval) : [] },
      { name: "Liger, untrained", points: r.history.evals.length > 0 ? level(r.untrainedEval) : [] },
    ],
  });

  const m = r.memory;
  const memory =
    m.baseBytesPerToken > 0
      ? lineChart({
          title: "decoding memory of one sequence (f32)",
          yFromZero: true,
          xLabel: "context length (tokens)",
          yLabel: "MiB",
          xScale: "log2",
          series: [
            { name: "base: KV cache", points: MEMORY_CONTEXTS.map((n) => [n, (n * m.baseBytesPerToken) / MIB]) },
            {
              name: "Liger: recurrent state" + (m.ligerBytesPerToken > 0 ? " + KV of its softmax layers" : ""),
              points: MEMORY_CONTEXTS.map((n) => [n, (m.ligerConstantBytes + n * m.ligerBytesPerToken) / MIB]),
            },
          ],
        }) +
        table(
          ["", "bytes per token", "constant bytes"],
          [
            ["base", String(m.baseBytesPerToken), "0"],
            ["Liger", String(m.ligerBytesPerToken), String(m.ligerConstantBytes)],
          ],
        )
      : "";

  // The measure behind an automatic choice of softmax layers, one bar per layer.
  const byRetrieval = r.layerRetrieval !== null;
  const measure = r.layerRetrieval ?? r.layerCosts;
  const layerChoice = measure
    ? barChart({
        title: byRetrieval
          ? "how often each layer's heads retrieve one token beyond the window (base model)"
          : "loss of converting each layer alone, untrained",
        yLabel: byRetrieval ? "fraction of queries" : "nats/token",
        legend: [byRetrieval ? "retrieval rate" : "loss increase"],
        groups: measure.map((value, layer) => ({ label: String(layer), bars: [{ value }] })),
      }) +
      `<p class="note">Softmax attention kept in layers ${r.softmaxLayers.join(", ") || "none"}: ` +
      `those of largest ${byRetrieval ? "retrieval rate" : "loss increase"}, beside any named.</p>`
    : "";

  // Learned branch weights: per Liger layer, the mean over its heads with their spread.
  const meanAndSpread = (values: number[]) => {
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const spread = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
    return { value: mean, stderr: spread };
  };
  const learnedLayers = r.headMix.flatMap((m, layer) => (m ? [{ layer, mix: m }] : []));
  const headMix =
    learnedLayers.length > 0
      ? barChart({
          title: "learned branch weights per layer: mean over the heads (±1 standard deviation)",
          yLabel: "weight",
          legend: ["recurrent (alpha)", "window (beta)"],
          groups: learnedLayers.map(({ layer, mix }) => ({
            label: String(layer),
            bars: [meanAndSpread(mix.alpha), meanAndSpread(mix.beta)],
          })),
        })
      : "";

  return page(`${r.modelName}: Liger conversion`, [
    section("summary", "Summary", summary),
    section("layer-choice", "Layers kept as softmax attention, by measurement", layerChoice),
    section("head-mix", "Learned branch weights", headMix),
    section("validation", "Validation: base against Liger", validation),
    section("loss", "Training loss", loss),
    section("learning-rate", "Learning rate", lr),
    section("validation-steps", "Validation over the steps", overSteps),
    section("throughput", "Throughput", throughput),
    section("memory", "Decoding memory against context length", memory),
  ]);
}

/**
 * The page of `liger eval --html`: the accuracy tasks as bars with ±1 standard error, one color
 * per model (base against Liger with `--compare`), the comparison table, per model tables.
 */
export function renderEvalHtml(reports: EvalReport[], comparison?: Comparison): string {
  const accuracyTasks = [
    ...new Set(reports.flatMap((r) => r.tasks.filter((t) => t.higherIsBetter).map((t) => t.task))),
  ];
  const groups: BarGroup[] = accuracyTasks.map((task) => ({
    label: task,
    bars: reports.map((r) => {
      const t = r.tasks.find((x) => x.task === task);
      return { value: t?.metrics[t.primaryMetric] ?? NaN, stderr: stderrOf(t) };
    }),
  }));
  const chart = barChart({
    title: "primary metric per task (±1 standard error)",
    yLabel: "accuracy",
    legend: reports.map((r) => r.model),
    groups,
  });
  const sections = [section("tasks", "Accuracy tasks", chart)];
  if (comparison) sections.push(section("comparison", "Base against linearized", comparisonHtml(comparison)));
  reports.forEach((r, i) => sections.push(section(`model-${i + 1}`, r.model, modelHtml(r))));
  return page("Evaluation", sections);
}

function comparisonHtml(c: Comparison): string {
  const rows = c.rows.map((row) => [
    escapeHtml(row.task),
    escapeHtml(row.metric),
    formatNumber(row.base),
    formatNumber(row.linearized),
    row.recovery === null ? "n/a" : formatNumber(row.recovery),
  ]);
  const definitions = Object.entries(c.definitions)
    .map(([k, v]) => `<li><b>${escapeHtml(k)}</b>: ${escapeHtml(v)}</li>`)
    .join("");
  return (
    `<p>${escapeHtml(c.baseModel)} (base) against ${escapeHtml(c.linearizedModel)} (linearized)</p>` +
    table(["task", "metric", "base", "linearized", "recovery"], rows) +
    `<p>ratio of averages: ${formatNumber(c.ratioOfAverages ?? NaN)} · mean of ratios: ${formatNumber(c.meanOfRatios ?? NaN)}</p>` +
    `<ul>${definitions}</ul>`
  );
}

function modelHtml(r: EvalReport): string {
  let out = `<p>${formatNumber(r.seconds)} s, ${r.tokensProcessed} tokens, ${formatNumber(r.tokensPerSecond)} tokens/s</p>`;
  const rows = r.tasks.flatMap((t) =>
    Object.entries(t.metrics)
      // Standard errors are shown beside their metric; "/" marks per-subtask breakdowns.
      .filter(([name]) => !name.endsWith("_stderr") && !name.includes("/"))
      .map(([name, value]) => {
        const se = t.metrics[`${name}_stderr`];
        const shown = formatNumber(value) + (se === undefined ? "" : ` ± ${formatNumber(se)}`);
        return [
          escapeHtml(t.task),
          String(t.n),
          escapeHtml(name),
          name === t.primaryMetric ? `<b>${shown}</b>` : shown,
          formatNumber(t.tokensPerSecond),
        ];
      }),
  );
  out += table(["task", "n", "metric", "value", "tokens/s"], rows);
  for (const t of r.tasks)
    for (const w of t.warnings) out += `<p class="warn">${escapeHtml(t.task)}: ${escapeHtml(w)}</p>`;
  if (r.passkey) {
    out +=
      `<h3>Passkey retrieval (${escapeHtml(r.passkey.method)}): accuracy ${formatNumber(r.passkey.accuracy)}</h3>` +
      table(
        ["length", "depth", "accuracy", "trials"],
        r.passkey.cells.map((c) => [
          String(c.length),
          `${Math.round(c.depth * 100)}%`,
          formatNumber(c.accuracy),
          String(c.trials),
        ]),
      );
  }
  return out;
}

/** The standard error the core reports beside a task's primary metric (`acc_stderr` beside `acc`). */
function stderrOf(t: TaskResult | undefined): number | undefined {
  return t?.metrics[`${t.primaryMetric}_stderr`];
}

/** The mean of each point and the `n - 1` before it. */
export function movingMean(points: [number, number][], n: number): [number, number][] {
  return points.map(([x], i) => {
    const window = points.slice(Math.max(0, i + 1 - n), i + 1);
    return [x, window.reduce((sum, [, y]) => sum + y, 0) / window.length];
  });
}

function page(title: string, sections: string[]): string {
  return (
    `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">` +
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">` +
    `<title>${escapeHtml(title)}</title><style>${STYLE}</style></head><body>` +
    `<h1>${escapeHtml(title)}</h1>${sections.join("")}</body></html>\n`
  );
}

/** A section always appears, so that a reader sees what the run did not measure. */
function section(id: string, heading: string, body: string): string {
  const content = body === "" ? `<p class="note">Nothing to show: this run measured none.</p>` : body;
  return `<section id="${escapeHtml(id)}"><h2>${escapeHtml(heading)}</h2>${content}</section>`;
}

/** A table of cells that are already markup (callers escape untrusted text); no head row when `head` is empty. */
function table(head: string[], rows: string[][]): string {
  const th = head.length > 0 ? `<tr>${head.map((h) => `<th>${escapeHtml(h)}</th>`).join("")}</tr>` : "";
  const body = rows.map((row) => `<tr>${row.map((cell) => `<td>${cell}</td>`).join("")}</tr>`).join("");
  return `<table>${th}${body}</table>`;
}
