#!/usr/bin/env bash
# Installs and builds everything the project needs, idempotently: toolchains (when absent),
# npm packages, Python packages for test fixtures, the native addon and the TypeScript build,
# and the default model. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="${LIGER_CACHE_DIR:-$HOME/.cache/liger}"
mkdir -p "$cache"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

step() { printf '\n== %s\n' "$*" >&2; }

need_apt=()
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || need_apt+=(rustc-web cargo-web)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# Headless Chromium for the browser tests (the wasm engine, the report pages), driven by playwright-core.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "apt: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

# npm packages, reinstalled only when the lockfile changes.
lock_hash=$(sha256sum package-lock.json | cut -c1-16)
if [ ! -f node_modules/.liger-lock-hash ] || [ "$(cat node_modules/.liger-lock-hash)" != "$lock_hash" ]; then
  step "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > node_modules/.liger-lock-hash
fi

# Python packages used only to make test fixtures (gguf-py is an independent dequantizer).
pydir="$cache/python"
if ! PYTHONPATH="$pydir" python3 -c "import gguf, numpy" 2>/dev/null; then
  step "pip: gguf numpy -> $pydir"
  python3 -m pip install -q --disable-pip-version-check --target "$pydir" "gguf==0.17.1" "numpy<3"
fi

# NVRTC (CUDA 13) from its PyPI wheel: the liger-cuda tests compile every CUDA kernel with it,
# with no GPU or CUDA toolkit present. scripts/test.sh points LIGER_NVRTC_LIB at it.
if [ ! -f "$pydir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  step "pip: nvidia-cuda-nvrtc -> $pydir"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$pydir" "nvidia-cuda-nvrtc==13.0.88"
fi

step "default model"
node scripts/fetch-model.mjs

step "build"
npm run build --silent

# The wasm engine (npm/wasm/liger.wasm; sets up the wasm32 toolchain) and the int8 and
# q4_1 edge bundles of the default model that its tests load.
step "wasm"
bash scripts/build-wasm.sh
bash scripts/make-bundle.sh int8
bash scripts/make-bundle.sh q4_1
