# syntax=docker/dockerfile:1
# One image for the three binaries of the signaling cluster: central, signal-node, loadgen.
#
#   docker build -t signal-cluster:local .
#   docker run --rm signal-cluster:local central --help
#   docker run --rm signal-cluster:local signal-node --help
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe from the manifests)
# -> builder (dependencies cooked in their own cached layer, then the workspace) -> runtime
# (debian-slim, non-root, binaries only). The build needs no system protoc: the proto crate
# compiles its .proto files with protox (pure Rust).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78 \
    && rm -rf "${CARGO_HOME}/registry" "${CARGO_HOME}/git"
WORKDIR /src

# The recipe only changes when a Cargo.toml / Cargo.lock changes, so the cook layer below
# stays cached across source edits.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/central target/release/signal-node target/release/loadgen /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# No TLS inside the cluster (TLS ends at the ingress), so no ca-certificates; bash and
# coreutils from the base image are enough for the compose health checks.
RUN groupadd --system --gid 10001 signal \
    && useradd --system --uid 10001 --gid signal --home-dir /var/lib/signal \
       --no-create-home --shell /usr/sbin/nologin signal \
    && mkdir -p /var/lib/signal \
    && chown signal:signal /var/lib/signal
COPY --from=builder /out/ /usr/local/bin/
WORKDIR /var/lib/signal
USER 10001:10001
ENV RUST_LOG=info
# central: 8080 HTTP (login API, /v1/nodes, health, metrics), 9090 gRPC (node registry)
# signal-node: 8090 HTTP (WebSocket /ws, health, metrics), 9091 gRPC (node-to-node relay)
EXPOSE 8080 9090 8090 9091
# The binary is chosen by the command: `central ...`, `signal-node ...` or `loadgen ...`.
# Each one handles SIGTERM itself (graceful drain), so it runs as PID 1 without a shell.
CMD ["central", "--help"]
