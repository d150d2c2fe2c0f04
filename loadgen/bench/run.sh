#!/usr/bin/env bash
# Runs the benchmarks of docs/benchmarks.md. Results (report text, JSON, SVG plots) go to
# $OUT (default target/bench). Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
cargo build --release -p loadgen -p central
LG=target/release/loadgen

run() {
    local name=$1
    shift
    echo "== $name: loadgen $*" | tee "$OUT/$name.txt"
    LOADGEN_NO_PROGRESS=1 "$LG" "$@" --json "$OUT/$name.json" --plot "$OUT/$name.svg" | tee -a "$OUT/$name.txt"
}

# Everything in one process (central + 2 nodes + the clients), 2 000 connections.
run open-500 --embedded --pairs 1000 --rate 500 --duration 20 --warmup 5
run open-2000 --embedded --pairs 1000 --rate 2000 --duration 20 --warmup 5
run closed --embedded --pairs 1000 --rate 0 --duration 20 --warmup 5
run churn --embedded --scenario churn --churn-rate 100 --pairs 1000 --rate 500 --duration 20 --warmup 5
run reconnect --embedded --scenario reconnect --pairs 1000 --rate 500 --duration 20 --warmup 5

# Scale: the cluster in its own process (`central --dev`), 18 000 client connections spread
# over 50 source addresses.
target/release/central --dev --http-listen 127.0.0.1:18080 --grpc-listen 127.0.0.1:19090 \
    > "$OUT/central.log" 2>&1 &
CENTRAL=$!
trap 'kill $CENTRAL 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18080/readyz > /dev/null 2>&1 && break
    sleep 0.1
done
run scale-18k --central http://127.0.0.1:18080 --pairs 9000 --rate 1000 --duration 20 --warmup 5 \
    --ramp-up 10 --bind-ips 127.0.0.1-127.0.0.50
