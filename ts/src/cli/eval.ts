/**
 * `liger eval`: score a model (and optionally a second one to compare with) on zero-shot
 * tasks, perplexity of a file, and passkey retrieval; print tables, write JSON and HTML.
 */
import type { Command } from "commander";

import {
  compareReports,
  writeFileAtomically,
  type Comparison,
  type EvalReport,
  type EvaluateOptions,
  type PerplexityResult,
} from "../eval.js";
import { LigerError } from "../errors.js";
import type { LigerModel } from "../model.js";
import { renderEvalHtml } from "../report/html.js";
import { loadModelWithProgress, parseNumber } from "./common.js";
import { TaskProgress } from "./job-progress.js";

interface EvalCliOptions {
  model?: string;
  compare?: string;
  tasks?: string;
  limit?: number;
  seed?: number;
  data?: string;
  maxLength?: number;
  window?: number;
  ppl?: string;
  passkey?: string;
  passkeyTrials?: number;
  passkeyDepths?: string;
  passkeyFiller?: string;
  json?: string;
  html?: string;
  device?: string;
}

export function registerEval(program: Command): void {
  program
    .command("eval")
    .description(
      "evaluate a model (a .gguf, a checkpoint, or a Liger checkpoint) on zero-shot tasks, perplexity and passkey retrieval",
    )
    .option("-m, --model <path>", "the model to evaluate (default: SmolLM2-135M-Instruct)")
    .option(
      "--compare <path>",
      "a second model (e.g. the Liger checkpoint of --model), scored the same way, with recovery",
    )
    .option(
      "--tasks <list>",
      "comma-separated tasks (default arc_easy,lambada_openai; 'none' for only --ppl/--passkey)",
    )
    .option("--limit <n>", "score a fixed random subset of n items per task", parseNumber("limit"))
    .option("--seed <n>", "seed of the subset (default 1234)", parseNumber("seed"))
    .option("--data <dir>", "task data folder (default: $LIGER_DATA_DIR, else ../shared/data next to the repository)")
    .option("--max-length <n>", "longest input scored at once", parseNumber("max-length"))
    .option("--window <n>", "perplexity window in tokens (default: the model's context)", parseNumber("window"))
    .option("--ppl <file>", "also report the rolling perplexity of this text file")
    .option("--passkey <lengths>", "passkey retrieval at these comma-separated prompt lengths, e.g. 1024,2048")
    .option("--passkey-trials <n>", "passkey prompts per length and depth (default 1)", parseNumber("passkey-trials"))
    .option(
      "--passkey-depths <list>",
      "comma-separated depths of the key in the filler, as fractions (default 0.1,0.3,0.5,0.7,0.9)",
    )
    .option(
      "--passkey-filler <file>",
      "fill the passkey prompts with this text file's sentences (e.g. wiki.test.raw) instead of the repeated standard filler",
    )
    .option("--device <device>", "where the tasks and passkey are scored: cpu, or cuda (the first NVIDIA GPU)", "cpu")
    .option("--json <file>", "write the reports (and comparison) as JSON")
    .option("--html <file>", "write a self-contained HTML page of the results")
    .action(async (options: EvalCliOptions) => {
      const tasks = parseList(options.tasks ?? "arc_easy,lambada_openai", "tasks");
      const passkey =
        options.passkey === undefined ? undefined : parseList(options.passkey, "passkey").map(parseNumber("passkey"));
      const paths = [options.model, ...(options.compare ? [options.compare] : [])];
      const results: { report?: EvalReport; perplexity?: PerplexityResult; model: LigerModel }[] = [];
      const controller = new AbortController();
      const onSigint = () => (controller.signal.aborted ? process.exit(130) : controller.abort());
      process.on("SIGINT", onSigint);
      try {
        for (const path of paths) {
          const model = await loadModelWithProgress({ model: path });
          const progress = new TaskProgress();
          try {
            const report =
              tasks.length > 0 || passkey
                ? await model.evaluate({
                    tasks,
                    limit: options.limit,
                    seed: options.seed,
                    dataDir: options.data,
                    maxLength: options.maxLength,
                    window: options.window,
                    passkey,
                    passkeyTrials: options.passkeyTrials,
                    passkeyDepths:
                      options.passkeyDepths === undefined
                        ? undefined
                        : parseList(options.passkeyDepths, "passkey-depths").map(parseNumber("passkey-depths")),
                    passkeyFiller: options.passkeyFiller,
                    device: options.device as EvaluateOptions["device"],
                    onProgress: progress.update,
                    signal: controller.signal,
                  })
                : undefined;
            const perplexity = options.ppl
              ? await model.perplexity({ file: options.ppl }, { window: options.window, signal: controller.signal })
              : undefined;
            results.push({ report, perplexity, model });
          } finally {
            progress.stop();
          }
        }
      } finally {
        process.off("SIGINT", onSigint);
      }
      const [a, b] = results;
      const comparison =
        a?.report && b?.report && a.report.tasks.length > 0 ? compareReports(a.report, b.report) : undefined;
      const reports = results.flatMap((r) => (r.report ? [r.report] : []));
      // The files first: a scored run is never lost to a problem in printing it.
      if (options.json) {
        const perplexities = results.map((r) => ({ model: r.model.path, perplexity: r.perplexity ?? null }));
        writeFileAtomically(
          options.json,
          `${JSON.stringify({ reports, comparison: comparison ?? null, perplexities }, null, 2)}\n`,
        );
        process.stderr.write(`wrote ${options.json}\n`);
      }
      if (options.html) {
        writeFileAtomically(options.html, renderEvalHtml(reports, comparison));
        process.stderr.write(`wrote ${options.html}\n`);
      }
      for (const { report, perplexity, model } of results) {
        process.stdout.write(
          `\n${model.info.name}${model.info.liger ? ` (liger ${model.info.liger.mixer})` : ""}  [${model.path}]\n`,
        );
        if (report) process.stdout.write(formatReport(report));
        if (perplexity) process.stdout.write(formatPerplexity(options.ppl!, perplexity));
      }
      if (comparison) process.stdout.write(formatComparison(comparison));
      if (a?.perplexity && b?.perplexity) {
        const ratio = a.perplexity.tokenPerplexity / b.perplexity.tokenPerplexity;
        process.stdout.write(`perplexity recovery (A / B token perplexity): ${fmt(ratio)}\n`);
      }
    });
}

