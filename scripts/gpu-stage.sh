#!/usr/bin/env bash
# Stages the whole CLI for a GPU machine that has no Node, no network and takes at most 64 MiB
# per transfer: three parts in .device/stage{1,2,3} (git-ignored), to be carried in three
# consecutive runs there. Each part unpacks into /tmp/liger-gpu with `bash .device/stage-unpack.sh N`;
# after part 3 the machine has /tmp/liger-gpu/bin/node, the default model at
# /tmp/liger-gpu/model.gguf, the data at /tmp/liger-gpu/data and the runtime node_modules in
# the work tree, so that `bench/recovery.sh` runs there.
#   part 1: Node (xz) and the model's first 32 MiB
#   part 2: its next 42 MiB, the data (xz), the GPU test executables of scripts/gpu-build.sh
#           when built
#   part 3: the rest of the model, the addon and the runtime packages the CLI imports, and the test
#           runner with the openai client (test-runtime.tar.xz) for the GPU serve suite:
#           `bash .device/run-gpu-serve-tests.sh` after part 3 (LIGER_GPU_SOAK_SECONDS=120
#           adds the soak)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LIGER_CACHE_DIR:-$HOME/.cache/liger}"
model="${LIGER_MODEL:-$cache/SmolLM2-135M-Instruct.Q4_1.gguf}"
data="${LIGER_DATA_DIR:-../shared/data}"
[ -f "$model" ] || { echo "no model at $model (run npm run fetch-model)" >&2; exit 1; }
[ -f npm/linux-x64-gnu/liger.linux-x64-gnu.node ] && [ -f ts/dist/index.js ] || { echo "build first: npm run build" >&2; exit 1; }
rm -rf .device/stage1 .device/stage2 .device/stage3
mkdir -p .device/stage1 .device/stage2 .device/stage3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Sized so that each part, with the work tree that travels beside it (about 6 MiB), stays under
# 64 MiB: part 1 also carries Node (24 MiB), part 2 the data and the tests (15 MiB), part 3 the
# runtimes (14 MiB).
head -c $((32 * 1048576)) "$model" > .device/stage1/model.00
tail -c +$((32 * 1048576 + 1)) "$model" | head -c $((42 * 1048576)) > .device/stage2/model.01
tail -c +$((74 * 1048576 + 1)) "$model" > .device/stage3/model.02
sha256sum "$model" | cut -d' ' -f1 > .device/stage3/model.sha256
xz -T2 -6 -c "$(command -v node)" > .device/stage1/node.xz

(cd "$data" && tar -cf - alpaca_cleaned hellaswag_klosax_derived lambada_openai wikitext2_raw \
  arc_easy/ARC-Easy-Test.jsonl arc_challenge/ARC-Challenge-Test.jsonl) | xz -T2 -6 > .device/stage2/data.tar.xz
[ -d .device/gpu-tests ] && cp -r .device/gpu-tests .device/stage2/
[ -f .device/gpu-tests.tar.xz ] && cp .device/gpu-tests.tar.xz .device/stage2/

# The packages a part of the work tree imports, with their dependencies (and the optional ones
# installed here: a test runner's native builds), links resolved. Usage: packages cli|tests
packages() {
  node -e '
const fs = require("fs"), path = require("path");
const seen = new Set();
// Node resolution by folders: <dir>/node_modules/<name>, then each parent folder in turn.
const find = (name, from) => {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, "node_modules", name);
    if (fs.existsSync(path.join(candidate, "package.json"))) return fs.realpathSync(candidate);
    if (path.dirname(dir) === dir) return undefined;
  }
};
const visit = (name, from) => {
  const dir = find(name, from);
  if (!dir || seen.has(dir)) return;
  seen.add(dir);
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
  for (const dep of [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {})]) {
    visit(dep, dir);
  }
};
if (process.argv[1] === "tests") {
  // The GPU serve suite: the test runner and the official client.
  for (const dep of ["vitest", "openai"]) visit(dep, process.cwd());
} else {
  // The CLI: ts/package.json dependencies.
  const ts = JSON.parse(fs.readFileSync("ts/package.json", "utf8"));
  for (const dep of Object.keys(ts.dependencies)) if (!dep.startsWith("@liger/")) visit(dep, path.resolve("ts"));
}
console.log([...seen].map((d) => path.relative(process.cwd(), d)).join("\n"));
' "$1"
}
packages cli > "$tmp/packages"
tar -chf - -T "$tmp/packages" npm/linux-x64-gnu/liger.linux-x64-gnu.node ts/dist | xz -T2 -6 > .device/stage3/runtime.tar.xz
packages tests > "$tmp/test-packages"
tar -chf - -T "$tmp/test-packages" | xz -T2 -6 > .device/stage3/test-runtime.tar.xz

cat > .device/stage-unpack.sh <<'UNPACK'
#!/usr/bin/env bash
# Unpacks staged part N (1, 2 or 3) into /tmp/liger-gpu and the work tree.
set -euo pipefail
cd "$(dirname "$0")/.."
part="${1:?part 1, 2 or 3}"
dest=/tmp/liger-gpu
mkdir -p "$dest/bin"
src=".device/stage$part"
for p in "$src"/model.0*; do cp "$p" "$dest/"; done
[ -f "$src/node.xz" ] && xz -dc "$src/node.xz" > "$dest/bin/node" && chmod +x "$dest/bin/node"
[ -f "$src/data.tar.xz" ] && mkdir -p "$dest/data" && tar -C "$dest/data" -xJf "$src/data.tar.xz"
[ -d "$src/gpu-tests" ] && rm -rf .device/gpu-tests && cp -r "$src/gpu-tests" .device/
[ -f "$src/gpu-tests.tar.xz" ] && tar -C .device -xJf "$src/gpu-tests.tar.xz"
[ -f "$src/test-runtime.tar.xz" ] && tar -xJf "$src/test-runtime.tar.xz"
if [ -f "$src/runtime.tar.xz" ]; then
  tar -xJf "$src/runtime.tar.xz"
  # The workspace's own packages (npm/<name> is @liger/<name>) resolve to their folders.
  mkdir -p node_modules/@liger
  for dir in npm/*/; do
    name=$(basename "$dir")
    ln -sfn "../../npm/$name" "node_modules/@liger/$name"
  done
  cat "$dest"/model.0* > "$dest/model.gguf"
  echo "$(cat "$src/model.sha256")  $dest/model.gguf" | sha256sum -c -
fi
ls -la "$dest"
UNPACK
chmod +x .device/stage-unpack.sh

cat > .device/run-gpu-serve-tests.sh <<'SERVE'
#!/usr/bin/env bash
# The GPU serve suite (test/serve-gpu.test.ts) with the staged Node, model, addon and test
# runner; LIGER_GPU_SOAK_SECONDS=120 adds the soak of 64 streams.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f /tmp/liger-gpu/model.gguf ] || bash .device/stage-unpack.sh 3 > /dev/null
export LIGER_MODEL_GGUF=/tmp/liger-gpu/model.gguf LIGER_CACHE_DIR=/tmp/liger-cache
/tmp/liger-gpu/bin/node node_modules/vitest/vitest.mjs run test/serve-gpu.test.ts
SERVE
chmod +x .device/run-gpu-serve-tests.sh
du -sh .device/stage1 .device/stage2 .device/stage3
