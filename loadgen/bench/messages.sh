#!/usr/bin/env bash
# Mailbox benchmark against real processes (docs/benchmarks.md, "Mailbox"): redis-server +
# central + $NODES signal-node processes on loopback; loadgen runs `--scenario messages`
# through central (users log in there and are spread over the nodes). Every message goes
# through the recipient's mailbox in Redis: store (one script), live push, ack -> delete (one
# script per ack), Delivered. Output (report text and JSON, process logs, `uptime` before and
# after) goes to $OUT.
#
#   NODES=1 USERS=200 RATE=0 WINDOW=16 DURATION=20 loadgen/bench/messages.sh   # max throughput
#   NODES=1 USERS=200 RATE=5000 DURATION=20 loadgen/bench/messages.sh         # steady 5,000/s
#   CHURN=10 OFFLINE=0.2 ...                                                   # with offline users and churn
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
NODES=${NODES:-1}
USERS=${USERS:-200}
RATE=${RATE:-5000}
WINDOW=${WINDOW:-16}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CHURN=${CHURN:-0}
OFFLINE=${OFFLINE:-0}
OFFLINE_DELAY=${OFFLINE_DELAY:-2}
BODY=${BODY:-64}
TAG=${TAG:-messages-n$NODES-r$RATE}
PERF=${PERF:-}          # PERF=1: perf record -g the first node for the measured window
SECRET=bench-messages-secret
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
    cargo build --release -p loadgen -p central -p signal-node
    BIN=target/release
fi

. loadgen/bench/lib.sh
REDIS_PORT=$(free_port)
CENTRAL_HTTP=$(free_port)
CENTRAL_GRPC=$(free_port)

start_redis "$REDIS_PORT" "$OUT/$TAG-redis.log"
"$BIN/central" --http-listen "127.0.0.1:$CENTRAL_HTTP" --grpc-listen "127.0.0.1:$CENTRAL_GRPC" \
    --secret "$SECRET" --open-login > "$OUT/$TAG-central.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$CENTRAL_HTTP/healthz" central
NODE_PIDS=()
for i in $(seq 1 "$NODES"); do
    http=$(free_port)
    grpc=$(free_port)
    "$BIN/signal-node" --id "node-$i" \
        --listen "127.0.0.1:$http" --grpc-listen "127.0.0.1:$grpc" \
        --central "http://127.0.0.1:$CENTRAL_GRPC" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
        --secret "$SECRET" --rate-limit 0 > "$OUT/$TAG-node-$i.log" 2>&1 &
    PIDS+=($!)
    NODE_PIDS+=($!)
    wait_ready "http://127.0.0.1:$http/readyz" "node-$i"
done

PERF_PID=
if [ -n "$PERF" ]; then
    (sleep "$WARMUP"; perf record -g -F 499 -p "${NODE_PIDS[0]}" -o "$OUT/$TAG.perf.data" -- sleep "$DURATION" \
        > /dev/null 2>&1) &
    PERF_PID=$!
fi
uptime | tee "$OUT/$TAG.uptime"
"$BIN/loadgen" --central "http://127.0.0.1:$CENTRAL_HTTP" --scenario messages \
    --users "$USERS" --rate "$RATE" --window "$WINDOW" --duration "$DURATION" --warmup "$WARMUP" \
    --churn-rate "$CHURN" --offline-share "$OFFLINE" --offline-delay "$OFFLINE_DELAY" \
    --body-bytes "$BODY" --no-progress --json "$OUT/$TAG.json" | tee "$OUT/$TAG.txt"
uptime | tee -a "$OUT/$TAG.uptime"
redis-cli -p "$REDIS_PORT" info commandstats | grep -E 'evalsha|xadd|xdel|xtrim|xlen|hget|hset|pexpire|get|set' > "$OUT/$TAG.redis-stats" || true
# Only the profiler is waited for: redis, central and the nodes are stopped on exit.
[ -z "$PERF_PID" ] || wait "$PERF_PID"
