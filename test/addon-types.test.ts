/**
 * `RawAddon` and the interfaces beside it in ts/src/native.ts describe the napi addon by hand,
 * with the precise types the TypeScript layer relies on (napi's generated declarations say
 * `unknown`/`any` for JSON and promises and leave some callback types undeclared, so they are
 * not used directly). This test keeps the two in step: every method the hand-written
 * interfaces name exists in the declarations `npm run build:addon` generates
 * (target/napi/liger.d.ts), with as many parameters, and the reverse.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const generatedPath = join(root, "target/napi/liger.d.ts");

/** Name -> parameter count of each member; a construct signature or constructor is "new". */
type Members = Map<string, number>;

function parse(path: string): ts.SourceFile {
  return ts.createSourceFile(path, readFileSync(path, "utf8"), ts.ScriptTarget.Latest, true);
}

function nameOf(node: ts.NamedDeclaration): string {
  return node.name && ts.isIdentifier(node.name) ? node.name.text : "?";
}

/** The methods (and function- or constructor-typed properties) of each interface. */
function handWritten(file: ts.SourceFile): Map<string, Members> {
  const out = new Map<string, Members>();
  for (const s of file.statements) {
    if (!ts.isInterfaceDeclaration(s)) continue;
    const members: Members = new Map();
    for (const m of s.members) {
      if (ts.isMethodSignature(m)) members.set(nameOf(m), m.parameters.length);
      else if (ts.isPropertySignature(m) && m.type && ts.isConstructorTypeNode(m.type))
        members.set(nameOf(m), m.type.parameters.length);
      else if (ts.isPropertySignature(m) && m.type && ts.isFunctionTypeNode(m.type))
        members.set(nameOf(m), m.type.parameters.length);
    }
    out.set(s.name.text, members);
  }
  return out;
}

/** The generated module: its functions and each class's methods ("new" for the constructor). */
function generated(file: ts.SourceFile): { functions: Members; classes: Map<string, Members> } {
  const functions: Members = new Map();
  const classes = new Map<string, Members>();
  for (const s of file.statements) {
    if (ts.isFunctionDeclaration(s) && s.name) functions.set(s.name.text, s.parameters.length);
    if (ts.isClassDeclaration(s) && s.name) {
      const members: Members = new Map();
      for (const m of s.members) {
        if (ts.isMethodDeclaration(m)) members.set(nameOf(m), m.parameters.length);
        if (ts.isConstructorDeclaration(m)) members.set("new", m.parameters.length);
      }
      classes.set(s.name.text, members);
    }
  }
  return { functions, classes };
}

/** Which generated class each hand-written interface stands for (RawAddon: the module). */
const CLASS_OF: Record<string, string> = {
  RawModel: "NativeModel",
  RawCancelToken: "CancelToken",
  RawGeneration: "NativeGeneration",
};

describe("the hand-written addon interfaces match napi's generated declarations", () => {
  it("target/napi/liger.d.ts exists (npm run build:addon writes it)", () => {
    expect(existsSync(generatedPath), `${generatedPath} is missing: run npm run build:addon`).toBe(true);
  });
  if (!existsSync(generatedPath)) return;

  const raw = handWritten(parse(join(root, "ts/src/native.ts")));
  const gen = generated(parse(generatedPath));

  it("every Raw* interface of native.ts has its generated counterpart", () => {
    const rawNames = [...raw.keys()].filter((name) => name.startsWith("Raw")).sort();
    expect(rawNames).toEqual(["RawAddon", ...Object.keys(CLASS_OF)].sort());
  });

  it("RawAddon: the module's functions and classes, with their parameter counts", () => {
    const addon = raw.get("RawAddon")!;
    // A constructor-typed member is a class: compare its constructor's parameters.
    const expected = new Map(
      [...addon.keys()].map((name) => {
        const cls = gen.classes.get(name);
        return [name, cls ? cls.get("new") : gen.functions.get(name)] as const;
      }),
    );
    expect(Object.fromEntries(addon)).toEqual(Object.fromEntries(expected));
    // And the reverse: every generated function is typed by hand.
    expect([...gen.functions.keys()].filter((name) => !addon.has(name))).toEqual([]);
  });

  it.each(Object.entries(CLASS_OF))("%s: the methods of class %s, with their parameter counts", (iface, cls) => {
    const methods = gen.classes.get(cls);
    expect(methods, `no class ${cls} in the generated declarations`).toBeDefined();
    const generatedMethods = new Map([...methods!].filter(([name]) => name !== "new"));
    expect(Object.fromEntries(raw.get(iface)!)).toEqual(Object.fromEntries(generatedMethods));
  });
});
