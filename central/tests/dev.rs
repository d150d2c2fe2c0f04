//! The dev cluster: `central --dev` as a real process answers a login and relays an Offer
//! between users on its two nodes; the in-process `DevCluster` drains a node on request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use central::dev::{DevCluster, DevOptions};
use common::{central_bin, login, nodes};
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
    let port = free_port();
    let mut proc = Proc::spawn(
        "central --dev",
        Command::new(central_bin())
            .args(["--dev", "--http-listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .env("CENTRAL_DEV_NODES", "1")
            .env("CENTRAL_DEV_DRAIN_MS", "60000")
            .stdout(Stdio::null()),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until(
        "the dev cluster to list its node",
        Duration::from_secs(20),
        || {
            let base = base.clone();
            async move {
                match reqwest::get(format!("{base}/v1/nodes")).await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|v| v["nodes"].as_array().is_some_and(|a| a.len() == 1)),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    // Two connected clients make the node's drain last half its window (60 s here).
    let (_alice, _) = connect(&base, "alice").await;
    let (_bob, _) = connect(&base, "bob").await;
    proc.signal(15);
    // Wait until the graceful stop has begun (the node deregistered), then interrupt it.
    wait_until(
        "the graceful stop to begin",
        Duration::from_secs(10),
        || {
            let base = base.clone();
            async move {
                match reqwest::get(format!("{base}/v1/nodes")).await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|v| v["nodes"].as_array().is_some_and(|a| a.is_empty())),
                    Err(_) => true,
                }
            }
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
    wait_until("the drained node to leave", Duration::from_secs(10), || {
        let base = base.clone();
        async move { nodes(&base).await.len() == 1 }
    })
    .await;
    let (_alice, again) = connect(&base, "alice").await;
    assert_ne!(again, alice_node);
    cluster.shutdown().await.unwrap();
}
