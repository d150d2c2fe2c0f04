#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine (as root, or with sudo):
# installs what is missing (redis-server, coturn, Chromium, Node.js, docker-compose, Python
# tools for the chart), then: format, clippy, unit + integration tests of every crate (real
# redis-server, real coturn, real WebSocket/gRPC on loopback, real processes), deployment
# validation, and the browser tests (node unit tests + end-to-end in headless Chromium against
# `central --dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n=== %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust first (https://rustup.rs), then run this again" >&2
  exit 1
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v openssl >/dev/null || missing+=(openssl)
command -v turnserver >/dev/null || missing+=(coturn)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (binaries used by the process tests)"
cargo build --workspace --bins --locked

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
cargo_passed=$(grep -E '^test result:' "$log" | awk '{s+=$4} END {print s+0}')
cargo_failed=$(grep -E '^test result:' "$log" | awk '{s+=$6} END {print s+0}')

step "deployment validation (Dockerfile, compose, Helm chart, flags)"
bash deploy/validate.sh

step "browser client: unit + end-to-end in headless Chromium"
(cd web && npm ci --no-audit --no-fund --loglevel=error && CENTRAL_BIN="$root/target/debug/central" REQUIRE_BROWSER=1 npm test)

step "summary"
echo "cargo: ${cargo_passed} passed, ${cargo_failed} failed"
