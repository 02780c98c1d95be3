// Usage: node bench/recovery-chart.mjs [IN.json] [OUT.html]  (default: bench/recovery.json -> bench/recovery.html)
//
// Draws the rows of bench/recovery.json (written by bench/recovery-summary.mjs) as one
// self-contained HTML page: per measure a horizontal bar chart with one bar per recipe (accuracy
// and perplexity as ratios against the base, passkey as found of N, decode state in MiB) and a
// table that repeats every number with the row's command. No dependencies, no scripts, no
// network; the output depends only on the input, so it diffs cleanly.
import { readFileSync, writeFileSync } from "node:fs";
import { basename, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const DEFAULT_JSON = fileURLToPath(new URL("./recovery.json", import.meta.url));
export const DEFAULT_HTML = fileURLToPath(new URL("./recovery.html", import.meta.url));

/** The issue's perplexity targets: liger at most this many times the base's perplexity. */
const PPL_TARGETS = { lambada: 1.15, wikitext: 1.1 };

const ACCURACY = [
  ["HellaSwag", "hellaswag", "hellaswag_n"],
  ["ARC-e", "arc_easy", null],
  ["ARC-c", "arc_challenge", null],
  ["LAMBADA accuracy", "lambada_acc", "lambada_n"],
];

const COLORS = {
  accuracy: "#4c78a8",
  within: "#54a24b",
  above: "#f58518",
  passkey: "#4c78a8",
  state: "#72b7b2",
  base: "#333",
  target: "#d62728",
};

/** Escapes text for HTML and SVG (element content and quoted attributes). */
export const esc = (value) =>
  String(value).replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const fixed = (v, digits) => (num(v) === null ? "–" : v.toFixed(digits));
const ratio = (liger, base) => (num(liger) !== null && num(base) !== null && base > 0 ? liger / base : null);
const mib = (bytes) => (num(bytes) === null ? null : bytes / 2 ** 20);
/** Drops float noise from tick values: 0.30000000000000004 -> "0.3". */
const tickText = (t) => String(Number(t.toFixed(6)));

/** Trials per passkey length: as recorded, else 5 for a quick screen and 15 for full (and memory). */
function trialsOf(side, evaluation, field = "passkey_trials_per_length") {
  const recorded = num(side?.[field]);
  if (recorded !== null && recorded > 0) return recorded;
  const level = String(evaluation ?? "");
  if (/^quick\b/.test(level)) return 5;
  if (/^(full|memory)\b/.test(level)) return 15;
  return null;
}

/** Keys of the base/liger objects matching a pattern, ordered by their captured number. */
function keysLike(rows, pattern) {
  const found = new Map();
  for (const row of rows) {
    for (const side of [row.base, row.liger]) {
      for (const key of Object.keys(side ?? {})) {
        const m = pattern.exec(key);
        if (m) found.set(key, Number(m[1]));
      }
    }
  }
  return [...found].sort((a, b) => a[1] - b[1]);
}

const passkeyLength = (k) => (k >= 1 ? `${tickText(k)}K` : `${tickText(k * 1024)}`);

/**
 * The measures, each with how to read one row: `bar` is the bar's length in axis units (null: no
 * bar), `label` the text at its end, `cell` the table's HTML for the row.
 */
function measures(rows) {
  const list = [];
  for (const [name, key, nKey] of ACCURACY) {
    list.push({
      group: "accuracy",
      name,
      title: `${name}: recovery against the base`,
      subtitle: "liger ÷ base accuracy, higher is better; the line at 1 is the base",
      axis: "accuracy ratio (liger ÷ base)",
      refs: [{ at: 1, label: "base 1.00×", color: COLORS.base, side: "end" }],
      read(row) {
        const [l, b] = [num(row.liger?.[key]), num(row.base?.[key])];
        const r = ratio(l, b);
        const n = nKey ? num(row.liger?.[nKey]) : null;
        return {
          bar: r,
          label: r === null ? "–" : `${r.toFixed(3)}×`,
          color: COLORS.accuracy,
          has: l !== null || b !== null,
          cell: ratioCell(r, 3, `${fixed(l, 3)} / ${fixed(b, 3)}${n === null ? "" : ` (n ${n})`}`),
        };
      },
    });
  }
  const perplexity = [
    ["LAMBADA perplexity", "lambada_ppl", PPL_TARGETS.lambada, "LAMBADA"],
    ...keysLike(rows, /^wikitext_ppl_(\d+)$/).map(([key, w]) => [
      `WikiText-2 perplexity, ${w}-token window`,
      key,
      PPL_TARGETS.wikitext,
      `WikiText ${w}`,
    ]),
  ];
  for (const [title, key, target, name] of perplexity) {
    list.push({
      group: "perplexity",
      name: name === "LAMBADA" ? "LAMBADA ppl" : name,
      title: `${title}: ratio to the base`,
      subtitle: `liger ÷ base perplexity, lower is better; target at most ${target.toFixed(2)}× (green: met, orange: missed)`,
      axis: "perplexity ratio (liger ÷ base)",
      refs: [
        { at: 1, label: "base 1.00×", color: COLORS.base, side: "end" },
        { at: target, label: `target ${target.toFixed(2)}×`, color: COLORS.target, side: "start" },
      ],
      read(row) {
        const [l, b] = [num(row.liger?.[key]), num(row.base?.[key])];
        const r = ratio(l, b);
        return {
          bar: r,
          label: r === null ? "–" : `${r.toFixed(2)}×`,
          color: r !== null && r <= target ? COLORS.within : COLORS.above,
          has: l !== null || b !== null,
          cell: ratioCell(r, 2, `${fixed(l, 1)} / ${fixed(b, 1)}`),
        };
      },
    });
  }
  // The standard filler (repeated sentences), then WikiText-2 as the filler (natural text).
  const families = [
    [/^passkey_(\d+(?:\.\d+)?)k$/, "passkey_trials_per_length", "", ""],
    [/^passkey_wiki_(\d+(?:\.\d+)?)k$/, "passkey_wiki_trials_per_length", ", WikiText filler", " in natural text"],
  ];
  const passkeys = families.flatMap(([pattern, ...rest]) => keysLike(rows, pattern).map((found) => [...found, ...rest]));
  for (const [key, k, trialsField, nameTail, titleTail] of passkeys) {
    list.push({
      group: "passkey",
      name: `passkey ${passkeyLength(k)}${nameTail}`,
      title: `Passkey retrieval at ${passkeyLength(k)} tokens${titleTail}`,
      subtitle: "found of N trials (absolute); the dark tick marks the base model",
      axis: "share of trials found (label: found of N)",
      fixedMax: 1,
      percent: true,
      read(row) {
        const found = num(row.liger?.[key]);
        const of = trialsOf(row.liger, row.evaluation, trialsField);
        const baseFound = num(row.base?.[key]);
        const baseOf = trialsOf(row.base, row.evaluation, trialsField);
        const share = found !== null && of !== null ? Math.min(found / of, 1) : null;
        const text = (f, n) => (f === null ? "–" : `${f} of ${n ?? "?"}`);
        return {
          bar: share,
          label: text(found, of),
          color: COLORS.passkey,
          marker: baseFound !== null && baseOf !== null ? Math.min(baseFound / baseOf, 1) : null,
          has: found !== null || baseFound !== null,
          cell: `<span class="v">${esc(text(found, of))}</span><span class="raw">base ${esc(text(baseFound, baseOf))}</span>`,
        };
      },
    });
  }
  list.push({
    group: "state",
    name: "state/seq",
    title: "Decode state per sequence",
    subtitle: "the recurrent state (and any softmax layers' cache) one sequence carries while decoding",
    axis: "MiB per sequence",
    read(row) {
      const m = mib(num(row.stateBytes));
      return {
        bar: m,
        label: m === null ? "–" : `${m.toFixed(2)} MiB`,
        color: COLORS.state,
        has: m !== null,
        cell:
          m === null
            ? "–"
            : `<span class="v">${esc(`${m.toFixed(2)} MiB`)}</span><span class="raw">${esc(row.stateBytes)} B</span>`,
      };
    },
  });
  return list;
}

function ratioCell(r, digits, raw) {
  return `<span class="v">${esc(r === null ? "–" : `${r.toFixed(digits)}×`)}</span><span class="raw">${esc(raw)}</span>`;
}

/** A round axis end and tick step for values up to `max`. */
function niceAxis(max) {
  if (!(max > 0)) return { end: 1, step: 0.25 };
  const raw = max / 8;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return { end: Math.ceil(max / step - 1e-9) * step, step };
}

/** One chart as an SVG element. */
function chartSvg(measure, rows, index) {
  const reads = rows.map((row) => measure.read(row));
  const names = rows.map((row) => String(row.recipe ?? "?"));
  const width = 760;
  const rowH = 24;
  const labelW = Math.max(70, 7.2 * Math.max(...names.map((n) => n.length)) + 12);
  const x0 = 30 + labelW;
  const plotW = width - x0 - 100;
  const top = 60;
  const plotH = rows.length * rowH;
  const axisY = top + plotH;
  const height = axisY + 50;

  const values = reads.map((r) => r.bar).filter((v) => v !== null);
  const refMax = Math.max(0, ...(measure.refs ?? []).map((r) => r.at));
  const { end, step } = measure.fixedMax
    ? { end: measure.fixedMax, step: measure.fixedMax / 4 }
    : niceAxis(Math.max(refMax, ...values) * 1.02);
  const x = (v) => x0 + (Math.max(0, v) / end) * plotW;
  const r1 = (v) => Math.round(v * 10) / 10;
  const id = `chart-${index}`;

  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-labelledby="${id}-title">`,
    `<title id="${id}-title">${esc(measure.title)}</title>`,
    `<text class="title" x="10" y="20">${esc(measure.title)}</text>`,
    `<text class="sub" x="10" y="38">${esc(measure.subtitle)}</text>`,
  );
  // Grid and tick labels.
  for (let i = 0; i * step <= end + 1e-9; i++) {
    const t = i * step;
    const tx = r1(x(t));
    const text = measure.percent ? `${Math.round(t * 100)}%` : tickText(t);
    out.push(
      `<line class="grid" x1="${tx}" y1="${top}" x2="${tx}" y2="${axisY}"/>`,
      `<text class="tick" x="${tx}" y="${axisY + 16}" text-anchor="middle">${esc(text)}</text>`,
    );
  }
  // Bars and row labels; the values are written after the reference lines, so they stay legible.
  const labels = [];
  reads.forEach((r, i) => {
    const y = top + i * rowH;
    const cy = r1(y + rowH / 2);
    out.push(`<text class="row" x="${r1(x0 - 8)}" y="${cy}" dy="0.35em" text-anchor="end">${esc(names[i])}</text>`);
    if (r.bar !== null) {
      const w = r1(x(r.bar) - x0);
      out.push(`<rect x="${x0}" y="${r1(y + 5)}" width="${w}" height="${rowH - 10}" fill="${r.color}"/>`);
      if (r.marker !== undefined && r.marker !== null) {
        const mx = r1(x(r.marker));
        out.push(`<line class="marker" x1="${mx}" y1="${r1(y + 2)}" x2="${mx}" y2="${r1(y + rowH - 2)}"/>`);
      }
      labels.push(`<text class="val" x="${r1(x0 + w + 5)}" y="${cy}" dy="0.35em">${esc(r.label)}</text>`);
    } else {
      labels.push(`<text class="val missing" x="${x0 + 5}" y="${cy}" dy="0.35em">${esc(r.label)}</text>`);
    }
  });
  // Reference lines (base, target), over the bars.
  for (const ref of measure.refs ?? []) {
    const rx = r1(x(ref.at));
    const lx = ref.side === "end" ? rx - 3 : rx + 3;
    out.push(
      `<line class="ref" x1="${rx}" y1="${top - 6}" x2="${rx}" y2="${axisY}" stroke="${ref.color}"/>`,
      `<text class="reflabel" x="${lx}" y="${top - 8}" text-anchor="${ref.side}" fill="${ref.color}">${esc(ref.label)}</text>`,
    );
  }
  out.push(...labels);
  // Axes and their labels.
  out.push(
    `<line class="axis" x1="${x0}" y1="${top}" x2="${x0}" y2="${axisY}"/>`,
    `<line class="axis" x1="${x0}" y1="${axisY}" x2="${r1(x0 + plotW)}" y2="${axisY}"/>`,
    `<text class="axislabel" x="${r1(x0 + plotW / 2)}" y="${axisY + 38}" text-anchor="middle">${esc(measure.axis)}</text>`,
    `<text class="axislabel" transform="translate(14 ${r1(top + plotH / 2)}) rotate(-90)" text-anchor="middle">recipe</text>`,
    `</svg>`,
  );
  return out.join("\n");
}

const CSS = `
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px auto; max-width: 1560px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p { max-width: 70em; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #e3e3e3; border-radius: 4px; background: #fff; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 12px; fill: #222; }
svg .title { font-size: 14px; font-weight: 600; }
svg .sub, svg .tick { fill: #666; font-size: 11px; }
svg .axislabel { fill: #444; }
svg .reflabel { font-size: 10px; }
svg .val { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
svg .val.missing { fill: #999; }
svg .grid { stroke: #eee; }
svg .axis { stroke: #888; }
svg .ref { stroke-width: 1.5; stroke-dasharray: 4 3; }
svg .marker { stroke: ${COLORS.base}; stroke-width: 2; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 4px 6px; vertical-align: top; text-align: right; }
th { background: #f5f5f5; text-align: center; }
td.t { text-align: left; }
td code { font-size: 11px; overflow-wrap: anywhere; display: block; min-width: 22em; max-width: 34em; }
td .v { display: block; font-weight: 600; white-space: nowrap; }
td .raw { display: block; color: #777; font-size: 11px; white-space: nowrap; }
.muted { color: #666; }
`;

/** The whole page for `rows` (the parsed recovery.json); `source` names the input in the text. */
export function renderRecoveryHtml(rows, source = "recovery.json") {
  if (!Array.isArray(rows)) throw new Error(`${source}: expected an array of rows`);
  const all = measures(rows);
  const shown = all.filter((m) => rows.some((row) => m.read(row).bar !== null));
  const inTable = all.filter((m) => rows.some((row) => m.read(row).has));
  const unmeasured = all.filter((m) => !rows.some((row) => m.read(row).has)).map((m) => m.name);

  const groups = [
    ["accuracy", "Accuracy recovery (liger ÷ base)"],
    ["perplexity", "Perplexity against the base (liger ÷ base, lower is better)"],
    ["passkey", "Passkey retrieval (found of N)"],
    ["state", "Decode state"],
  ];
  const body = [];
  body.push(
    `<h1>Recovery of the converted models</h1>`,
    `<p>One bar per recipe of <code>${esc(source)}</code> (${rows.length} rows). Accuracy and perplexity are ratios ` +
      `against the base model scored by the same evaluation; passkey counts are absolute (N as recorded, else 5 ` +
      `trials per length for a quick screen and 15 for full); the decode state is per sequence. ` +
      `A missing value shows as “–” with no bar. Regenerate with <code>node bench/recovery-chart.mjs</code>.</p>`,
  );
  if (unmeasured.length) body.push(`<p class="muted">Not measured in any row: ${esc(unmeasured.join(", "))}.</p>`);
  let index = 0;
  for (const [group, heading] of groups) {
    const charts = shown.filter((m) => m.group === group);
    if (!charts.length) continue;
    body.push(`<h2>${esc(heading)}</h2>`, `<div class="charts">`);
    for (const m of charts) body.push(`<figure>\n${chartSvg(m, rows, index++)}\n</figure>`);
    body.push(`</div>`);
  }

  // The table: every number of the charts, with the row's command and evaluation level.
  const head = [
    "recipe",
    "evaluation",
    "command",
    "device",
    "softmax layers",
    "tokens",
    "GPU min",
    ...inTable.filter((m) => m.group !== "state").map((m) => m.name),
    "state/seq",
  ];
  body.push(
    `<h2>All numbers</h2>`,
    `<p class="muted">Ratio cells give liger ÷ base, then liger / base raw (accuracy, perplexity); passkey cells ` +
      `give found of N for liger, then the base.</p>`,
    `<div class="table"><table>`,
    `<thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>`,
    `<tbody>`,
  );
  const stateMeasure = all.find((m) => m.group === "state");
  for (const row of rows) {
    const layers = Array.isArray(row.softmaxLayers) ? row.softmaxLayers : [];
    const tokens = num(row.tokens);
    const cells = [
      `<td class="t">${esc(row.recipe ?? "?")}</td>`,
      `<td class="t">${esc(row.evaluation ?? "–")}</td>`,
      `<td class="t"><code>${esc(row.command ?? "–")}</code></td>`,
      `<td class="t">${esc(row.device ?? "–")}</td>`,
      `<td>${esc(layers.length ? layers.join(", ") : "none")}</td>`,
      `<td>${esc(tokens === null ? "–" : tokens >= 1e5 ? `${(tokens / 1e6).toFixed(1)}M` : String(tokens))}</td>`,
      `<td>${esc(fixed(num(row.gpuMinutes), 1))}</td>`,
      ...inTable.filter((m) => m.group !== "state").map((m) => `<td>${m.read(row).cell}</td>`),
      `<td>${stateMeasure.read(row).cell}</td>`,
    ];
    body.push(`<tr>${cells.join("")}</tr>`);
  }
  body.push(`</tbody></table></div>`);

  const notes = [];
  for (const row of rows) {
    for (const [where, text] of [
      ["", row.note],
      ["base: ", row.base?.note],
      ["liger: ", row.liger?.note],
    ]) {
      if (text !== undefined && text !== null && text !== "") notes.push([row.recipe, `${where}${text}`]);
    }
  }
  if (notes.length) {
    body.push(
      `<h2>Notes</h2>`,
      `<ul>`,
      ...notes.map(([recipe, text]) => `<li><b>${esc(recipe ?? "?")}</b>: ${esc(text)}</li>`),
      `</ul>`,
    );
  }

  return [
    `<!DOCTYPE html>`,
    `<html lang="en">`,
    `<head>`,
    `<meta charset="utf-8"/>`,
    `<meta name="viewport" content="width=device-width, initial-scale=1"/>`,
    `<title>liger: recovery against the base model</title>`,
    `<style>${CSS}</style>`,
    `</head>`,
    `<body>`,
    ...body,
    `</body>`,
    `</html>`,
    ``,
  ].join("\n");
}

/** Reads the rows at `jsonPath` and writes the page to `htmlPath`; returns `htmlPath`. */
export function writeRecoveryChart(jsonPath = DEFAULT_JSON, htmlPath = DEFAULT_HTML) {
  const rows = JSON.parse(readFileSync(jsonPath, "utf8"));
  writeFileSync(htmlPath, renderRecoveryHtml(rows, basename(jsonPath)));
  return htmlPath;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [input = DEFAULT_JSON, output = DEFAULT_HTML] = process.argv.slice(2);
  console.log(`wrote ${relative(process.cwd(), writeRecoveryChart(input, output))}`);
}
