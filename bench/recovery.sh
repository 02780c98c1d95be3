#!/usr/bin/env bash
# One recipe, trained and evaluated in one command, on the first NVIDIA GPU:
#
#   bench/recovery.sh NAME quick|full|memory [linearize options...]
#
# NAME "base" evaluates the base model itself (no training). Otherwise `liger linearize
# --device cuda` trains NAME with the given options (e.g. --recipe paper --softmax-layers auto:3)
# into $RUN_DIR/NAME, then the checkpoint is evaluated on the GPU:
#   quick: HellaSwag (500), LAMBADA (1000), WikiText-2 at a 2048 window, passkey 1K/2K/4K
#          (5 depths, 1 trial) with each filler: a fixed screen of a minute or two;
#   full:  HellaSwag (2000), ARC-e, ARC-c, LAMBADA (all), WikiText-2 at 1024/2048/4096,
#          passkey 1K/2K/4K/8K (5 depths x 3 trials);
#   memory: only the long-context measures of full (WikiText-2 at 1024/2048/4096, passkey).
# Every level runs the passkey twice: with the standard filler (five sentences repeated) and
# with WikiText-2 test's sentences as filler (NAME.passkey-wiki.json).
# Every result is a JSON file in $RECOVERY_OUT (default bench/out/NAME.*.json);
# bench/recovery-summary.mjs turns them into the rows of bench/recovery.json.
#
# Needs: the built CLI (ts/bin/liger.js), $LIGER_MODEL (the base .gguf) and $LIGER_DATA_DIR
# (a folder laid out like the project's data: alpaca_cleaned, hellaswag_klosax_derived, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: bench/recovery.sh NAME quick|full|memory [linearize options...]}"
level="${2:?usage: bench/recovery.sh NAME quick|full|memory [linearize options...]}"
shift 2
model="${LIGER_MODEL:?set LIGER_MODEL to the base model (.gguf)}"
data="${LIGER_DATA_DIR:?set LIGER_DATA_DIR to the data folder}"
out="${RECOVERY_OUT:-bench/out}"
runs="${RUN_DIR:-/tmp/liger-runs}"
node="${NODE:-node}"
liger() { "$node" ts/bin/liger.js "$@"; }
mkdir -p "$out" "$runs"

target="$model"
if [ "$name" != base ]; then
  rm -rf "${runs:?}/$name"
  start=$(date +%s%N)
  # An untrained conversion (--no-train) takes no training data.
  train_data=(--data "$data/alpaca_cleaned")
  case " $* " in *" --no-train "*) train_data=() ;; esac
  liger linearize --device cuda --model "$model" "${train_data[@]}" --out "$runs/$name" \
    --sample "Give three tips for staying healthy." --json "$@" > "$out/$name.train.json"
  end=$(date +%s%N)
  printf '{"name":"%s","wallMs":%d,"args":"%s"}\n' "$name" $(((end - start) / 1000000)) "$*" > "$out/$name.run.json"
  target="$runs/$name"
fi

ev() { liger eval --device cuda --model "$target" --data "$data" "$@"; }
# The passkey once more with natural text for filler (nothing in it repeats).
wiki_filler="$data/wikitext2_raw/wiki.test.raw"
case "$level" in
  quick)
    ev --tasks hellaswag,lambada_openai --limit 500 --json "$out/$name.tasks.json" > /dev/null
    ev --tasks wikitext --window 2048 --json "$out/$name.wikitext2048.json" > /dev/null
    ev --tasks none --passkey 1024,2048,4096 --json "$out/$name.passkey.json" > /dev/null
    ev --tasks none --passkey 1024,2048,4096 --passkey-filler "$wiki_filler" \
      --json "$out/$name.passkey-wiki.json" > /dev/null ;;
  full)
    ev --tasks hellaswag --limit 2000 --json "$out/$name.hellaswag.json" > /dev/null
    ev --tasks arc_easy,arc_challenge,lambada_openai --json "$out/$name.tasks.json" > /dev/null
    for w in 1024 2048 4096; do
      ev --tasks wikitext --window "$w" --json "$out/$name.wikitext$w.json" > /dev/null
    done
    ev --tasks none --passkey 1024,2048,4096,8192 --passkey-trials 3 --json "$out/$name.passkey.json" > /dev/null
    ev --tasks none --passkey 1024,2048,4096,8192 --passkey-trials 3 --passkey-filler "$wiki_filler" \
      --json "$out/$name.passkey-wiki.json" > /dev/null ;;
  memory)
    ev --tasks none --passkey 1024,2048,4096,8192 --passkey-trials 3 --json "$out/$name.passkey.json" > /dev/null
    ev --tasks none --passkey 1024,2048,4096,8192 --passkey-trials 3 --passkey-filler "$wiki_filler" \
      --json "$out/$name.passkey-wiki.json" > /dev/null
    for w in 4096 1024 2048; do
      ev --tasks wikitext --window "$w" --json "$out/$name.wikitext$w.json" > /dev/null
    done ;;
  *) echo "level must be quick, full or memory, got $level" >&2; exit 2 ;;
esac
echo "$name ($level): results in $out/$name.*.json"
