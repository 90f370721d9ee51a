#!/usr/bin/env bash
# Instructions (and heap allocations) per tools/call on each gateway-bench path, counted by
# valgrind's callgrind: repeatable on a loaded machine, where timings are not (issue #24).
#
# For each path, the bench runs twice under callgrind with REFLOW_BENCH_CALLS=LOW and =HIGH
# (sequential calls only); (total(HIGH) - total(LOW)) / (HIGH - LOW) is one call's cost in the
# bench process: the load client plus, for a gateway path, the whole gateway (the fixture is a
# child process and is not counted). A gateway path minus `direct` is the gateway's own work.
#
# usage: scripts/bench-instructions.sh [PATH...]   (default: direct byte-relay gateway gw-percore gw-percore-h1)
#   BENCH_BIN=target/release/deps/gateway-HASH  the bench binary (default: the newest one)
#   LOW=50 HIGH=250                             the two call counts
set -euo pipefail
cd "$(dirname "$0")/.."
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(direct byte-relay gateway gw-percore gw-percore-h1)
low=${LOW:-50}
high=${HIGH:-250}
bin=${BENCH_BIN:-$(ls -t target/release/deps/gateway-* | grep -v '\.d$' | head -1)}
fixture=${REFLOW_FIXTURE_BIN:-$PWD/target/release/reflow-fixture}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Calls to Rust's allocation entry points (any allocator: glibc or mimalloc behind them).
allocs() {
    python3 - "$1" <<'PY'
import re, sys
alloc, cur, n = set(), False, 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        if m.group(2) and re.fullmatch(r"(__rustc::)?__rust_(alloc|alloc_zeroed|realloc)", m.group(2)):
            alloc.add(m.group(1))
        if line.startswith("cfn="):
            cur = m.group(1) in alloc
        continue
    if line.startswith("calls="):
        if cur:
            n += int(line.split()[0].split("=")[1])
        cur = False
print(n)
PY
}
count() { # path calls -> "instructions allocations"
    local f="$out/cg.$1.$2"
    REFLOW_FIXTURE_BIN=$fixture REFLOW_BENCH_PATHS=$1 REFLOW_BENCH_CALLS=$2 \
        valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" >/dev/null 2>"$out/log.$1.$2"
    echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$f") $(allocs "$f")"
}
printf '%-16s %14s %14s\n' path "Ir per call" "allocs per call"
for p in "${paths[@]}"; do
    read -r lo_ir lo_al < <(count "$p" "$low")
    read -r hi_ir hi_al < <(count "$p" "$high")
    printf '%-16s %14d %14d\n' "$p" $(( (hi_ir - lo_ir) / (high - low) )) $(( (hi_al - lo_al) / (high - low) ))
done
