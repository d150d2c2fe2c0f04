//! Pending assignments against real processes: a login whose client has not connected yet
//! stays counted on its node across that node's heartbeats, so the next login goes to the
//! other node; once the clients connect, the nodes' heartbeats report them as accepted and
//! the pending assignments turn into connections (counted once, not twice).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use common::{Central, Node, Timing};
use serde_json::Value;
use testkit::{wait_until, WsClient};

/// Heartbeats every 100 ms, so that several happen between two logins of a test.
const QUICK: Timing = Timing {
    heartbeat_ms: 100,
    node_timeout_ms: 3000,
    probe_ms: 200,
};

async fn node_view(c: &Central, id: &str) -> Value {
    c.nodes()
        .await
        .into_iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} not listed"))
}

/// Waits until central has processed a heartbeat of `id` after this call began: its
/// `secondsSinceHeartbeat` goes down between two readings.
async fn next_heartbeat(c: &Central, id: &str) {
    let prev = Cell::new(
        node_view(c, id).await["secondsSinceHeartbeat"]
            .as_f64()
            .unwrap(),
    );
    let prev = &prev;
    wait_until(
        &format!("a heartbeat of {id}"),
        Duration::from_secs(5),
        || async move {
            let now = node_view(c, id).await["secondsSinceHeartbeat"]
                .as_f64()
                .unwrap();
            let beat = now < prev.get();
            prev.set(now);
            beat
        },
    )
    .await;
}

#[tokio::test]
async fn a_login_not_yet_connected_keeps_counting_across_heartbeats() {
    let c = Central::start(QUICK, &[]).await;
    let _n1 = Node::start("h1", &c.grpc_url(), 1, &[]);
    let _n2 = Node::start("h2", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["h1", "h2"], Duration::from_secs(10)).await;

    let mut logins: Vec<(String, Value)> = Vec::new();
    for round in 0..5 {
        let (s, a) = c.login(&format!("a{round}")).await;
        assert_eq!(s, 200, "{a}");
        let a_node = a["node"].as_str().unwrap().to_owned();
        // A's client has not connected; A's node heartbeats (0 accepted) at least once.
        next_heartbeat(&c, &a_node).await;
        let listed = node_view(&c, &a_node).await;
        assert_eq!(listed["assigned"], round + 1, "{listed}");
        let (s, b) = c.login(&format!("b{round}")).await;
        assert_eq!(s, 200, "{b}");
        assert_ne!(
            b["node"], a_node,
            "round {round}: B herded onto A's node although A's login is pending"
        );
        logins.push((format!("a{round}"), a));
        logins.push((format!("b{round}"), b));
    }
    for id in ["h1", "h2"] {
        assert_eq!(node_view(&c, id).await["assigned"], 5);
    }

    // Everyone but the last user connects with the ticket: the nodes report them as accepted
    // and central retires that many pending assignments.
    let (_, last) = logins.pop().unwrap();
    let last_node = last["node"].as_str().unwrap().to_owned();
    let mut clients = Vec::new();
    let mut want: HashMap<String, u64> = HashMap::new();
    for (user, body) in &logins {
        let url = format!(
            "{}?token={}",
            body["url"].as_str().unwrap(),
            body["token"].as_str().unwrap()
        );
        let (ws, welcome) = WsClient::connect_welcomed(&url).await;
        assert_eq!(&welcome["user"], user);
        *want
            .entry(body["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
        clients.push(ws);
    }
    for (id, connected) in &want {
        let pending = u64::from(*id == last_node);
        wait_until(
            &format!("{id} to report {connected} connections and {pending} pending"),
            Duration::from_secs(5),
            || async {
                let n = node_view(&c, id).await;
                n["connections"] == *connected && n["assigned"] == pending
            },
        )
        .await;
        // And it stays so at the next heartbeats: nothing counted twice, nothing lost.
        next_heartbeat(&c, id).await;
        let n = node_view(&c, id).await;
        assert_eq!(n["connections"], *connected, "{n}");
        assert_eq!(n["assigned"], pending, "{n}");
    }
    // Equal loads (5 + 0 and 4 + 1): logins keep alternating.
    let (_, x) = c.login("x").await;
    next_heartbeat(&c, x["node"].as_str().unwrap()).await;
    let (_, y) = c.login("y").await;
    assert_ne!(x["node"], y["node"]);
}

/// A connection accepted while central cannot be reached is reported by the first heartbeat
/// central acknowledges afterwards: a lost heartbeat loses no count. Central keeps its
/// registry in Redis, so a new central process continues where the old one stopped.
#[tokio::test]
async fn a_lost_heartbeat_loses_no_accepted_count() {
    let redis = testkit::Redis::start().await;
    let timing = Timing {
        heartbeat_ms: 100,
        node_timeout_ms: 20_000,
        probe_ms: 200,
    };
    let (http_port, grpc_port) = (testkit::free_port(), testkit::free_port());
    let extra = ["--redis-url", &redis.url()];
    let c = Central::start_on(http_port, grpc_port, timing, &extra).await;
    let node = Node::start("lh", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["lh"], Duration::from_secs(10)).await;
    let (s, body) = c.login("alice").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(node_view(&c, "lh").await["assigned"], 1);

    // Central goes away; alice connects meanwhile (the node checks the ticket by itself).
    drop(c);
    let url = format!(
        "{}?token={}",
        body["url"].as_str().unwrap(),
        body["token"].as_str().unwrap()
    );
    let (_alice, _) = WsClient::connect_welcomed(&url).await;
    // At least one heartbeat that carries the accepted connection fails.
    let readyz = format!("http://127.0.0.1:{}/readyz", node.http_port);
    wait_until(
        "the node to see central unreachable",
        Duration::from_secs(10),
        || {
            let readyz = readyz.clone();
            async move {
                let v: Value = reqwest::get(&readyz).await.unwrap().json().await.unwrap();
                !v["central"]["lastError"].is_null()
            }
        },
    )
    .await;

    // A new central on the same ports and Redis: the node is still known (no new Register),
    // and its next acknowledged heartbeat retires the pending login.
    let c = Central::start_on(http_port, grpc_port, timing, &extra).await;
    wait_until(
        "the node to report alice as connected, not pending",
        Duration::from_secs(10),
        || async {
            let n = node_view(&c, "lh").await;
            n["connections"] == 1 && n["assigned"] == 0
        },
    )
    .await;
    assert!(
        !c.metrics().await.contains("central_registrations_total{"),
        "the node registered again, so this did not test a lost heartbeat"
    );
}
