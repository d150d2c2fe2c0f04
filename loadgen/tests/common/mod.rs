//! Shared helpers of loadgen's integration tests: real in-process signal nodes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use signal_node::{Directory, DirectoryConfig, Listeners};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Starts a dev-auth signal node on loopback sharing `directory`; returns its WebSocket URL.
/// The node drains and stops when `stop` is cancelled.
pub async fn start_node(id: &str, directory: Directory, stop: CancellationToken) -> String {
    start_node_with(id, DirectoryConfig::Memory(directory), stop).await
}

/// Like [`start_node`] with any directory (Redis: the mailbox is in the same Redis).
pub async fn start_node_with(
    id: &str,
    directory: DirectoryConfig,
    stop: CancellationToken,
) -> String {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", http.local_addr().unwrap());
    let mut config = signal_node::Config::dev(id);
    config.directory = directory;
    config.drain = Duration::from_millis(100);
    tokio::spawn(async move {
        signal_node::run(config, Listeners { http, grpc }, async move {
            stop.cancelled().await
        })
        .await
        .unwrap();
    });
    url
}
