#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (installs, builds, model), Rust tests,
# then the vitest suites against the built addon and TypeScript.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
cache="${LIGER_CACHE_DIR:-$HOME/.cache/liger}"
export PYTHONPATH="$cache/python${PYTHONPATH:+:$PYTHONPATH}"
# NVRTC installed by setup.sh, for the test that compiles every CUDA kernel.
export LIGER_NVRTC_LIB="${LIGER_NVRTC_LIB:-$cache/python/nvidia/cu13/lib/libnvrtc.so.13}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

printf '\n== format and lint\n' >&2
bash scripts/lint.sh

printf '\n== fixtures\n' >&2
python3 scripts/make-quant-fixtures.py

printf '\n== cargo test\n' >&2
cargo test --workspace --quiet

# A bounded run of every fuzz target from the committed seed corpus (about 10 s each), with a
# fixed seed so that every run tries the same inputs; the long runs (other seeds) are recorded
# in bench/RESULTS.md.
printf '\n== fuzz (bounded)\n' >&2
cargo run --quiet --release -p liger-fuzz -- all --seconds "${LIGER_FUZZ_SECONDS:-10}" --seed "${LIGER_FUZZ_SEED:-1}" --corpus crates/liger-fuzz/corpus

printf '\n== vitest\n' >&2
npx vitest run
