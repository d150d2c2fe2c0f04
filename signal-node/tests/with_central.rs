//! Nodes with a real central (in-process `central::run`, real gRPC): registration, readiness,
//! login with a ticket, deregistration, and routing around a node central no longer lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use signal_node::Directory;
use signal_proto::UserId;
use testkit::{free_port, wait_for_port, wait_until, Proc, Redis, WsClient};

const SECRET: &str = "shared-cluster-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_serves_tickets_from_central_and_deregisters() {
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(200),
        Duration::from_millis(1000),
    ))
    .await;
    let mut cfg = dev("node-1");
    cfg.central = Some(central.grpc_url());
    cfg.secret = Some(SECRET.into());
    cfg.dev_auth = false;
    let node = TestNode::start(cfg).await;
    wait_until("node ready", Duration::from_secs(10), || async {
        get_json(&node.url("/readyz")).await.0 == 200
    })
    .await;
    // Central lists it as a peer (and hands it out) once it answered the first probe.
    wait_until(
        "node probed and listed",
        Duration::from_secs(10),
        || async {
            let (_, body) = get_json(&node.url("/readyz")).await;
            central
                .reachable_nodes()
                .await
                .contains(&"node-1".to_owned())
                && body["central"]["livePeers"] == serde_json::json!(["node-1"])
        },
    )
    .await;
    let (_, body) = get_json(&node.url("/readyz")).await;
    assert_eq!(body["central"]["registered"], true);

    // Login at central, connect with the ticket it minted.
    let (s, login) = get_json(&format!("http://{}/v1/endpoint?user=alice", central.http)).await;
    assert_eq!(s, 200, "{login}");
    assert_eq!(login["node"], "node-1");
    let url = format!(
        "{}?token={}",
        login["url"].as_str().unwrap(),
        login["token"].as_str().unwrap()
    );
    let (mut alice, w) = WsClient::connect_welcomed(&url).await;
    assert_eq!(w["user"], "alice");
    roundtrip(&mut alice).await;

    node.shutdown().await.unwrap();
    assert_eq!(alice.expect_close().await, 1012);
    wait_until("node deregistered", Duration::from_secs(5), || async {
        !central
            .reachable_nodes()
            .await
            .contains(&"node-1".to_owned())
    })
    .await;
}

struct NodeProc {
    proc: Proc,
    http: SocketAddr,
}

