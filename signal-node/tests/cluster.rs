//! Three real nodes (in-process, real gRPC on loopback) sharing one real redis-server:
//! cross-node relay, FIFO across nodes, the reconnect race, Redis outage and recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use signal_node::{Directory, DirectoryConfig};
use signal_proto::UserId;
use testkit::{Received, Redis, WsClient};

async fn cluster(redis: &Redis) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let mut cfg = dev(id);
        cfg.directory = DirectoryConfig::Redis(redis.url().into());
        cfg.rate_limit = 0;
        nodes.push(TestNode::start(cfg).await);
    }
    nodes
}

async fn stop(nodes: Vec<TestNode>) {
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_roap_type_crosses_nodes() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    let mut carol = nodes[2].connect("carol").await;
    for m in every_type("bob") {
        alice.send_json(&m).await;
        assert_eq!(strip_n(bob.next_json().await), as_relayed(&m, "alice"));
    }
    for m in every_type("carol") {
        bob.send_json(&m).await;
        assert_eq!(strip_n(carol.next_json().await), as_relayed(&m, "bob"));
    }
    for m in every_type("alice") {
        carol.send_json(&m).await;
        assert_eq!(strip_n(alice.next_json().await), as_relayed(&m, "carol"));
    }
    // Absent peer: OFFLINE, also across the cluster.
    alice.send_json(&offer("nobody", "s9")).await;
    expect_server_error(&mut alice, "OFFLINE", Some("nobody"), Some("s9")).await;
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_of_500_messages_from_five_senders_across_nodes() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis).await;
    let mut rx = nodes[0].connect("rx").await;
    let mut senders = Vec::new();
    for i in 0..5 {
        let name = format!("s{i}");
        let c = nodes[i % 3].connect(&name).await;
        senders.push(tokio::spawn(async move {
            let mut c = c;
            for seq in 0..100u64 {
                c.send_json(&json!({"type":"Candidate","to":"rx","sessionID":name,"seq":seq,"candidate":null}))
                    .await;
            }
            roundtrip(&mut c).await;
        }));
    }
    let mut next = [0u64; 5];
    for _ in 0..500 {
        let v = rx.next_json().await;
        let from = v["from"].as_str().unwrap();
        let i: usize = from[1..].parse().unwrap();
        assert_eq!(v["seq"], next[i], "out of order from {from}: {v}");
        next[i] += 1;
    }
    assert_eq!(next, [100; 5]);
    for s in senders {
        s.await.unwrap();
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_moving_between_nodes_replaces_with_4409_and_keeps_the_newest_entry() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis).await;
    let dir = Directory::redis(redis.url()).unwrap();
    let alice_id = UserId::new("alice").unwrap();
    let mut bob = nodes[2].connect("bob").await;
    let mut alice_a = nodes[0].connect("alice").await;
    // bob's connection caches alice's route (node a).
    bob.send_json(&offer("alice", "s1")).await;
    assert_eq!(alice_a.next_json().await["sessionID"], "s1");

    // alice moves to b: the connection on a is closed with 4409.
    let mut alice_b = nodes[1].connect("alice").await;
    assert_eq!(alice_a.expect_close().await, 4409);
    // a's cleanup ran (or runs) after b's claim: the entry stays b.
    testkit::wait_until(
        "a's connection released",
        Duration::from_secs(5),
        || async {
            let (_, body) = get_json(&nodes[0].url("/readyz")).await;
            body["connections"] == 0
        },
    )
    .await;
    assert_eq!(dir.lookup(&alice_id).await.unwrap().unwrap().node_id, "b");
    // bob's cached route is stale: NOT_HERE, fresh lookup, delivered on b.
    bob.send_json(&offer("alice", "s2")).await;
    assert_eq!(alice_b.next_json().await["sessionID"], "s2");

    // The race: alice moves b -> c while she closes the b connection herself.
    let closing = tokio::spawn(async move { alice_b.close().await });
    let mut alice_c = nodes[2].connect("alice").await;
    closing.await.unwrap();
    testkit::wait_until("b's connection gone", Duration::from_secs(5), || async {
        let (_, body) = get_json(&nodes[1].url("/readyz")).await;
        body["connections"] == 0
    })
    .await;
    assert_eq!(dir.lookup(&alice_id).await.unwrap().unwrap().node_id, "c");
    bob.send_json(&offer("alice", "s3")).await;
    assert_eq!(alice_c.next_json().await["sessionID"], "s3");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_unavailable_and_recovery_needs_no_restart() {
    let mut redis = Redis::start().await;
    let nodes = cluster(&redis).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut amy = nodes[0].connect("amy").await;
    let mut bob = nodes[1].connect("bob").await;

    redis.kill();
    // A lookup fails: UNAVAILABLE (not OFFLINE).
    bob.send_json(&offer("alice", "s1")).await;
    expect_server_error(&mut bob, "UNAVAILABLE", Some("alice"), Some("s1")).await;
    // Same-node delivery needs no directory.
    amy.send_json(&offer("alice", "s2")).await;
    assert_eq!(alice.next_json().await["sessionID"], "s2");
    // New connections cannot be made reachable: refused with 503 and a JSON error.
    let err = WsClient::try_connect(&nodes[2].ws("carol"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status, Some(503));
    // /readyz stays 200 (a shared dependency alone does not flip it) and shows the outage.
    testkit::wait_until(
        "outage visible in /readyz",
        Duration::from_secs(5),
        || async {
            let (s, body) = get_json(&nodes[1].url("/readyz")).await;
            s == 200
                && body["directory"]["healthy"] == false
                && body["directory"]["lastError"].is_string()
        },
    )
    .await;
    let metrics = metrics_text(&nodes[1]).await;
    assert!(
        metrics.contains("signal_directory_errors_total"),
        "{metrics}"
    );

    // Redis comes back empty: every node reasserts its connections without a restart.
    redis.restart().await;
    for n in &nodes {
        testkit::wait_until(
            "directory healthy again",
            Duration::from_secs(10),
            || async {
                let (_, body) = get_json(&n.url("/readyz")).await;
                body["directory"]["healthy"] == true
            },
        )
        .await;
    }
    let dir = Directory::redis(redis.url()).unwrap();
    testkit::wait_until("entries reasserted", Duration::from_secs(10), || async {
        let mut all = true;
        for u in ["alice", "amy", "bob"] {
            all &= matches!(dir.lookup(&UserId::new(u).unwrap()).await, Ok(Some(_)));
        }
        all
    })
    .await;
    // A new connection on another node routes to alice through the reasserted entry.
    let mut carol = nodes[2].connect("carol").await;
    carol.send_json(&offer("alice", "s3")).await;
    assert_eq!(alice.next_json().await["sessionID"], "s3");
    bob.send_json(&offer("carol", "s4")).await;
    assert_eq!(carol.next_json().await["sessionID"], "s4");
    // Nothing else arrived at bob (no stray errors).
    match bob.recv_within(Duration::from_millis(200)).await {
        None => {}
        Some(Received::Json(v)) => panic!("unexpected {v}"),
        Some(other) => panic!("unexpected {other:?}"),
    }
    stop(nodes).await;
}
