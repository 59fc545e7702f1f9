#!/usr/bin/env bash
# make bench-curve: one make bench-datapath run (2 rounds, 500 set-ups per
# measure, no memory figure) per tunnel setting of the grid below, each
# writing its JSON to dist/curve/, then the picture docs/datapath-curve.svg.
# The bulk beside the set-ups is paced to the same rate in every run
# (SPOKE_BENCH_PACE, bytes a second) so the points compare.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist/curve
mkdir -p "$out"
pace=${SPOKE_BENCH_PACE:-150000000}
# "" is the defaults (224 KiB buffer, 32 KiB unsent); each other line,
# settings over them (YAML flow); both 0 is Envoy's and the kernel's own.
grid=(
  ""
  "{tunnelBufferLimit: 0, tunnelUnsentLimit: 0}"
  "{tunnelBufferLimit: 131072, tunnelUnsentLimit: 32768}"
  "{tunnelBufferLimit: 131072, tunnelUnsentLimit: 65536}"
  "{tunnelBufferLimit: 163840, tunnelUnsentLimit: 32768}"
  "{tunnelBufferLimit: 196608, tunnelUnsentLimit: 32768}"
  "{tunnelBufferLimit: 196608, tunnelUnsentLimit: 65536}"
  "{tunnelBufferLimit: 262144, tunnelUnsentLimit: 32768}"
  "{tunnelBufferLimit: 262144, tunnelUnsentLimit: 65536}"
  "{tunnelBufferLimit: 1048576, tunnelUnsentLimit: 32768}"
)
i=0
for settings in "${grid[@]}"; do
  i=$((i + 1))
  echo "== bench-curve $i/${#grid[@]}: ${settings:-defaults}"
  SPOKE_BENCH_DATAPATH=1 SPOKE_REQUIRE_ENVOY=1 SPOKE_REQUIRE_KONNECTIVITY=1 SPOKE_BENCH_MEMORY=0 \
    SPOKE_BENCH_ROUNDS=${SPOKE_BENCH_ROUNDS:-2} SPOKE_BENCH_SETUPS=${SPOKE_BENCH_SETUPS:-500} SPOKE_BENCH_PACE="$pace" \
    SPOKE_BENCH_SETTINGS="$settings" SPOKE_BENCH_JSON="$PWD/$out/$(printf %02d $i).json" SPOKE_BENCH_OUT="$PWD/$out/$(printf %02d $i).md" \
    go test ./e2e/ -run '^TestDatapathBenchmark$' -count=1 -timeout 30m >"$out/$(printf %02d $i).log" 2>&1 ||
    echo "   (some rounds failed: see $out/$(printf %02d $i).md)"
  tail -n 12 "$out/$(printf %02d $i).md" | grep -E '^\| (spoke|Konnectivity)' || true
done
go run ./cmd/spoke-benchplot -o docs/datapath-curve.svg "$out"/*.json
echo "docs/datapath-curve.svg drawn from $out/*.json"
