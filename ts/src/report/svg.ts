/**
 * Plain inline SVG charts for the report pages: a line chart and a bar chart with error bars.
 * No library and no script, so that a page stays one file that opens anywhere, offline.
 * Every text that reaches the markup goes through `escapeHtml`: model and task names come
 * from files the user did not necessarily write.
 */

const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"];

/** Text safe inside an element or a double- or single-quoted attribute. */
export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/** A number as people read it: four significant digits, "n/a" for NaN and infinities. */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return "n/a";
  if (Math.abs(value) >= 1e4) return Math.round(value).toLocaleString("en-US");
  return String(Number(value.toPrecision(4)));
}

export interface Series {
  name: string;
  points: [x: number, y: number][];
}

export interface LineChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** "log2" spaces the x axis by powers of two (context lengths). */
  xScale?: "linear" | "log2";
  /** Start the y axis at zero (amounts: memory, throughput), not at the smallest value. */
  yFromZero?: boolean;
}

export interface Bar {
  /** NaN leaves the bar out and its place empty. */
  value: number;
  /** Standard error: drawn as a whisker of ±1 SE when given. */
  stderr?: number;
}

export interface BarGroup {
  label: string;
  /** One bar per entry of the chart's legend, in its order. */
  bars: Bar[];
}

export interface BarChartSpec {
  title: string;
  yLabel: string;
  /** What each bar position of a group is (a model), one color each. */
  legend: string[];
  groups: BarGroup[];
}

// One layout for every chart, in SVG user units.
const WIDTH = 600;
const HEIGHT = 260;
const MARGIN = { left: 64, right: 16, top: 28, bottom: 44 };
const PLOT_W = WIDTH - MARGIN.left - MARGIN.right;
const PLOT_H = HEIGHT - MARGIN.top - MARGIN.bottom;
const LEGEND_ROW = 16;

const fixed = (v: number) => v.toFixed(1);

/** Lines of each series over shared axes; non-finite points are left out. Empty input draws nothing. */
export function lineChart(spec: LineChartSpec): string {
  const log = spec.xScale === "log2";
  const series = spec.series.map((s) => ({
    name: s.name,
    points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!log || x > 0)),
  }));
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) return "";
  const toX = (x: number) => (log ? Math.log2(x) : x);
  const xs = range(all.map(([x]) => toX(x)));
  const ys = range([...all.map(([, y]) => y), ...(spec.yFromZero ? [0] : [])]);
  const sx = (x: number) => MARGIN.left + ((toX(x) - xs.min) / (xs.max - xs.min)) * PLOT_W;
  const sy = (y: number) => MARGIN.top + (1 - (y - ys.min) / (ys.max - ys.min)) * PLOT_H;

  const parts = [open(spec.title, series.length), yGrid(ys, spec.yLabel)];
  for (const tick of xTicks(xs, log)) {
    const x = MARGIN.left + ((tick - xs.min) / (xs.max - xs.min)) * PLOT_W;
    const value = log ? 2 ** tick : tick;
    parts.push(
      `<line x1="${fixed(x)}" x2="${fixed(x)}" y1="${MARGIN.top + PLOT_H}" y2="${MARGIN.top + PLOT_H + 4}" stroke="#888"/>`,
      `<text x="${fixed(x)}" y="${MARGIN.top + PLOT_H + 16}" text-anchor="middle">${formatNumber(value)}</text>`,
    );
  }
  parts.push(
    `<text x="${MARGIN.left + PLOT_W / 2}" y="${HEIGHT - 6}" text-anchor="middle">${escapeHtml(spec.xLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const coords = s.points.map(([x, y]) => `${fixed(sx(x))},${fixed(sy(y))}`).join(" ");
    parts.push(
      `<polyline class="series" fill="none" stroke="${color}" stroke-width="1.5" points="${coords}"><title>${escapeHtml(s.name)}</title></polyline>`,
    );
    // Dots make a series of one or a few points visible (a single validation, a short run).
    if (s.points.length <= 40) {
      for (const [x, y] of s.points) {
        parts.push(
          `<circle cx="${fixed(sx(x))}" cy="${fixed(sy(y))}" r="2.5" fill="${color}"><title>${escapeHtml(s.name)}: ${formatNumber(x)}, ${formatNumber(y)}</title></circle>`,
        );
      }
    }
    parts.push(legend(i, s.name, color));
  });
  parts.push("</svg>");
  return parts.join("");
}

/** Grouped bars from zero, one color per legend entry, with ±1 standard-error whiskers where known. */
export function barChart(spec: BarChartSpec): string {
  const bars = spec.groups.flatMap((g) => g.bars).filter((b) => Number.isFinite(b.value));
  if (bars.length === 0) return "";
  const ys = range([0, ...bars.map((b) => b.value + (finite(b.stderr) ? b.stderr : 0))]);
  const sy = (y: number) => MARGIN.top + (1 - (y - ys.min) / (ys.max - ys.min)) * PLOT_H;
  const groupW = PLOT_W / spec.groups.length;
  const barW = Math.min(40, (groupW * 0.8) / spec.legend.length);

  const parts = [open(spec.title, spec.legend.length), yGrid(ys, spec.yLabel)];
  spec.groups.forEach((g, gi) => {
    const left = MARGIN.left + gi * groupW + (groupW - barW * spec.legend.length) / 2;
    g.bars.forEach((b, bi) => {
      if (!Number.isFinite(b.value)) return;
      const color = COLORS[bi % COLORS.length];
      const x = left + bi * barW;
      const mid = x + barW / 2;
      const y = sy(Math.max(b.value, 0));
      const se = finite(b.stderr) && b.stderr > 0 ? b.stderr : undefined;
      const name = escapeHtml(`${g.label}, ${spec.legend[bi] ?? ""}: `);
      parts.push(
        `<rect class="bar" x="${fixed(x + 1)}" y="${fixed(y)}" width="${fixed(barW - 2)}" height="${fixed(sy(0) - y)}" fill="${color}"><title>${name}${formatNumber(b.value)}${se === undefined ? "" : ` ± ${formatNumber(se)}`}</title></rect>`,
      );
      let labelY = y;
      if (se !== undefined) {
        const [hi, lo] = [sy(b.value + se), sy(Math.max(b.value - se, 0))];
        parts.push(
          `<path class="stderr" d="M${fixed(mid)} ${fixed(hi)}V${fixed(lo)}M${fixed(mid - 4)} ${fixed(hi)}h8M${fixed(mid - 4)} ${fixed(lo)}h8" stroke="#222" fill="none"/>`,
        );
        labelY = hi;
      }
      parts.push(
        `<text x="${fixed(mid)}" y="${fixed(labelY - 3)}" text-anchor="middle" font-size="9">${formatNumber(b.value)}</text>`,
      );
    });
    parts.push(
      `<text x="${fixed(MARGIN.left + (gi + 0.5) * groupW)}" y="${MARGIN.top + PLOT_H + 16}" text-anchor="middle">${escapeHtml(g.label)}</text>`,
    );
  });
  spec.legend.forEach((name, i) => parts.push(legend(i, name, COLORS[i % COLORS.length])));
  parts.push("</svg>");
  return parts.join("");
}

function finite(v: number | undefined): v is number {
  return v !== undefined && Number.isFinite(v);
}

/** The extent of the values, widened when flat so that the scales never divide by zero. */
function range(values: number[]): { min: number; max: number } {
  let min = Math.min(...values);
  let max = Math.max(...values);
  if (max <= min) {
    const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.1 : 0.5;
    [min, max] = [min - pad, max + pad];
  }
  return { min, max };
}

function open(title: string, legendRows: number): string {
  const height = HEIGHT + LEGEND_ROW * legendRows;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="11">` +
    `<title>${escapeHtml(title)}</title>` +
    `<text x="${MARGIN.left}" y="16" font-size="13" font-weight="bold">${escapeHtml(title)}</text>`
  );
}

