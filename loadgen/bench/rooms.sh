#!/usr/bin/env bash
# Rooms against real processes (docs/benchmarks.md, "Rooms"): redis-server + 2 signal-node
# processes on loopback (dev-auth, membership in Redis); loadgen `--scenario rooms` with --node
# for both nodes (members of every room alternate between them). Runs, one after the other:
#   many:   ROOMS=1000 rooms of MEMBERS=10 at RATE=1 message/s per room
#   big:    1 room of BIG_MEMBERS=1000 at BIG_RATE=10 messages/s
#   peak:   1 room of BIG_MEMBERS at PEAK_RATE messages/s (throughput)
# Output (report text and JSON, process logs) goes to $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
ROOMS=${ROOMS:-1000}
MEMBERS=${MEMBERS:-10}
RATE=${RATE:-1}
BIG_MEMBERS=${BIG_MEMBERS:-1000}
BIG_RATE=${BIG_RATE:-10}
PEAK_RATE=${PEAK_RATE:-60}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
RUNS=${RUNS:-many big peak}
mkdir -p "$OUT"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -p loadgen -p signal-node
BIN=${BIN:-target/release}

. loadgen/bench/lib.sh
REDIS_PORT=$(free_port)
NODE_HTTP=("$(free_port)" "$(free_port)")
NODE_GRPC=("$(free_port)" "$(free_port)")

start_redis "$REDIS_PORT" "$OUT/rooms-redis.log"
for i in 0 1; do
    "$BIN/signal-node" --id "node-$((i + 1))" --dev-auth \
        --listen "127.0.0.1:${NODE_HTTP[$i]}" --grpc-listen "127.0.0.1:${NODE_GRPC[$i]}" \
        --redis-url "redis://127.0.0.1:$REDIS_PORT" --max-room-members "$BIG_MEMBERS" \
        > "$OUT/rooms-node-$((i + 1)).log" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:${NODE_HTTP[$i]}/readyz" "node-$((i + 1))"
done
NODES=(--node "ws://127.0.0.1:${NODE_HTTP[0]}/ws" --node "ws://127.0.0.1:${NODE_HTTP[1]}/ws")

run() { # name, rooms, members, rate
    local name=$1 rooms=$2 members=$3 rate=$4
    local cmd=("$BIN/loadgen" "${NODES[@]}" --scenario rooms --rooms "$rooms" --room-members "$members"
        --room-rate "$rate" --duration "$DURATION" --warmup "$WARMUP" --user-prefix "$name"
        --json "$OUT/rooms-$name.json")
    {
        echo "== $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "== ${cmd[*]}"
    } > "$OUT/rooms-$name.txt"
    LOADGEN_NO_PROGRESS=1 "${cmd[@]}" >> "$OUT/rooms-$name.txt" 2> "$OUT/rooms-$name-loadgen.log"
    echo "== after: load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/rooms-$name.txt"
    cat "$OUT/rooms-$name.txt"
}
for r in $RUNS; do
    case $r in
        many) run many "$ROOMS" "$MEMBERS" "$RATE" ;;
        big) run big 1 "$BIG_MEMBERS" "$BIG_RATE" ;;
        peak) run peak 1 "$BIG_MEMBERS" "$PEAK_RATE" ;;
    esac
done
for i in 0 1; do
    curl -fs "http://127.0.0.1:${NODE_HTTP[$i]}/metrics" | grep -E '^signal_room_(forwards|messages|deliveries)_total' \
        | sed "s/^/node-$((i + 1)) /" > "$OUT/rooms-metrics-node-$((i + 1)).txt" || true
done
cat "$OUT"/rooms-metrics-node-*.txt
