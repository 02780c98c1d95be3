/**
 * The modules of ts/src import each other without circles: a circle, even of type-only
 * imports, ties the modules on it into one unit that cannot be read, tested or loaded apart
 * (and a value import on a circle can meet a module not yet evaluated). Shared types live in
 * modules that import none of their users (ts/src/types.ts). This test parses every import
 * and re-export of ts/src/**\/*.ts, type-only ones and `import("...")` types included,
 * builds the graph of relative imports and names every circle it finds.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = join(root, "ts/src");

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts") ? [path] : [];
  });
}

/** Every module specifier a file names: imports, re-exports, `import x = require()`, `import()`. */
function specifiers(fileName: string, text: string): string[] {
  const file = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier) {
      if (ts.isStringLiteral(node.moduleSpecifier)) out.push(node.moduleSpecifier.text);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      const expr = node.moduleReference.expression;
      if (ts.isStringLiteral(expr)) out.push(expr.text);
    } else if (ts.isImportTypeNode(node)) {
      const arg = node.argument;
      if (ts.isLiteralTypeNode(arg) && ts.isStringLiteral(arg.literal)) out.push(arg.literal.text);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [arg] = node.arguments;
      if (arg && ts.isStringLiteralLike(arg)) out.push(arg.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return out;
}

/** The .ts file a relative specifier names ("./x.js" is ./x.ts), or undefined for a package. */
function resolveSpecifier(from: string, spec: string): string | undefined {
  if (!spec.startsWith(".")) return undefined;
  const base = resolve(dirname(from), spec);
  const candidates = [
    base.replace(/\.js$/, ".ts"),
    `${base}.ts`,
    join(base, "index.ts"),
    base.replace(/\.js$/, ".d.ts"),
    base,
  ];
  return candidates.find((c) => existsSync(c));
}

/** Module -> the modules of the graph it imports. */
function importGraph(files: string[]): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const targets = specifiers(file, readFileSync(file, "utf8"))
      .map((spec) => resolveSpecifier(file, spec))
      .filter((target): target is string => target !== undefined && target !== file);
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

/** Each circle once, as the path of modules that closes it (first module repeated at the end). */
function findCycles(graph: Map<string, string[]>): string[][] {
  const cycles: string[][] = [];
  const seen = new Set<string>();
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const walk = (node: string): void => {
    state.set(node, "open");
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === "open") {
        const cycle = stack.slice(stack.indexOf(next));
        // The same circle found from another of its modules is reported once.
        const key = [...cycle].sort().join("|");
        if (!seen.has(key)) {
          seen.add(key);
          cycles.push([...cycle, next]);
        }
      } else if (!state.has(next)) {
        walk(next);
      }
    }
    stack.pop();
    state.set(node, "done");
  };
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) walk(node);
  return cycles;
}

describe("the modules of ts/src import each other without circles", () => {
  it("finds the imports of every kind, type-only ones included", () => {
    const text = [
      'import type { A } from "./a.js";',
      'import { type B } from "./b.js";',
      'export type { C } from "./c.js";',
      'export * from "./d.js";',
      'import "./e.js";',
      'type F = import("./f.js").F;',
      'const g = await import("./g.js");',
      'import fs from "node:fs";',
    ].join("\n");
    expect(specifiers("x.ts", text)).toEqual([
      "./a.js",
      "./b.js",
      "./c.js",
      "./d.js",
      "./e.js",
      "./f.js",
      "./g.js",
      "node:fs",
    ]);
  });

  it("finds a circle, and only circles", () => {
    const graph = new Map([
      ["a", ["b"]],
      ["b", ["c"]],
      ["c", ["a", "d"]],
      ["d", []],
      ["e", ["d"]],
    ]);
    expect(findCycles(graph)).toEqual([["a", "b", "c", "a"]]);
    expect(
      findCycles(
        new Map([
          ["a", ["b"]],
          ["b", []],
        ]),
      ),
    ).toEqual([]);
  });

  it("ts/src has no import circle", () => {
    const graph = importGraph(sourceFiles(srcDir));
    expect(graph.size).toBeGreaterThan(10);
    const cycles = findCycles(graph).map((cycle) => cycle.map((f) => relative(srcDir, f)).join(" -> "));
    expect(cycles).toEqual([]);
  });
});