function parseList(value: string, name: string): string[] {
  if (value.trim() === "none") return [];
  const items = value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (items.length === 0)
    throw new LigerError("INVALID_ARGUMENT", `--${name} expects a comma-separated list, got ${JSON.stringify(value)}`);
  return items;
}

/** A score for a table; "n/a" where there is none (JSON turns a ratio over a zero score into null). */
export const fmt = (v: number | null | undefined) =>
  v === undefined || v === null || !Number.isFinite(v) ? "n/a" : Math.abs(v) >= 100 ? v.toFixed(2) : v.toFixed(4);

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n") + "\n";
}

/** One row per task: n, the primary metric (with its standard error), other metrics, speed. */
export function formatReport(report: EvalReport): string {
  const rows = report.tasks.map((t) => {
    const primary = t.metrics[t.primaryMetric];
    const stderr = t.metrics[`${t.primaryMetric}_stderr`];
    const others = Object.entries(t.metrics)
      .filter(([k]) => k !== t.primaryMetric && !k.endsWith("_stderr") && !k.includes("/"))
      .map(([k, v]) => `${k} ${fmt(v)}`)
      .join(", ");
    return [
      t.task,
      String(t.n),
      t.primaryMetric,
      `${fmt(primary)}${stderr === undefined ? "" : ` ± ${fmt(stderr)}`}`,
      others,
      t.tokensPerSecond.toFixed(0),
    ];
  });
  let out = rows.length > 0 ? table(["task", "n", "metric", "value", "also", "tokens/s"], rows) : "";
  for (const t of report.tasks) for (const w of t.warnings) out += `warning (${t.task}): ${w}\n`;
  if (report.passkey) {
    out += `passkey retrieval (${report.passkey.method}): accuracy ${fmt(report.passkey.accuracy)}\n`;
    out += table(
      ["length", "depth", "accuracy", "trials"],
      report.passkey.cells.map((c) => [
        String(c.length),
        `${(c.depth * 100).toFixed(0)}%`,
        fmt(c.accuracy),
        String(c.trials),
      ]),
    );
  }
  return out;
}

function formatPerplexity(file: string, p: PerplexityResult): string {
  return (
    `perplexity of ${file}: token ${fmt(p.tokenPerplexity)}, word ${fmt(p.wordPerplexity)}, ` +
    `bits/byte ${fmt(p.bitsPerByte)} (${p.tokens} tokens, ${p.windows} windows of ${p.window})\n`
  );
}

export function formatComparison(c: Comparison): string {
  let out = `\nrecovery: ${c.linearizedModel} (B) against ${c.baseModel} (A)\n`;
  out += table(
    ["task", "metric", "A", "B", "recovery"],
    c.rows.map((r) => [r.task, r.metric, fmt(r.base), fmt(r.linearized), fmt(r.recovery)]),
  );
  out += `ratio of averages: ${fmt(c.ratioOfAverages ?? NaN)}   mean of ratios: ${fmt(c.meanOfRatios ?? NaN)}\n`;
  out += "  recovery: B / A for accuracies, A / B for perplexities (1 = fully recovered)\n";
  out += "  ratio of averages: mean of B's scores / mean of A's scores, over the accuracy tasks\n";
  out += "  mean of ratios: mean of the per-task recoveries, over the accuracy tasks\n";
  return out;
}
