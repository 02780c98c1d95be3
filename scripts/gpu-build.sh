#!/usr/bin/env bash
# Builds the GPU tests of liger-cuda here (no GPU needed) as executables for the GPU machine,
# and puts them with a runner in .device/ (git-ignored). On the GPU machine, from the
# repository root: bash .device/run-gpu-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
out=.device/gpu-tests
rm -rf "$out" .device/gpu-tests.tar.xz
mkdir -p "$out"

# The test executables cargo builds: the GPU tests, and the NVRTC compile test (it then
# checks the kernels against the GPU machine's own NVRTC too).
cargo test -p liger-cuda --features gpu-tests --release --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    name = msg["target"]["name"]
    if "test" in msg["target"]["kind"] and name.startswith("gpu_"):
        print(name, msg["executable"])
' | while read -r name exe; do
  cp "$exe" "$out/$name"
  strip "$out/$name"
done

count=$(ls "$out" | wc -l)
[ "$count" -ge 4 ] || { echo "expected at least 4 test executables, found $count" >&2; exit 1; }

# Keep the transfer small: pack the executables when they are large.
if [ "$(du -sm "$out" | cut -f1)" -gt 20 ]; then
  tar -C .device -cJf .device/gpu-tests.tar.xz gpu-tests
  rm -rf "$out"
fi

cat > .device/run-gpu-tests.sh <<'RUNNER'
#!/usr/bin/env bash
# Runs every GPU test executable; exits non-zero when any test fails.
set -uo pipefail
cd "$(dirname "$0")"
[ -f gpu-tests.tar.xz ] && tar -xJf gpu-tests.tar.xz
export LIGER_CACHE_DIR="${LIGER_CACHE_DIR:-/tmp/liger-cache}"
export LIGER_CUDA_SYNC=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
for test in gpu-tests/*; do
  echo "== $test"
  if ! "$test" --test-threads=1 --nocapture; then
    echo "FAILED: $test"
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "== all GPU tests passed"
exit "$status"
RUNNER
chmod +x .device/run-gpu-tests.sh
ls -la .device .device/gpu-tests 2>/dev/null || true
du -sh .device
