#!/usr/bin/env bash
# One rooms run (RUNS, default big) with each process's CPU over 8 s of the measured window
# (utime+stime from /proc/<pid>/stat, in ms per second): loadgen first, then the two nodes.
# Same variables as rooms.sh (BIN, OUT, DURATION, WARMUP...); PERF=1 also records a profile of
# the three processes to $OUT/perf.data (needs linux-perf).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
export OUT SKIP_BUILD=${SKIP_BUILD:-1} RUNS=${RUNS:-big} DURATION=${DURATION:-20} WARMUP=${WARMUP:-3}
loadgen/bench/rooms.sh > "$OUT/rooms-cpu.txt" 2>&1 &
bench=$!
for _ in $(seq 1 300); do pgrep -f "loadgen --node" > /dev/null && break; sleep 0.2; done
# Joining 1,000 members takes a few seconds; then the warm-up; sample well inside the window.
sleep $((WARMUP + 9))
lg=$(pgrep -f "loadgen --node" | head -1)
nodes=$(pgrep -f "signal-node --id node-" | tr '\n' ' ')
cpu() { for p in $lg $nodes; do awk -v p="$p" '{print p, $14 + $15}' "/proc/$p/stat"; done; }
cpu > "$OUT/cpu0"
if [ "${PERF:-0}" = 1 ]; then
    perf record -F 999 -g -o "$OUT/perf.data" -p "$(echo $lg $nodes | tr ' ' ',')" -- sleep 8 2> /dev/null
else
    sleep 8
fi
cpu > "$OUT/cpu1"
ticks=$(getconf CLK_TCK)
paste "$OUT/cpu0" "$OUT/cpu1" | awk -v t="$ticks" '{printf "pid %s cpu %.1f ms/s\n", $1, ($4 - $2) * 1000 / t / 8}'
wait "$bench"
grep -E "last member|each member|arrived|lost" "$OUT/rooms-cpu.txt"
