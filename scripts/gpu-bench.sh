#!/usr/bin/env bash
# Builds the GPU benchmarks here (no GPU needed) and gathers them, with the peer benchmark
# (the paper's PyTorch approach: bench/ref_bench.py of the shared folder, and the
# flash-linear-attention wheels it needs), into .device/bench/ (git-ignored). On the GPU
# machine, from the repository root:
#   bash .device/bench/run.sh train 135m 8x1024,1x1024   # our training step, then the peer's
#   bash .device/bench/run.sh decode 135m                # decode ms/token, ours then the peer's
#   bash .device/bench/run.sh kernels                    # mixer/attention kernels, then fla/SDPA
# Each prints JSON lines; ours are tagged "engine":"liger", the peer's come from ref_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
peer="${LIGER_PEER_BENCH:-../shared/bench/ref_bench.py}"
[ -f "$peer" ] || { echo "the peer benchmark was not found at $peer (set LIGER_PEER_BENCH)" >&2; exit 1; }
out=.device/bench
rm -rf "$out" && mkdir -p "$out/bin" "$out/wheels"

cargo build -p liger-cuda --release --examples
for ex in bench_gpu bench_mixer bench_attention; do
  cp "target/release/examples/$ex" "$out/bin/$ex"
  strip "$out/bin/$ex"
done
cp "$peer" "$out/ref_bench.py"
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$out/wheels" \
  "flash-linear-attention==0.6.0" "fla-core==0.6.0" einops

cat > "$out/run.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs our benchmark and the peer's in one invocation on the GPU machine.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:?train|decode|kernels}"; shape="${2:-135m}"; sizes="${3:-8x1024,1x1024}"
export LIGER_CACHE_DIR="${LIGER_CACHE_DIR:-/tmp/liger-cache}"
site=/tmp/liger-peer-site
[ -d "$site/fla" ] || python3 -m pip install -q --no-deps --target "$site" "$here"/wheels/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "$what" in
  train)
    "$here/bin/bench_gpu" --shapes "$shape" --train "$sizes" --decode-batches "" ;
    python3 "$here/ref_bench.py" train --model "$shape" --modes liger ;;
  decode)
    "$here/bin/bench_gpu" --shapes "$shape" --train "" --decode-batches "${4:-1,16}" --contexts "${5:-1024,131072}" ;
    python3 "$here/ref_bench.py" decode --model "$shape" ;;
  kernels)
    "$here/bin/bench_mixer" ; "$here/bin/bench_attention" ;
    python3 "$here/ref_bench.py" kernels ;;
  *) echo "unknown benchmark $what" >&2; exit 2 ;;
esac
RUNNER
chmod +x "$out/run.sh"
du -sh "$out"
