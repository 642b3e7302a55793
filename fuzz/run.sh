#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 30) each, starting from the committed
# seeds. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  echo "== $target ($seconds s)"
  cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 2>&1 | grep -E "^(stat::number_of_executed_units|Done|==[0-9]+==|SUMMARY|assertion|  left|  right)|panicked" || true
  if [ -d "artifacts/$target" ] && [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "crash artifacts in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
