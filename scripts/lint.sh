#!/usr/bin/env bash
# Format and lint checks, run by scripts/test.sh before the tests: rustfmt and clippy (warnings
# are errors) on every crate, prettier on the TypeScript and scripts, and the type check of the
# tests. `npm run format` rewrites what the format checks would refuse.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The workspace builds the facade with its cuda feature (the addon asks for it); lint it without too.
cargo clippy -p liger --all-targets --quiet -- -D warnings
cargo clippy -p liger-cuda --features gpu-tests --all-targets --quiet -- -D warnings
npx prettier --check --log-level warn "ts/src/**/*.ts" "ts/bin/**/*.js" "test/**/*.ts" "scripts/**/*.mjs"
npx tsc -p ts/tsconfig.json --noEmit
npx tsc -p test/tsconfig.json
