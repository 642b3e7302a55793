#!/usr/bin/env bash
# Verification micro-benchmark inside the wasm runtime: builds bench/verify for
# wasm32-wasip1 and natively, runs the suite inside Envoy's V8 (a bootstrap wasm service:
# no listener, no admin, nothing bound) and natively, and prints one table: the filter's
# verification (src/crypto/mod.rs, src/crypto/rsa_verify.rs) beside the paths it replaced.
#
#   bench/verify/run.sh [--starts N] [--rounds N] [--round-ms MS] [--cpubits32] [--opt3]
#                       [--no-native] [--gen] [--vectors NAME,...]
#
#   --starts N     Envoy starts (default 2); each start runs the suite twice, in two fresh
#                  VMs (Envoy configures a wasm service once to validate it, once to run it)
#   --rounds N     timed rounds per row and run (default 7); --round-ms: length of a round
#   --cpubits32    also measure a module built with RUSTFLAGS='--cfg cpubits="32"' (32-bit
#                  limbs in crypto-bigint and the p256/p384 field arithmetic)
#   --opt3         also measure a module built with opt-level 3 instead of the filter's "z"
#   --no-native    skip the native runs
#   --gen          regenerate vectors.json first (new 3072/4096-bit keys)
#   --vectors L    only the vectors named in the comma-separated list L (e.g.
#                  RS256-2048,PS256-2048); default: all
#
# Environment: ENVOY (default: .venv/bin/envoy of the repository), CARGO_TARGET_DIR
# (default: target/bench-verify), EXTRA_MODULES="label=/path/to/module.wasm ..." (modules
# of this crate built another way, e.g. with other profile settings, measured alongside). Logs stay in a temporary directory, printed at the end.
# The machine's other load shows up as spread: compare medians of the same run, and repeat.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ENVOY=${ENVOY:-$root/.venv/bin/envoy}
target=${CARGO_TARGET_DIR:-$root/target/bench-verify}
starts=2 rounds=7 round_ms=20 cpubits32=0 opt3=0 native=1 gen=0 vectors=
while [ $# -gt 0 ]; do
  case "$1" in
    --starts) starts=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --round-ms) round_ms=$2; shift 2 ;;
    --cpubits32) cpubits32=1; shift ;;
    --opt3) opt3=1; shift ;;
    --no-native) native=0; shift ;;
    --gen) gen=1; shift ;;
    --vectors) vectors=$2; shift 2 ;;
    *) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

out=$(mktemp -d "${TMPDIR:-/tmp}/verify-bench.XXXXXX")
envoy_pid=
cleanup() {
  if [ -n "$envoy_pid" ] && kill -0 "$envoy_pid" 2>/dev/null; then
    kill "$envoy_pid" 2>/dev/null || true
    wait "$envoy_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

cd "$here"
bin=$target/release/verify-bench
echo "building (native, then wasm32-wasip1) into $target" >&2
CARGO_TARGET_DIR=$target cargo build --quiet --release --bin verify-bench
if [ "$gen" = 1 ]; then
  "$bin" gen > "$out/vectors.json" && mv "$out/vectors.json" vectors.json
  CARGO_TARGET_DIR=$target cargo build --quiet --release --bin verify-bench
fi
CARGO_TARGET_DIR=$target cargo build --quiet --release --target wasm32-wasip1 --lib
modules=("v8=$target/wasm32-wasip1/release/tokengate_verify_bench.wasm")
if [ "$cpubits32" = 1 ]; then
  CARGO_TARGET_DIR=$target-cpubits32 RUSTFLAGS='--cfg cpubits="32"' \
    cargo build --quiet --release --target wasm32-wasip1 --lib
  modules+=("v8-cpubits32=$target-cpubits32/wasm32-wasip1/release/tokengate_verify_bench.wasm")
fi
if [ "$opt3" = 1 ]; then
  CARGO_TARGET_DIR=$target-opt3 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
    cargo build --quiet --release --target wasm32-wasip1 --lib
  modules+=("v8-opt3=$target-opt3/wasm32-wasip1/release/tokengate_verify_bench.wasm")
fi
for extra in ${EXTRA_MODULES:-}; do
  modules+=("$extra")
done

{
  echo "bootstrap_extensions:"
  for module in "${modules[@]}"; do
    engine=${module%%=*} wasm=${module#*=}
    cat <<YAML
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: verify-bench-$engine
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{"engine": "$engine", "rounds": $rounds, "round_ms": $round_ms, "vectors": "$vectors"}'
      vm_config:
        vm_id: verify-bench-$engine
        runtime: envoy.wasm.runtime.v8
        code: { local: { filename: "$wasm" } }
YAML
  done
} > "$out/bench.yaml"

for start in $(seq "$starts"); do
  log=$out/envoy-$start.log
  echo "Envoy start $start/$starts (V8: ${#modules[@]} module(s), 2 runs each)" >&2
  timeout 900 "$ENVOY" -c "$out/bench.yaml" --disable-hot-restart --concurrency 1 \
    -l info --component-log-level wasm:info > "$log" 2>&1 &
  envoy_pid=$!
  # Every configure has run once the main dispatch loop starts.
  until grep -q "starting main dispatch loop" "$log" || ! kill -0 "$envoy_pid" 2>/dev/null; do
    sleep 1
  done
  cleanup
  envoy_pid=
  if grep -q "bench|.*|error|" "$log" || ! grep -q "bench|.*|done" "$log"; then
    echo "the benchmark did not finish in Envoy; log: $log" >&2
    grep -E "error|critical|bench\|" "$log" | tail -5 >&2
    exit 1
  fi
done

if [ "$native" = 1 ]; then
  for run in $(seq $((starts * 2))); do
    echo "native run $run/$((starts * 2))" >&2
    "$bin" --rounds "$rounds" --round-ms "$round_ms" --vectors "$vectors" > "$out/native-$run.log"
  done
fi

"$bin" report "$out"/*.log
echo >&2
echo "logs: $out" >&2
