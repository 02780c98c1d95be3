#!/usr/bin/env bash
# Sets up the wasm build's tools, idempotently (each step is skipped when already done):
# - a wasm32-unknown-unknown Rust toolchain from Debian's packages: Debian's rustc-web (newer
#   than rustup's stable here) plus a wasm32 standard library built once from rust-web-src and
#   installed into Debian's sysroot;
# - wasm-bindgen-cli from crates.io (`cargo install`, into ~/.cargo/bin), at exactly the
#   version of the wasm-bindgen crate in Cargo.lock: the CLI refuses a module built with any
#   other. Building it takes a few minutes once.
# Prints the RUSTC to use.
set -euo pipefail
cd "$(dirname "$0")/.."
sysroot_lib=/usr/lib/rustlib/wasm32-unknown-unknown/lib
if ! [ -x /usr/bin/rustc ] || ! /usr/bin/rustc --version | grep -q . || ! [ -d /usr/lib/rustlib/src/rust/library ]; then
  echo "== apt: rustc-web cargo-web rust-web-src lld-19" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web rust-web-src lld-19 >/dev/null
fi
if ! ls "$sysroot_lib"/libstd-*.rlib >/dev/null 2>&1; then
  echo "== building the wasm32 standard library (once)" >&2
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/src" "$scratch/.cargo"
  printf '[package]\nname = "wasm-std"\nversion = "0.0.0"\nedition = "2021"\n[lib]\npath = "src/lib.rs"\n' > "$scratch/Cargo.toml"
  echo '#![no_std]' > "$scratch/src/lib.rs"
  printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "/usr/lib/rustlib/src/rust/library/vendor"\n' > "$scratch/.cargo/config.toml"
  (cd "$scratch" && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-C linker=wasm-ld-19 -C embed-bitcode=yes -C target-feature=+simd128" \
    /usr/bin/cargo build -q --release -Zbuild-std=std,panic_abort --target wasm32-unknown-unknown)
  mkdir -p "$sysroot_lib"
  cp "$scratch"/target/wasm32-unknown-unknown/release/deps/*.rlib "$sysroot_lib/"
fi
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
bindgen_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$bindgen_version" ] || { echo "setup-wasm: no wasm-bindgen crate in Cargo.lock" >&2; exit 1; }
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen_version" ]; then
  echo "== cargo install wasm-bindgen-cli $bindgen_version (once, a few minutes)" >&2
  # The CLI's own lockfile first; when the registry lacks one of its pinned versions, the
  # newest compatible ones.
  env -u RUSTC -u RUSTFLAGS -u CARGO_TARGET_DIR cargo install --quiet --locked wasm-bindgen-cli --version "=$bindgen_version" >&2 ||
    env -u RUSTC -u RUSTFLAGS -u CARGO_TARGET_DIR cargo install --quiet wasm-bindgen-cli --version "=$bindgen_version" >&2
fi
echo /usr/bin/rustc
