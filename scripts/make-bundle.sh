#!/usr/bin/env bash
# Makes an edge bundle of the default model's Liger conversion (or of the model given):
#   scripts/make-bundle.sh [int8|q4_1|q4|f32] [model.gguf|liger-checkpoint-dir] [out.bundle]
# Default output: the cache, next to the default model. Skipped when the bundle exists.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
cache="${LIGER_CACHE_DIR:-$HOME/.cache/liger}"
quant="${1:-int8}"
model="${2:-$cache/SmolLM2-135M-Instruct.Q4_1.gguf}"
out="${3:-$cache/SmolLM2-135M-Instruct.liger.$quant.bundle}"
if [ -f "$out" ] && [ "$out" -nt "$model" ]; then
  echo "== bundle: $out exists" >&2
  exit 0
fi
echo "== bundle: $model -> $out ($quant)" >&2
cargo run --quiet --release -p liger-core --example make_bundle -- "$model" "$out" "$quant"
