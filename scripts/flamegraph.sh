#!/usr/bin/env bash
# The gateway's on-CPU flame graph for sequential `tools/call`s (issue #24): `perf` samples the
# gateway bench while it makes REFLOW_BENCH_CALLS calls on one path, `inferno` folds the stacks
# and draws the SVG. Only the gateway's own threads are kept (the load client runs in the same
# process, the fixture in a child process: both are sampled, then left out by thread name).
#
# usage: scripts/flamegraph.sh [PATH] [OUT.svg]
#   PATH      a gateway-bench path (default gw-percore-h1: the binary's default serving)
#   OUT.svg   default docs/flamegraph-<PATH>.svg
#   CALLS=3000 FREQ=999                        calls made and sampling rate (Hz)
#   BENCH_BIN=target/release/deps/gateway-HASH the bench binary (default: the newest one;
#                                              `cargo bench -p reflow-e2e --bench gateway --no-run`)
# Needs `perf` (Debian: linux-perf; kernel.perf_event_paranoid ≤ 2 for a process of your own)
# and inferno (`cargo install inferno --root target/tools`).
set -euo pipefail
cd "$(dirname "$0")/.."
path=${1:-gw-percore-h1}
svg=${2:-docs/flamegraph-$path.svg}
calls=${CALLS:-3000}
freq=${FREQ:-999}
bin=${BENCH_BIN:-$(ls -t target/release/deps/gateway-* | grep -v '\.d$' | head -1)}
fixture=${REFLOW_FIXTURE_BIN:-$PWD/target/release/reflow-fixture}
tools=target/tools/bin
[ -x "$tools/inferno-flamegraph" ] || { echo "no inferno: cargo install inferno --root target/tools" >&2; exit 1; }
# The threads that are the gateway, per path (their names are set where they are spawned).
case "$path" in
    gw-percore | gw-percore-h1) threads='^reflow-core-' ;;
    gateway | gateway-stdio) threads='^gateway' ;;
    *) echo "not a gateway path: $path" >&2; exit 1 ;;
esac
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Frame-pointer-less code: unwound from the DWARF call frame information, copying up to 64 KiB
# of stack per sample (async poll chains are deep; a sample deeper than that is shown from its
# leaf up to where the copy ends, under `[unknown]`).
REFLOW_FIXTURE_BIN=$fixture REFLOW_BENCH_PATHS="$path" REFLOW_BENCH_CALLS="$calls" \
    perf record -F "$freq" --call-graph dwarf,65528 -o "$out/perf.data" -- "$bin" \
    >/dev/null 2>"$out/record.log" || { cat "$out/record.log" >&2; exit 1; }
perf script --no-inline -i "$out/perf.data" 2>/dev/null | "$tools/inferno-collapse-perf" >"$out/folded"
grep -E "$threads" "$out/folded" | sed -E 's/^reflow-core-[0-9]+;/reflow-core;/' >"$out/gateway.folded"
# Each sample counts its period (ns of CPU time for perf's default cpu-clock event).
ms=$(awk '{n += $NF} END {printf "%d", n / 1e6}' "$out/gateway.folded")
[ "$ms" -gt 0 ] || { echo "no samples on the gateway's threads" >&2; exit 1; }
"$tools/inferno-flamegraph" --title "reflow gateway: $calls sequential tools/call ($path), $ms ms on CPU" \
    --countname ns --minwidth 0.5 --hash <"$out/gateway.folded" >"$svg"
echo "$svg: $ms ms on CPU on the gateway's threads"
