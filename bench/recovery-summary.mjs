#!/usr/bin/env node
// Gathers the JSON files of bench/recovery.sh (one folder) into the rows of bench/recovery.json
// and a Markdown table for bench/RESULTS.md:
//
//   node bench/recovery-summary.mjs OUT_DIR [--json bench/recovery.json] [--device "NVIDIA H100"] [--level quick|full|memory]
//
// The base model's results are the files named base.*; every other name is a recipe. With --json,
// the charts of bench/recovery-chart.mjs are redrawn beside it (bench/recovery.json -> bench/recovery.html).
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeRecoveryChart } from "./recovery-chart.mjs";

const [dir, ...rest] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node bench/recovery-summary.mjs OUT_DIR [--json FILE] [--device NAME] [--level quick|full|memory]");
  process.exit(2);
}
const flag = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const read = (name) => {
  try {
    return JSON.parse(readFileSync(join(dir, name), "utf8"));
  } catch {
    return undefined;
  }
};
const taskMetric = (file, task, metric) => {
  for (const report of file?.reports ?? []) {
    const t = report.tasks.find((x) => x.task === task);
    if (t && t.metrics[metric] !== undefined) return { value: t.metrics[metric], n: t.n };
  }
  return undefined;
};

/** The measures of one name (base or a recipe), from whichever of its files exist. */
function measures(name) {
  const fileNames = readdirSync(dir).filter((f) => f.startsWith(`${name}.`) && f.endsWith(".json"));
  const files = fileNames.map((f) => read(f));
  const find = (task, metric) => files.map((f) => taskMetric(f, task, metric)).find((v) => v !== undefined);
  const wikitext = (window) => taskMetric(read(`${name}.wikitext${window}.json`), "wikitext", "word_perplexity")?.value ?? null;
  // passkey_<n>k: the standard filler; passkey_wiki_<n>k: WikiText-2 sentences as the filler
  // (NAME.passkey-wiki.json), where the needle is not the one thing that stands out.
  const passkey = {};
  for (const [i, f] of files.entries()) {
    const prefix = fileNames[i].includes(".passkey-wiki.") ? "passkey_wiki" : "passkey";
    for (const report of f?.reports ?? []) {
      for (const cell of report.passkey?.cells ?? []) {
        const key = `${prefix}_${cell.length / 1024}k`;
        passkey[key] = passkey[key] ?? { found: 0, of: 0 };
        passkey[key].found += cell.correct;
        passkey[key].of += cell.trials;
      }
    }
  }
  const value = (task, metric) => find(task, metric)?.value ?? null;
  return {
    hellaswag: value("hellaswag", "acc_norm"),
    hellaswag_n: find("hellaswag", "acc_norm")?.n ?? null,
    arc_easy: value("arc_easy", "acc"),
    arc_challenge: value("arc_challenge", "acc_norm"),
    lambada_acc: value("lambada_openai", "acc"),
    lambada_ppl: value("lambada_openai", "perplexity"),
    lambada_n: find("lambada_openai", "acc")?.n ?? null,
    wikitext_ppl_1024: wikitext(1024),
    wikitext_ppl_2048: wikitext(2048),
    wikitext_ppl_4096: wikitext(4096),
    ...Object.fromEntries(Object.entries(passkey).map(([k, v]) => [k, v.found])),
    passkey_trials_per_length: Object.entries(passkey).find(([k]) => !k.startsWith("passkey_wiki"))?.[1].of ?? null,
    passkey_wiki_trials_per_length: Object.entries(passkey).find(([k]) => k.startsWith("passkey_wiki"))?.[1].of ?? null,
  };
}

const names = [...new Set(readdirSync(dir).filter((f) => f.endsWith(".train.json")).map((f) => f.slice(0, -".train.json".length)))].sort();
const base = measures("base");
const rows = names.map((name) => {
  const train = read(`${name}.train.json`);
  const run = read(`${name}.run.json`);
  return {
    recipe: name,
    command: `bench/recovery.sh ${name} ${flag("--level") ?? "quick"} ${run?.args ?? ""}`.trim(),
    evaluation: flag("--level") ?? "quick",
    softmaxLayers: train?.softmaxLayers ?? [],
    layerCosts: train?.layerCosts ?? null,
    layerRetrieval: train?.layerRetrieval ?? null,
    tokens: train ? Math.round(train.tokensPerS * train.trainSeconds) : null,
    trainSeconds: train?.trainSeconds ?? null,
    gpuMinutes: run ? run.wallMs / 60000 : null,
    stateBytes: train?.stateBytes ?? null,
    device: flag("--device") ?? null,
    base,
    liger: measures(name),
  };
});

const out = flag("--json");
if (out) writeFileSync(out, `${JSON.stringify(rows, null, 2)}\n`);

const f = (v, digits = 3) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(digits) : String(v));
const cols = [
  ["HellaSwag", "hellaswag", 3],
  ["ARC-e", "arc_easy", 3],
  ["ARC-c", "arc_challenge", 3],
  ["LAMBADA acc", "lambada_acc", 3],
  ["LAMBADA ppl", "lambada_ppl", 1],
  ["WikiText 1024", "wikitext_ppl_1024", 1],
  ["WikiText 2048", "wikitext_ppl_2048", 1],
  ["WikiText 4096", "wikitext_ppl_4096", 1],
  ["passkey 1K", "passkey_1k", 0],
  ["passkey 2K", "passkey_2k", 0],
  ["passkey 4K", "passkey_4k", 0],
  ["passkey 8K", "passkey_8k", 0],
  ["passkey, WikiText filler, 1K", "passkey_wiki_1k", 0],
  ["passkey, WikiText filler, 2K", "passkey_wiki_2k", 0],
  ["passkey, WikiText filler, 4K", "passkey_wiki_4k", 0],
];
const used = cols.filter(([, key]) => base[key] !== null && base[key] !== undefined || rows.some((r) => r.liger[key] != null));
const header = ["recipe", "softmax layers", "tokens", "GPU min", ...used.map(([h]) => h), "state/seq"];
const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`];
lines.push(`| base | all | – | – | ${used.map(([, k, d]) => f(base[k], d)).join(" | ")} | KV cache |`);
for (const r of rows) {
  const state = r.stateBytes === null ? "–" : `${(r.stateBytes / 2 ** 20).toFixed(2)} MiB`;
  lines.push(
    `| ${r.recipe} | ${r.softmaxLayers.join(",") || "none"} | ${r.tokens === null ? "–" : `${(r.tokens / 1e6).toFixed(1)}M`} | ${f(r.gpuMinutes, 1)} | ${used.map(([, k, d]) => f(r.liger[k], d)).join(" | ")} | ${state} |`,
  );
}
console.log(lines.join("\n"));

if (out) writeRecoveryChart(out, `${out.replace(/\.json$/i, "")}.html`);
