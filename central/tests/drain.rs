//! Graceful drain of a node in a real cluster (real central, two real signal-node processes,
//! real redis-server): the node with 20 clients gets SIGTERM; central stops handing it out
//! within one heartbeat; every client sees 1012, spread over the drain window; the process
//! exits 0; a message to a drained user gets OFFLINE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use testkit::{free_port, wait_until, Proc, Redis, WsClient};

const DRAIN_MS: u64 = 2000;

fn node(id: &str, central: &Central, redis: &Redis) -> (Proc, String) {
    let http_port = free_port();
    let proc = Proc::spawn(
        &format!("signal-node {id}"),
        Command::new(node_bin())
            .args(["--id", id])
            .args(["--listen", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--central", &central.grpc_url()])
            .args(["--redis-url", &redis.url()])
            .args(["--secret", SECRET])
            .args(["--drain-ms", &DRAIN_MS.to_string()])
            // These clients do not come back: their kept sessions end after 1 s.
            .args(["--resume-window-ms", "1000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );
    (proc, format!("http://127.0.0.1:{http_port}"))
}

/// Logs in through central and connects with the ticket; returns the client and its node.
async fn login_and_connect(central: &Central, user: &str) -> (WsClient, String) {
    let (status, body) = central.login(user).await;
    assert_eq!(status, 200, "{body}");
    let url = format!(
        "{}?token={}",
        body["url"].as_str().unwrap(),
        body["token"].as_str().unwrap()
    );
    let (ws, welcome) = WsClient::connect_welcomed(&url).await;
    assert_eq!(welcome["user"], user);
    (ws, body["node"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_node_with_20_clients() {
    let redis = Redis::start().await;
    let central = Central::start(Timing::FAST, &[]).await;
    let (mut a, a_http) = node("a", &central, &redis);
    central.wait_nodes(&["a"], Duration::from_secs(15)).await;

    // 20 users log in while "a" is the only node: all land there.
    let mut clients = Vec::new();
    for i in 0..20 {
        let (ws, at) = login_and_connect(&central, &format!("u{i}")).await;
        assert_eq!(at, "a");
        clients.push(ws);
    }
    let (_b, _) = node("b", &central, &redis);
    central
        .wait_nodes(&["a", "b"], Duration::from_secs(15))
        .await;
    // "b" is empty, so the next login goes there.
    let (mut watcher, at) = login_and_connect(&central, "watcher").await;
    assert_eq!(at, "b");

    let signalled = Instant::now();
    a.signal(15);

    // Central stops handing "a" out at once: the node says it is draining before it closes
    // anything (it stays listed, for the other nodes, until its drain is over). The bound (one
    // test heartbeat plus slack for a loaded machine) is below one default heartbeat (2 s).
    let within = Duration::from_millis(Timing::FAST.heartbeat_ms) + Duration::from_secs(1);
    wait_until("central to mark node a draining", within, || async {
        central
            .nodes()
            .await
            .iter()
            .all(|n| n["id"] != "a" || n["state"] == "draining")
    })
    .await;
    for i in 0..10 {
        let (status, body) = central.login(&format!("late{i}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["node"], "b", "a draining node was handed out");
    }
    // The node is not ready while it drains.
    let ready = reqwest::get(format!("{a_http}/readyz")).await;
    assert!(ready.map(|r| r.status() == 503).unwrap_or(true));

    // Every client gets 1012, and the closes are spread over the drain window.
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.expect_close().await;
                (code, signalled.elapsed())
            })
        })
        .collect();
    let mut closes = Vec::new();
    for w in waits {
        closes.push(w.await.unwrap());
    }
    assert!(closes.iter().all(|(code, _)| *code == 1012), "{closes:?}");
    let first = closes.iter().map(|(_, t)| *t).min().unwrap();
    let last = closes.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(DRAIN_MS / 2),
        "closes not spread over the {DRAIN_MS} ms window: {closes:?}"
    );

    let status = a.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Once drained it deregisters.
    wait_until("central to drop node a", Duration::from_secs(5), || async {
        !central.node_ids().await.contains(&"a".to_owned())
    })
    .await;

    // A message to a drained user gets OFFLINE, from the node, naming the peer.
    watcher
        .send_json(&json!({"type":"Offer","to":"u7","sessionID":"s1","sdp":"v=0"}))
        .await;
    let err = watcher.next_json().await;
    assert_eq!(err["type"], "Error", "{err}");
    assert_eq!(err["errorType"], "OFFLINE", "{err}");
    assert_eq!(err["origin"], "server");
    assert_eq!(err["from"], "u7");
    assert_eq!(err["sessionID"], "s1");
}
