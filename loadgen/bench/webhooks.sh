#!/usr/bin/env bash
# Churn with and without webhooks: redis-server + central + 2 signal-node processes on
# loopback, loadgen --scenario churn through central. MODE = off | ok (a receiver answering
# 204) | hang (a receiver that accepts and never answers). Usage:
#   loadgen/bench/webhooks.sh [target/release|target/debug] off|ok|hang
set -euo pipefail
B=${1:-target/release}; MODE=${2:-off}
P=${BENCH_PORT_BASE:-27000}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
redis-server --port $((P+1)) --save "" --appendonly no >/dev/null & pids+=($!)
python3 - $((P+2)) "$MODE" <<'PY' & pids+=($!)
import sys, time, http.server
mode = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if mode == "hang":
            time.sleep(3600)
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
REDIS=redis://127.0.0.1:$((P+1))/
RUST_LOG=warn $B/central --http-listen 127.0.0.1:$((P+3)) --grpc-listen 127.0.0.1:$((P+4)) \
  --secret bench --open-login --redis-url $REDIS >/dev/null & pids+=($!)
hooks=()
if [ "$MODE" != off ]; then
  hooks=(--webhook-url http://127.0.0.1:$((P+2))/hooks --webhook-secret bench-hooks)
fi
for i in 1 2; do
  RUST_LOG=warn $B/signal-node --id n$i --listen 127.0.0.1:$((P+10+i)) --grpc-listen 127.0.0.1:$((P+20+i)) \
    --central http://127.0.0.1:$((P+4)) --secret bench --redis-url $REDIS "${hooks[@]}" >/dev/null & pids+=($!)
done
for _ in $(seq 100); do
  [ "$(curl -s http://127.0.0.1:$((P+3))/v1/nodes | grep -o '"reachable":true' | wc -l)" = 2 ] && break
  sleep 0.1
done
$B/loadgen --central http://127.0.0.1:$((P+3)) --scenario churn --churn-rate 50 --pairs 200 \
  --rate 100 --duration 20 --warmup 3 --no-progress
for i in 1 2; do
  curl -s http://127.0.0.1:$((P+10+i))/metrics | grep -E '^signal_webhook_(events|delivered|overflow)_total' || true
done
