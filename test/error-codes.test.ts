/**
 * The TypeScript list of core error codes is kept by hand: it must name exactly the codes of
 * Rust's `ErrorCode` (liger-core error.rs), as `ErrorCode::as_str` spells them in the
 * `[liger:CODE]` messages the addon throws. Read from the sources, so no build is needed.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { describe, expect, it } from "vitest";

import { CORE_ERROR_CODES, TS_ERROR_CODES } from "../ts/src/errors.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const rust = readFileSync(join(root, "crates/liger-core/src/error.rs"), "utf8");

/** The enum's variants in declaration order (doc comments and attributes skipped). */
function enumVariants(source: string): string[] {
  const body = /pub enum ErrorCode \{([\s\S]*?)\n\}/.exec(source)?.[1];
  if (!body) throw new Error("no `pub enum ErrorCode` in error.rs");
  return [...body.matchAll(/^\s*([A-Z]\w*)\s*,/gm)].map((m) => m[1]);
}

/** `as_str`'s arms: variant -> string, in the order written. */
function asStrArms(source: string): [string, string][] {
  const body = /fn as_str\(self\)[^{]*\{([\s\S]*?)\n {4}\}/.exec(source)?.[1];
  if (!body) throw new Error("no `fn as_str` in error.rs");
  return [...body.matchAll(/ErrorCode::(\w+)\s*=>\s*"([^"]+)"/g)].map((m) => [m[1], m[2]]);
}

describe("error codes", () => {
  const variants = enumVariants(rust);
  const arms = asStrArms(rust);

  it("the parser finds every variant of ErrorCode and its string", () => {
    expect(variants.length).toBeGreaterThan(5);
    expect(arms.map(([variant]) => variant)).toEqual(variants);
  });

  it("CORE_ERROR_CODES (ts/src/errors.ts) equals Rust's ErrorCode::as_str, in order", () => {
    expect([...CORE_ERROR_CODES]).toEqual(arms.map(([, code]) => code));
  });

  it("the TypeScript-only codes are not Rust codes", () => {
    const core = new Set<string>(CORE_ERROR_CODES);
    expect(TS_ERROR_CODES.filter((code) => core.has(code))).toEqual([]);
  });
});