/** Horizontal grid lines at round values, labelled, and the y axis name. */
function yGrid(ys: { min: number; max: number }, label: string): string {
  let out = "";
  for (const value of niceTicks(ys)) {
    const y = MARGIN.top + (1 - (value - ys.min) / (ys.max - ys.min)) * PLOT_H;
    out +=
      `<line x1="${MARGIN.left}" x2="${MARGIN.left + PLOT_W}" y1="${fixed(y)}" y2="${fixed(y)}" stroke="#ddd"/>` +
      `<text x="${MARGIN.left - 4}" y="${fixed(y + 4)}" text-anchor="end">${formatNumber(value)}</text>`;
  }
  const mid = MARGIN.top + PLOT_H / 2;
  return out + `<text transform="translate(12 ${mid}) rotate(-90)" text-anchor="middle">${escapeHtml(label)}</text>`;
}

/** Ticks on the x axis: the powers of two in range on a log2 axis, else round values. */
function xTicks(xs: { min: number; max: number }, log: boolean): number[] {
  if (!log) return niceTicks(xs);
  const ticks = [];
  for (let p = Math.ceil(xs.min); p <= Math.floor(xs.max); p++) ticks.push(p);
  return ticks;
}

/** About five ticks inside the range, at multiples of 1, 2 or 5 times a power of ten. */
function niceTicks({ min, max }: { min: number; max: number }): number[] {
  const rough = (max - min) / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? 10 * power;
  const ticks = [];
  // The small slack keeps a tick that lands on an end despite rounding.
  for (let t = Math.ceil(min / step - 1e-9) * step; t <= max + step * 1e-9; t += step) {
    ticks.push(Number(t.toPrecision(12)));
  }
  return ticks;
}

function legend(row: number, name: string, color: string): string {
  const y = HEIGHT + LEGEND_ROW * row;
  return (
    `<rect x="${MARGIN.left}" y="${y - 9}" width="12" height="10" fill="${color}"/>` +
    `<text x="${MARGIN.left + 18}" y="${y}">${escapeHtml(name)}</text>`
  );
}
