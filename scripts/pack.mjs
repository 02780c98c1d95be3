#!/usr/bin/env node
// Pack the npm packages as users install them: `npm run pack [-- <out-dir>]` (default
// ./dist/npm) writes liger-<version>.tgz (the API, the CLI and the wasm engine) and one
// liger-<platform>-<version>.tgz per built addon in npm/<platform>, then prints their paths
// as JSON. Nothing is built here: ts/dist, npm/wasm/liger.wasm (with its generated glue) and the addon must exist.
//
// The main package carries the wasm engine inside it, as a bundled dependency: @liger/wasm is
// copied into the package's own node_modules in a staging folder and named in
// bundleDependencies there, so installing the tarball never asks the registry for it. (In the
// repository @liger/wasm is a workspace, hoisted to the root, which `npm pack` of ts/ would
// leave out.) The platform packages are packed from their folders as they are.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outDir = resolve(process.argv[2] ?? join(root, "dist", "npm"));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

function readJson(path) {
  return JSON.parse(readFileSync(path, "utf8"));
}

function requireFile(path, fix) {
  if (!existsSync(path)) throw new Error(`${path} is missing: ${fix}`);
}

/** `npm pack` of `dir` into outDir; returns the tarball's path. */
function pack(dir) {
  const out = execFileSync(npm, ["pack", "--json", "--pack-destination", outDir], {
    cwd: dir,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  return join(outDir, JSON.parse(out)[0].filename);
}

/** The main package in a staging folder, with @liger/wasm bundled; returns the folder. */
function stageMain(stageRoot) {
  const ts = join(root, "ts");
  const wasm = join(root, "npm", "wasm");
  requireFile(join(ts, "dist", "index.js"), "run `npm run build:ts`");
  requireFile(join(wasm, "liger.wasm"), "run `bash scripts/build-wasm.sh`");
  requireFile(join(wasm, "liger_wasm.js"), "run `bash scripts/build-wasm.sh` (it generates the bindings' glue)");

  const manifest = readJson(join(ts, "package.json"));
  const engine = readJson(join(wasm, "package.json"));
  if (manifest.dependencies?.[engine.name] !== engine.version) {
    throw new Error(`ts/package.json must depend on ${engine.name} ${engine.version}, the version in npm/wasm`);
  }
  const stage = join(stageRoot, "liger");
  for (const entry of [...manifest.files, "README.md"])
    cpSync(join(ts, entry), join(stage, entry), { recursive: true });
  writeFileSync(
    join(stage, "package.json"),
    `${JSON.stringify({ ...manifest, bundleDependencies: [engine.name] }, null, 2)}\n`,
  );
  const engineStage = join(stage, "node_modules", ...engine.name.split("/"));
  for (const entry of ["package.json", ...engine.files]) cpSync(join(wasm, entry), join(engineStage, entry));
  return stage;
}

/** npm/<platform> folders that hold a built addon. */
function platformDirs() {
  const dirs = [];
  for (const name of readdirSync(join(root, "npm"))) {
    const dir = join(root, "npm", name);
    if (!existsSync(join(dir, "package.json")) || name === "wasm") continue;
    const { main } = readJson(join(dir, "package.json"));
    if (existsSync(join(dir, main))) dirs.push(dir);
  }
  if (dirs.length === 0) throw new Error("no npm/<platform> folder holds a built addon: run `npm run build:addon`");
  return dirs;
}

const stageRoot = mkdtempSync(join(tmpdir(), "liger-pack-"));
try {
  mkdirSync(outDir, { recursive: true });
  const tarballs = { main: pack(stageMain(stageRoot)), platforms: platformDirs().map(pack) };
  console.log(JSON.stringify(tarballs, null, 2));
} catch (err) {
  console.error(`pack: ${err.message}`);
  process.exitCode = 1;
} finally {
  rmSync(stageRoot, { recursive: true, force: true });
}
