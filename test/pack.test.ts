/**
 * The npm packages as users get them. `npm run pack` writes the main tarball (the API, the CLI
 * and the wasm engine, bundled) and the platform tarball (the prebuilt addon); `npm install`
 * puts them into an empty project outside the repository, where `npx liger info`,
 * `npx liger generate` and a script that imports "liger" must run with no other set-up. A
 * second project installs the main tarball alone, as on a platform with no prebuilt addon:
 * the wasm engine inside the package runs an edge bundle, and a GGUF file is refused with
 * what to install.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { bundlePath, modelPath, repoRoot, sharedModel } from "./helpers.js";

const prompt = "The capital of France is";
const maxTokens = 8;

/** The environment of a user's shell: no npm script variables, no explicit addon. */
function userEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (key.startsWith("npm_") || key === "LIGER_NATIVE_ADDON") delete env[key];
  }
  return env;
}

function run(command: string, args: string[], cwd: string) {
  const result = spawnSync(command, args, { cwd, env: userEnv(), encoding: "utf8", timeout: 180_000 });
  const output = `${command} ${args.join(" ")} (exit ${result.status})\n${result.stdout}\n${result.stderr}`;
  return { code: result.status, stdout: result.stdout, stderr: result.stderr, output };
}

/** An empty project in `dir` with `tarballs` installed by `npm install`. */
function installProject(dir: string, tarballs: string[], npmFlags: string[] = []): void {
  mkdirSync(dir);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "uses-liger", private: true, type: "module" }));
  const install = run("npm", ["install", "--no-audit", "--no-fund", ...npmFlags, ...tarballs], dir);
  expect(install.code, install.output).toBe(0);
}

/** A user's script: load `model`, generate greedily, print the result as JSON. */
const script = `import { loadModel } from "liger";
const [model, backend] = process.argv.slice(2);
const loaded = await loadModel(model, { backend });
const { tokens, text } = await loaded.generate(${JSON.stringify(prompt)}, { maxTokens: ${maxTokens}, temperature: 0 }).result;
console.log(JSON.stringify({ format: loaded.info.format, tokens, text }));
`;

let work: string;
let tarballs: { main: string; platforms: string[] };

beforeAll(() => {
  modelPath(); // a missing model fails here, with what to run
  work = mkdtempSync(join(tmpdir(), "liger-pack-test-"));
  const pack = run(process.execPath, [join(repoRoot, "scripts", "pack.mjs"), join(work, "tarballs")], repoRoot);
  expect(pack.code, pack.output).toBe(0);
  tarballs = JSON.parse(pack.stdout);
}, 300_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("installed with its platform package", () => {
  let project: string;

  beforeAll(() => {
    project = join(work, "with-addon");
    installProject(project, [tarballs.main, ...tarballs.platforms]);
    writeFileSync(join(project, "generate.mjs"), script);
  }, 300_000);

  it("holds the addon, the wasm engine and no install scripts", () => {
    const modules = join(project, "node_modules");
    expect(existsSync(join(modules, "@liger", "linux-x64-gnu", "liger.linux-x64-gnu.node"))).toBe(true);
    for (const file of ["liger.wasm", "liger_wasm.js", "index.js", "node.js"]) {
      expect(existsSync(join(modules, "liger", "node_modules", "@liger", "wasm", file)), file).toBe(true);
    }
    const manifest = JSON.parse(readFileSync(join(modules, "liger", "package.json"), "utf8"));
    expect(manifest.scripts ?? {}).toEqual({});
  });

  it("npx liger info", () => {
    const info = run("npx", ["--no", "liger", "info", "--model", modelPath()], project);
    expect(info.code, info.output).toBe(0);
    expect(info.stdout).toMatch(/architecture\s+llama \(gguf\)/);
    expect(info.stdout).toMatch(/layers\s+30/);
  });

  it("npx liger generate and the API generate what the repository's build does", async () => {
    const expected = await (await sharedModel()).generate(prompt, { maxTokens, temperature: 0 }).result;

    const api = run(process.execPath, ["generate.mjs", modelPath(), "auto"], project);
    expect(api.code, api.output).toBe(0);
    expect(JSON.parse(api.stdout)).toEqual({ format: "gguf", tokens: expected.tokens, text: expected.text });

    const cli = run(
      "npx",
      ["--no", "liger", "generate", "--model", modelPath(), "--prompt", prompt, "-n", `${maxTokens}`, "-t", "0"],
      project,
    );
    expect(cli.code, cli.output).toBe(0);
    expect(cli.stdout).toBe(`${expected.text}\n`);
  });
});

describe("installed without a platform package", () => {
  let project: string;

  beforeAll(() => {
    project = join(work, "wasm-only");
    installProject(project, [tarballs.main], ["--omit=optional"]);
    writeFileSync(join(project, "generate.mjs"), script);
  }, 300_000);

  it("runs an edge bundle on the wasm engine inside the package", () => {
    expect(existsSync(join(project, "node_modules", "@liger"))).toBe(false);
    const api = run(process.execPath, ["generate.mjs", bundlePath("int8"), "auto"], project);
    expect(api.code, api.output).toBe(0);
    const result = JSON.parse(api.stdout);
    expect(result.format).toBe("bundle");
    expect(result.tokens).toHaveLength(maxTokens);
  });

  it("refuses a GGUF file, naming the platform package to install", () => {
    const info = run("npx", ["--no", "liger", "info", "--model", modelPath()], project);
    expect(info.code).toBe(1);
    expect(info.stderr).toMatch(/NATIVE_ADDON_MISSING: .*@liger\/linux-x64-gnu/s);
  });
});
