#!/usr/bin/env bash
# Builds the WebAssembly engine (crates/liger-wasm) into npm/wasm/liger.wasm: the wasm32
# toolchain from scripts/setup-wasm.sh, SIMD128, LTO, then wasm-opt (npm `binaryen`).
# Skips the build when the module is newer than every Rust source it comes from.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=npm/wasm/liger.wasm
sources=$(find crates/liger-core/src crates/liger-wasm Cargo.toml Cargo.lock -newer "$out" -print -quit 2>/dev/null || true)
if [ -f "$out" ] && [ -z "$sources" ] && [ "${1:-}" != "--force" ]; then
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
tmp="$out.tmp.$$"
wasm_opt="$root/node_modules/binaryen/bin/wasm-opt"
if [ -x "$wasm_opt" ]; then
  echo "== wasm: wasm-opt -O3" >&2
  "$wasm_opt" -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --strip-debug "$built" -o "$tmp"
else
  echo "== wasm: binaryen is not installed (npm ci); copying the unoptimised module" >&2
  cp "$built" "$tmp"
fi
mv "$tmp" "$out"
echo "== wasm: $out ($(stat -c %s "$out") bytes)" >&2
