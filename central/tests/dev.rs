//! The dev cluster: `central --dev` as a real process answers a login and relays an Offer
//! between users on its two nodes, and drains a node on `POST /v1/dev/nodes/{id}/drain` (a
//! route that a central without `--dev` does not have); the in-process `DevCluster` drains a
//! node on request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use central::dev::{DevCluster, DevOptions};
use common::{central_bin, login, nodes, Central, Timing};
use serde_json::json;
use testkit::{free_port, wait_until, Proc, WsClient};

/// Logs `user` in and connects it with its ticket.
async fn connect(base: &str, user: &str) -> (WsClient, String) {
    let (s, body) = login(base, Some(user), None).await;
    assert_eq!(s, 200, "{body}");
    let url = format!(
        "{}?token={}",
        body["url"].as_str().unwrap(),
        body["token"].as_str().unwrap()
    );
    let (ws, welcome) = WsClient::connect_welcomed(&url).await;
    assert_eq!(welcome["user"], user);
    assert_eq!(welcome["node"], body["node"]);
    (ws, body["node"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn central_dev_process_logs_in_and_relays_across_nodes() {
    let port = free_port();
    let mut proc = Proc::spawn(
        "central --dev",
        Command::new(central_bin())
            .args(["--dev", "--http-listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped()),
    );
    // It prints the URLs once the cluster is up.
    let stdout = proc.child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines.join("\n")
    });
    let printed = tokio::time::timeout(Duration::from_secs(20), printed)
        .await
        .expect("central --dev printed its URLs")
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        printed.contains(&format!("{base}/v1/endpoint?user=")),
        "{printed}"
    );
    assert!(printed.contains(&format!("{base}/")), "{printed}");
    let listed = nodes(&base).await;
    assert_eq!(listed.len(), 2);
    for n in &listed {
        assert!(printed.contains(n["url"].as_str().unwrap()), "{printed}");
    }

    // Two users land on different nodes (least connections), then alice calls bob.
    let (mut alice, alice_node) = connect(&base, "alice").await;
    let (mut bob, bob_node) = connect(&base, "bob").await;
    assert_ne!(
        alice_node, bob_node,
        "the second login goes to the other node"
    );
    alice
        .send_json(&json!({"type":"Offer","to":"bob","sessionID":"s1","sdp":"v=0 offer"}))
        .await;
    let got = bob.next_json().await;
    assert_eq!(got["type"], "Offer");
    assert_eq!(got["from"], "alice");
    assert_eq!(got["sdp"], "v=0 offer");
    bob.send_json(&json!({"type":"Answer","to":"alice","sessionID":"s1","sdp":"v=0 answer"}))
        .await;
    let got = alice.next_json().await;
    assert_eq!(got["type"], "Answer");
    assert_eq!(got["from"], "bob");

    // SIGTERM stops it gracefully: the nodes close their connections (1012) and it exits 0.
    proc.signal(15);
    assert_eq!(alice.expect_close().await, 1012);
    let status = proc.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let (mut proc, base) = dev_process(1, 60_000).await;
    // Two connected clients make the node's drain last half its window (60 s here).
    let (_alice, _) = connect(&base, "alice").await;
    let (_bob, _) = connect(&base, "bob").await;
    proc.signal(15);
    // Wait until the graceful stop has begun (the node told central it drains), then
    // interrupt it.
    wait_until(
        "the graceful stop to begin",
        Duration::from_secs(10),
        || {
            let base = base.clone();
            // No answer at all also means the stop has begun.
            async move { active_nodes(&base).await.is_none_or(|n| n == 0) }
        },
    )
    .await;
    proc.signal(2);
    let status = proc.wait_exit(Duration::from_secs(1)).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[tokio::test]
async fn dev_cluster_in_process_drains_a_node() {
    let cluster = DevCluster::start(DevOptions::default()).await.unwrap();
    assert_eq!(cluster.node_ids().len(), 2);
    assert_eq!(cluster.node_ws_urls().len(), 2);
    let base = cluster.central_url();
    let (mut alice, alice_node) = connect(&base, "alice").await;
    let i = cluster
        .node_ids()
        .iter()
        .position(|id| id.as_str() == alice_node)
        .unwrap();
    assert!(cluster.drain_node(i));
    assert!(!cluster.drain_node(99));
    // Alice is told to go back to central, which now hands out only the other node.
    assert_eq!(alice.expect_close().await, 1012);
    wait_marked_draining(&base).await;
    let (_alice, again) = connect(&base, "alice").await;
    assert_ne!(again, alice_node);
    cluster.shutdown().await.unwrap();
}

/// Waits until central lists one node that is not draining: the drained one stays listed,
/// marked draining, until its sessions have moved or expired.
async fn wait_marked_draining(base: &str) {
    wait_until(
        "the drained node to be marked draining",
        Duration::from_secs(10),
        || async move { active_nodes(base).await == Some(1) },
    )
    .await;
}

/// How many nodes `/v1/nodes` lists that `keep` accepts; `None` when central does not answer.
async fn count_nodes(base: &str, keep: impl Fn(&serde_json::Value) -> bool) -> Option<usize> {
    let r = reqwest::get(format!("{base}/v1/nodes")).await.ok()?;
    let v = r.json::<serde_json::Value>().await.ok()?;
    Some(
        v["nodes"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| keep(n)).count()),
    )
}

/// Listed nodes that are not draining.
async fn active_nodes(base: &str) -> Option<usize> {
    count_nodes(base, |n| n["state"] != "draining").await
}

/// Listed nodes that answered central's probe (only those are handed out).
async fn listed_nodes(base: &str) -> Option<usize> {
    count_nodes(base, |n| n["reachable"] == true).await
}

/// Starts `central --dev` with `n` nodes and the given drain window; waits until central lists them, reachable.
async fn dev_process(n: usize, drain_ms: u64) -> (Proc, String) {
    let port = free_port();
    let proc = Proc::spawn(
        "central --dev",
        Command::new(central_bin())
            .args(["--dev", "--http-listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .env("CENTRAL_DEV_NODES", n.to_string())
            .env("CENTRAL_DEV_DRAIN_MS", drain_ms.to_string())
            .stdout(Stdio::null()),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until(
        "the dev cluster to list its nodes",
        Duration::from_secs(20),
        || {
            let base = base.clone();
            async move { listed_nodes(&base).await == Some(n) }
        },
    )
    .await;
    (proc, base)
}

async fn post_drain(base: &str, node: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/dev/nodes/{node}/drain"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

#[tokio::test]
async fn dev_drain_route_drains_the_node_and_clients_log_in_again_elsewhere() {
    let (mut proc, base) = dev_process(2, 500).await;
    let (mut alice, alice_node) = connect(&base, "alice").await;
    let (mut bob, bob_node) = connect(&base, "bob").await;
    assert_ne!(alice_node, bob_node);

    // An unknown node is a 404 with a JSON error, and drains nothing.
    let (s, body) = post_drain(&base, "node-99").await;
    assert_eq!(s, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("node-99"),
        "{body}"
    );
    assert_eq!(nodes(&base).await.len(), 2);

    let (s, body) = post_drain(&base, &alice_node).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["node"], alice_node.as_str());
    assert_eq!(body["state"], "draining");
    // Alice is told to go back to central (1012); bob, on the other node, is not disturbed.
    assert_eq!(alice.expect_close().await, 1012);
    wait_marked_draining(&base).await;
    let (mut alice, again) = connect(&base, "alice").await;
    assert_eq!(again, bob_node, "alice logs in again on the remaining node");
    alice
        .send_json(&json!({"type":"Offer","to":"bob","sessionID":"s2","sdp":"v=0 again"}))
        .await;
    let got = bob.next_json().await;
    assert_eq!(got["type"], "Offer");
    assert_eq!(got["from"], "alice");
    // Draining it again is harmless.
    let (s, _) = post_drain(&base, &alice_node).await;
    assert_eq!(s, 202);

    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn dev_drain_route_is_404_without_dev() {
    let c = Central::start(Timing::FAST, &[]).await;
    for node in ["node-1", "anything"] {
        let (s, _) = post_drain(&c.url(), node).await;
        assert_eq!(s, 404);
    }
    // The route is not there at all: GET is a 404 too, not a 405.
    let r = reqwest::get(format!("{}/v1/dev/nodes/node-1/drain", c.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn dev_cluster_gives_its_allowed_origins_to_its_nodes() {
    let mut opts = DevOptions::default();
    opts.central.allowed_origins = "http://127.0.0.1:8080".parse().unwrap();
    let cluster = DevCluster::start(opts).await.unwrap();
    let base = cluster.central_url();
    // Open dev login (no Origin header: not a browser).
    let (status, body) = login(&base, Some("alice"), None).await;
    assert_eq!(status, 200, "{body}");
    let url = format!(
        "{}?token={}",
        body["url"].as_str().unwrap(),
        body["token"].as_str().unwrap()
    );
    let upgrade = |origin: &'static str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match upgrade("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert!(upgrade("http://127.0.0.1:8080").await.is_ok());
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn dev_nodes_share_one_mailbox() {
    let (mut proc, base) = dev_process(2, 500).await;
    // Alice stores a message for carol, who is offline; carol then signs in on the other node
    // and gets it pushed from the mailbox.
    let (mut alice, alice_node) = connect(&base, "alice").await;
    alice
        .send_json(&json!({"type":"Message","to":"carol","id":"m-1","body":"while you were out"}))
        .await;
    let accepted = alice.next_json().await;
    assert_eq!(accepted["type"], "Accepted", "{accepted}");
    assert_eq!(accepted["stored"], true, "{accepted}");
    let (mut carol, carol_node) = connect(&base, "carol").await;
    assert_ne!(
        alice_node, carol_node,
        "the second login goes to the other node"
    );
    let got = carol.next_json().await;
    assert_eq!(got["type"], "Message", "{got}");
    assert_eq!(got["from"], "alice");
    assert_eq!(got["id"], "m-1");
    assert_eq!(got["body"], "while you were out");
    assert_eq!(got["delayed"], true);
    proc.signal(15);
    let _ = proc.wait_exit(Duration::from_secs(20)).await;
}