impl NodeProc {
    async fn start(id: &str, redis: &Redis, central: &TestCentral) -> NodeProc {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proc = Proc::spawn(
            id,
            Command::new(env!("CARGO_BIN_EXE_signal-node"))
                .args(["--id", id, "--dev-auth", "--secret", SECRET])
                .args([
                    "--listen",
                    &http.to_string(),
                    "--grpc-listen",
                    &grpc.to_string(),
                ])
                .args([
                    "--redis-url",
                    &redis.url(),
                    "--central",
                    &central.grpc_url(),
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null()),
        );
        wait_for_port(http, Duration::from_secs(10)).await;
        NodeProc { proc, http }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn connect(&self, user: &str) -> WsClient {
        WsClient::connect_welcomed(&format!("ws://{}/ws?user={user}", self.http))
            .await
            .0
    }

    async fn live_peers(&self) -> Value {
        get_json(&self.url("/readyz")).await.1["central"]["livePeers"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_central_no_longer_lists_is_offline_then_reachable_again() {
    let redis = Redis::start().await;
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(200),
        Duration::from_millis(1000),
    ))
    .await;
    let a = NodeProc::start("a", &redis, &central).await;
    let b = NodeProc::start("b", &redis, &central).await;
    wait_until(
        "both nodes see each other",
        Duration::from_secs(10),
        || async { b.live_peers().await == serde_json::json!(["a", "b"]) },
    )
    .await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    bob.send_json(&offer("alice", "s1")).await;
    assert_eq!(alice.next_json().await["sessionID"], "s1");
    // bob's reader answers the Ping only once the forward of s1 has its answer from a: a
    // SIGSTOP before that answer left b would time s1 out (UNAVAILABLE) instead.
    roundtrip(&mut bob).await;

    // Node a hangs (SIGSTOP): its sockets stay open but nothing answers. Central evicts it.
    a.proc.signal(19);
    wait_until("b no longer sees a", Duration::from_secs(10), || async {
        b.live_peers().await == serde_json::json!(["b"])
    })
    .await;
    let start = Instant::now();
    bob.send_json(&offer("alice", "s2")).await;
    expect_server_error(&mut bob, "OFFLINE", Some("alice"), Some("s2")).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    // The stale entry is removed (compare-and-delete, in the background).
    let dir = Directory::redis(redis.url()).unwrap();
    wait_until("stale entry removed", Duration::from_secs(5), || async {
        dir.lookup(&UserId::new("alice").unwrap()).await == Ok(None)
    })
    .await;
    // Now a plain directory miss, answered at once.
    bob.send_json(&offer("alice", "s2b")).await;
    expect_server_error(&mut bob, "OFFLINE", Some("alice"), Some("s2b")).await;

    // a resumes: central asks it to register again, it reasserts alice's entry.
    a.proc.signal(18);
    wait_until("alice's entry reasserted", Duration::from_secs(10), || async {
        matches!(dir.lookup(&UserId::new("alice").unwrap()).await, Ok(Some(l)) if l.node_id == "a")
    })
    .await;
    bob.send_json(&offer("alice", "s3")).await;
    // s2 was answered OFFLINE after the forward timed out, but its request sat in a's socket
    // buffer and a delivered it when it resumed (documented: a timeout is ambiguous).
    let mut got = alice.next_json().await;
    if got["sessionID"] == "s2" {
        got = alice.next_json().await;
    }
    assert_eq!(got["sessionID"], "s3");
    let (mut a, mut b) = (a, b);
    assert!(a.proc.is_running() && b.proc.is_running());
}

/// Central's `/v1/nodes` entry of `id`: (connections, pending assignments).
async fn load_of(central: &TestCentral, id: &str) -> (u64, u64) {
    let (_, body) = get_json(&format!("http://{}/v1/nodes", central.http)).await;
    let n = body["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["id"] == id).cloned())
        .unwrap_or_default();
    (
        n["connections"].as_u64().unwrap_or(u64::MAX),
        n["assigned"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_report_ticket_connections_as_accepted() {
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(200),
        Duration::from_millis(1000),
    ))
    .await;
    let mut cfg = dev("node-1");
    cfg.central = Some(central.grpc_url());
    cfg.secret = Some(SECRET.into());
    cfg.dev_auth = true;
    let node = TestNode::start(cfg).await;
    wait_until("node registered", Duration::from_secs(10), || async {
        central
            .reachable_nodes()
            .await
            .contains(&"node-1".to_owned())
    })
    .await;
    let mut tickets = Vec::new();
    for user in ["alice", "bob"] {
        let (s, login) =
            get_json(&format!("http://{}/v1/endpoint?user={user}", central.http)).await;
        assert_eq!(s, 200, "{login}");
        tickets.push(format!(
            "{}?token={}",
            login["url"].as_str().unwrap(),
            login["token"].as_str().unwrap()
        ));
    }
    assert_eq!(load_of(&central, "node-1").await, (0, 2));
    // Alice connects with her ticket, carol with dev-auth (no login at central): only alice's
    // connection retires a pending assignment; bob's stays counted.
    let (_alice, _) = WsClient::connect_welcomed(&tickets[0]).await;
    let carol_url = node.url("/ws?user=carol").replacen("http://", "ws://", 1);
    let (_carol, _) = WsClient::connect_welcomed(&carol_url).await;
    wait_until(
        "central to see 2 connections and bob pending",
        Duration::from_secs(5),
        || async { load_of(&central, "node-1").await == (2, 1) },
    )
    .await;
    let (_bob, _) = WsClient::connect_welcomed(&tickets[1]).await;
    wait_until(
        "central to see 3 connections, nothing pending",
        Duration::from_secs(5),
        || async { load_of(&central, "node-1").await == (3, 0) },
    )
    .await;
}
