#!/usr/bin/env bash
# Presence benchmark against real processes (docs/benchmarks.md, "Presence"): redis-server +
# central + 2 signal-node processes on loopback; loadgen runs `--scenario presence` through
# central (USERS users, each watching WATCH others, RATE events per second, a RECONNECT share
# of them drop + resume) while each node in turn gets SIGTERM, is waited for until it has
# exited (it drains with 1012 and hands its sessions over) and is started again. Measures the
# Redis memory of the presence keys ({pr:*}) once every subscription is in place. Output goes
# to $OUT.
#
#   USERS=10000 WATCH=100 RATE=200 DURATION=60 loadgen/bench/presence.sh
#   BIN=/tmp/before USERS=... loadgen/bench/presence.sh     # prebuilt binaries, no build
#   DRAIN_INFLIGHT=0 ...                                      # the nodes' --drain-inflight
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
USERS=${USERS:-10000}
WATCH=${WATCH:-100}
RATE=${RATE:-200}
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-2}
RECONNECT=${RECONNECT:-0.1}
DRAIN_MS=${DRAIN_MS:-2000}
PAUSE=${PAUSE:-5}
ROLL=${ROLL:-1}
SECRET=bench-presence-secret
mkdir -p "$OUT"
# BIN=<dir> runs binaries built elsewhere (a before/after comparison) instead of building.
if [ -z "${BIN:-}" ]; then
    cargo build --release -p loadgen -p central -p signal-node
    BIN=target/release
fi

. loadgen/bench/lib.sh
REDIS_PORT=$(free_port)
CENTRAL_HTTP=$(free_port)
CENTRAL_GRPC=$(free_port)
NODE_HTTP=("$(free_port)" "$(free_port)")
NODE_GRPC=("$(free_port)" "$(free_port)")
NODE_PID=("" "")


rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# Sum of MEMORY USAGE over the keys matching $1, and their number.
key_bytes() {
    rcli --scan --pattern "$1" > "$OUT/presence-keys.txt"
    local n
    n=$(wc -l < "$OUT/presence-keys.txt")
    if [ "$n" = 0 ]; then
        echo "0 0"
        return
    fi
    sed 's/^/MEMORY USAGE /' "$OUT/presence-keys.txt" | rcli | awk -v n="$n" '{s += $1} END {print s, n}'
}

start_redis "$REDIS_PORT" "$OUT/presence-redis.log"
"$BIN/central" --http-listen "127.0.0.1:$CENTRAL_HTTP" --grpc-listen "127.0.0.1:$CENTRAL_GRPC" \
    --secret "$SECRET" --open-login > "$OUT/presence-central.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$CENTRAL_HTTP/healthz" central

start_node() { # index
    local i=$1
    "$BIN/signal-node" --id "node-$((i + 1))" \
        --listen "127.0.0.1:${NODE_HTTP[$i]}" --grpc-listen "127.0.0.1:${NODE_GRPC[$i]}" \
        --central "http://127.0.0.1:$CENTRAL_GRPC" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
        --secret "$SECRET" --drain-ms "$DRAIN_MS" --rate-limit 0 ${DRAIN_INFLIGHT:+--drain-inflight "$DRAIN_INFLIGHT"} \
        >> "$OUT/presence-node-$((i + 1)).log" 2>&1 &
    NODE_PID[$i]=$!
    wait_ready "http://127.0.0.1:${NODE_HTTP[$i]}/readyz" "node-$((i + 1))"
}
: > "$OUT/presence-node-1.log"
: > "$OUT/presence-node-2.log"
start_node 0
start_node 1
BASE=$(rcli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')

CMD="loadgen --central http://127.0.0.1:$CENTRAL_HTTP --scenario presence --users $USERS --watch $WATCH --rate $RATE --duration $DURATION --warmup $WARMUP --reconnect-share $RECONNECT"
{
    echo "== presence: $CMD (rolling restart: $ROLL, --drain-ms $DRAIN_MS, --drain-inflight ${DRAIN_INFLIGHT:-default})"
    echo "date: $(date -u +%FT%TZ)  machine: $(nproc) cores $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)  load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/presence.txt"
LOADGEN_NO_PROGRESS=1 RUST_LOG=info "$BIN/loadgen" --central "http://127.0.0.1:$CENTRAL_HTTP" \
    --scenario presence --users "$USERS" --watch "$WATCH" --rate "$RATE" \
    --duration "$DURATION" --warmup "$WARMUP" --reconnect-share "$RECONNECT" \
    --json "$OUT/presence.json" >> "$OUT/presence.txt" 2> "$OUT/presence-loadgen.log" &
LG=$!
PIDS+=($LG)

for _ in $(seq 3000); do
    grep -q "changes start" "$OUT/presence-loadgen.log" 2>/dev/null && break
    kill -0 "$LG" 2>/dev/null || break
    sleep 0.1
done
read -r PR_BYTES PR_KEYS < <(key_bytes '{pr:*')
read -r SIG_BYTES SIG_KEYS < <(key_bytes 'sig:u:*')
USED=$(rcli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
{
    echo "redis: used_memory $BASE -> $USED bytes; presence keys {pr:*}: $PR_KEYS keys, $PR_BYTES bytes (MEMORY USAGE); directory keys: $SIG_KEYS keys, $SIG_BYTES bytes"
    echo "redis: presence bytes per user $((PR_BYTES / USERS)), per subscription $(echo "scale=2; $PR_BYTES / ($USERS * $WATCH)" | bc)"
    echo "load after the subscriptions: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$OUT/presence.txt"

if [ "$ROLL" = 1 ]; then
    sleep "$((WARMUP + 5))"
    for i in 0 1; do
        began=$(date +%s.%N)
        echo "rolling: SIGTERM node-$((i + 1)) at $(date -u +%T)" >> "$OUT/presence.txt"
        kill -TERM "${NODE_PID[$i]}"
        wait "${NODE_PID[$i]}" || echo "node-$((i + 1)) exited with $?" >> "$OUT/presence.txt"
        start_node "$i"
        echo "rolling: node-$((i + 1)) back after $(echo "$(date +%s.%N) - $began" | bc) s" >> "$OUT/presence.txt"
        sleep "$PAUSE"
    done
fi
wait "$LG" || echo "loadgen exited with $?" >> "$OUT/presence.txt"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/presence.txt"
cat "$OUT/presence.txt"
