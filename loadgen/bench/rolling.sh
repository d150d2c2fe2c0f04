#!/usr/bin/env bash
# Rolling restart against real processes (docs/benchmarks.md, "Rolling restart (sessions)"):
# redis-server + central + 2 signal-node processes on loopback; loadgen runs
# `--scenario rolling` through central while each node in turn gets SIGTERM, is waited for until
# it has exited (it drains with 1012 and serves the takeover of its sessions), and is started
# again on the same ports. Output (report text and JSON, process logs) goes to $OUT.
#
#   PAIRS=500 RATE=200 DURATION=30 loadgen/bench/rolling.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
PAIRS=${PAIRS:-500}
RATE=${RATE:-200}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-3}
DRAIN_MS=${DRAIN_MS:-2000}
PAUSE=${PAUSE:-2}
SECRET=bench-rolling-secret
mkdir -p "$OUT"
cargo build --release -p loadgen -p central -p signal-node
BIN=target/release

. loadgen/bench/lib.sh
REDIS_PORT=$(free_port)
CENTRAL_HTTP=$(free_port)
CENTRAL_GRPC=$(free_port)
NODE_HTTP=("$(free_port)" "$(free_port)")
NODE_GRPC=("$(free_port)" "$(free_port)")
NODE_PID=("" "")

start_redis "$REDIS_PORT" "$OUT/rolling-redis.log"
"$BIN/central" --open-login --http-listen "127.0.0.1:$CENTRAL_HTTP" --grpc-listen "127.0.0.1:$CENTRAL_GRPC" \
    --secret "$SECRET" > "$OUT/rolling-central.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$CENTRAL_HTTP/healthz" central

start_node() { # index
    local i=$1
    "$BIN/signal-node" --id "node-$((i + 1))" \
        --listen "127.0.0.1:${NODE_HTTP[$i]}" --grpc-listen "127.0.0.1:${NODE_GRPC[$i]}" \
        --central "http://127.0.0.1:$CENTRAL_GRPC" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
        --secret "$SECRET" --drain-ms "$DRAIN_MS" >> "$OUT/rolling-node-$((i + 1)).log" 2>&1 &
    NODE_PID[$i]=$!
    wait_ready "http://127.0.0.1:${NODE_HTTP[$i]}/readyz" "node-$((i + 1))"
}
: > "$OUT/rolling-node-1.log"
: > "$OUT/rolling-node-2.log"
start_node 0
start_node 1

echo "== rolling: loadgen --central http://127.0.0.1:$CENTRAL_HTTP --scenario rolling --pairs $PAIRS --rate $RATE --duration $DURATION --warmup $WARMUP (nodes restarted by SIGTERM, --drain-ms $DRAIN_MS)" \
    > "$OUT/rolling.txt"
LOADGEN_NO_PROGRESS=1 "$BIN/loadgen" --central "http://127.0.0.1:$CENTRAL_HTTP" --scenario rolling \
    --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --json "$OUT/rolling.json" >> "$OUT/rolling.txt" 2> "$OUT/rolling-loadgen.log" &
LG=$!
PIDS+=($LG)

# The restarts start once the clients are connected and the warm-up is over.
for _ in $(seq 600); do
    grep -q "starting the schedule" "$OUT/rolling-loadgen.log" 2>/dev/null && break
    sleep 0.1
done
sleep "$((WARMUP + 2))"
for i in 0 1; do
    began=$(date +%s.%N)
    echo "rolling: SIGTERM node-$((i + 1))" >> "$OUT/rolling.txt"
    kill -TERM "${NODE_PID[$i]}"
    wait "${NODE_PID[$i]}" || echo "node-$((i + 1)) exited with $?" >> "$OUT/rolling.txt"
    start_node "$i"
    echo "rolling: node-$((i + 1)) back after $(echo "$(date +%s.%N) - $began" | bc) s" >> "$OUT/rolling.txt"
    sleep "$PAUSE"
done
wait "$LG"
cat "$OUT/rolling.txt"
