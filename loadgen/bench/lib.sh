# Shared by the benchmark scripts of this folder (sourced after `cd` to the repository root):
# free ports, process cleanup on exit, readiness waits, a throwaway redis-server.

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Every process started with `&` is added to PIDS (or, for nodes a script restarts, kept in
# NODE_PID) and killed on exit.
PIDS=()
NODE_PID=()
cleanup() {
    for p in "${PIDS[@]}" "${NODE_PID[@]}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

wait_ready() { # url, what
    for _ in $(seq 400); do
        curl -fs "$1" > /dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "error: $2 not ready at $1" >&2
    exit 1
}

start_redis() { # port, log file
    redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no > "$2" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        redis-cli -p "$1" ping > /dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "error: redis-server on port $1 not ready" >&2
    exit 1
}
