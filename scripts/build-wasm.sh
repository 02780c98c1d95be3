#!/usr/bin/env bash
# Builds the WebAssembly engine (crates/liger-wasm) into npm/wasm: the wasm32 toolchain and
# wasm-bindgen-cli from scripts/setup-wasm.sh, cargo with SIMD128 and LTO, `wasm-bindgen
# --target web` for the JavaScript glue and its .d.ts, then wasm-opt (npm `binaryen`).
# Writes npm/wasm/liger.wasm, liger_wasm.js (the generated glue, wrapped by
# scripts/wasm-glue.mjs so that each engine gets its own instance), liger_wasm.d.ts and
# liger_wasm_bindings.d.ts. Skips the build when they are newer than every source.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=npm/wasm/liger.wasm
glue=npm/wasm/liger_wasm.js
sources=$(find crates/liger-core/src crates/liger-wasm Cargo.toml Cargo.lock scripts/build-wasm.sh scripts/wasm-glue.mjs -newer "$out" -print -quit 2>/dev/null || true)
if [ -f "$out" ] && [ -f "$glue" ] && ! [ "$glue" -ot "$out" ] && [ -z "$sources" ] && [ "${1:-}" != "--force" ]; then
  echo "== wasm: $out is up to date" >&2
  exit 0
fi
rustc_bin=$(bash scripts/setup-wasm.sh)
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
target_dir="${LIGER_WASM_TARGET_DIR:-$root/target-wasm}"
echo "== wasm: cargo build (target dir $target_dir)" >&2
# Memory is imported, so the host sets (and the engine enforces) its maximum; 4 MiB to start.
RUSTC="$rustc_bin" CARGO_TARGET_DIR="$target_dir" \
RUSTFLAGS='-C linker=wasm-ld-19 -C target-feature=+simd128 --cfg getrandom_backend="custom" -C link-arg=--import-memory -C link-arg=--initial-memory=4194304' \
  cargo build --quiet --profile wasm-release --target wasm32-unknown-unknown -p liger-wasm
built="$target_dir/wasm32-unknown-unknown/wasm-release/liger_wasm.wasm"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
echo "== wasm: wasm-bindgen --target web" >&2
wasm-bindgen --target web --out-dir "$gen" --out-name liger_wasm --omit-default-module-path --remove-producers-section "$built"
tmp="$out.tmp.$$"
wasm_opt="$root/node_modules/binaryen/bin/wasm-opt"
if [ -x "$wasm_opt" ]; then
  echo "== wasm: wasm-opt -O3" >&2
  "$wasm_opt" -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue --strip-debug --strip-target-features "$gen/liger_wasm_bg.wasm" -o "$tmp"
else
  echo "== wasm: binaryen is not installed (npm ci); copying the unoptimised module" >&2
  cp "$gen/liger_wasm_bg.wasm" "$tmp"
fi
node scripts/wasm-glue.mjs "$gen" npm/wasm
mv "$tmp" "$out"
echo "== wasm: $out ($(stat -c %s "$out") bytes), $glue" >&2
