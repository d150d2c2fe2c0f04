//! High availability: two central replicas on one real Redis give the same answers, and a
//! Redis outage makes logins fail with 503 (shown in /readyz) until Redis is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Central, Node, Timing};
use testkit::{wait_until, Redis};

#[tokio::test]
async fn two_replicas_agree_and_share_assignments() {
    let redis = Redis::start().await;
    let url = redis.url();
    let a = Central::start(Timing::SLOW, &["--redis-url", &url]).await;
    let b = Central::start(Timing::SLOW, &["--redis-url", &url]).await;
    // The nodes know only replica A.
    let _n1 = Node::start("h1", &a.grpc_url(), 1, &[]);
    let _n2 = Node::start("h2", &a.grpc_url(), 1, &[]);
    a.wait_nodes(&["h1", "h2"], Duration::from_secs(10)).await;
    b.wait_nodes(&["h1", "h2"], Duration::from_secs(10)).await;
    let strip = |mut v: Vec<serde_json::Value>| {
        for n in &mut v {
            n.as_object_mut().unwrap().remove("secondsSinceHeartbeat");
        }
        v
    };
    assert_eq!(strip(a.nodes().await), strip(b.nodes().await));

    // Logins through A are counted where B sees them, and B balances against them.
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..10 {
        let (s, body) = a.login(&format!("a{i}")).await;
        assert_eq!(s, 200, "{body}");
        *counts
            .entry(body["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let assigned_b: u64 = b
        .nodes()
        .await
        .iter()
        .map(|n| n["assigned"].as_u64().unwrap())
        .sum();
    assert_eq!(assigned_b, 10);
    for i in 0..10 {
        let (s, body) = b.login(&format!("b{i}")).await;
        assert_eq!(s, 200, "{body}");
        *counts
            .entry(body["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(counts["h1"], 10, "{counts:?}");
    assert_eq!(counts["h2"], 10, "{counts:?}");
    let per_node = |nodes: Vec<serde_json::Value>| -> Vec<u64> {
        nodes
            .iter()
            .map(|n| n["assigned"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(per_node(a.nodes().await), vec![10, 10]);
    assert_eq!(per_node(b.nodes().await), vec![10, 10]);
    // Each replica's readyz shows the shared store.
    let r: serde_json::Value = reqwest::get(format!("{}/readyz", b.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["registry"]["store"], "redis");
    assert_eq!(r["registry"]["ok"], true);
}

#[tokio::test]
async fn a_node_evicted_by_either_replica_is_gone_for_both() {
    let redis = Redis::start().await;
    let url = redis.url();
    let a = Central::start(Timing::FAST, &["--redis-url", &url]).await;
    let b = Central::start(Timing::FAST, &["--redis-url", &url]).await;
    let n1 = Node::start("e1", &a.grpc_url(), 1, &[]);
    let _n2 = Node::start("e2", &b.grpc_url(), 1, &[]);
    a.wait_nodes(&["e1", "e2"], Duration::from_secs(10)).await;
    n1.proc.signal(9);
    a.wait_nodes(&["e2"], Duration::from_secs(10)).await;
    b.wait_nodes(&["e2"], Duration::from_secs(10)).await;
    for i in 0..20 {
        let c = if i % 2 == 0 { &a } else { &b };
        let (s, body) = c.login(&format!("u{i}")).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["node"], "e2");
    }
    // Counted once across the replicas.
    let count = |m: String| -> u64 {
        m.lines()
            .find(|l| l.starts_with("central_evictions_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count(a.metrics().await) + count(b.metrics().await), 1);
}

#[tokio::test]
async fn redis_outage_gives_503_and_heals_by_itself() {
    let mut redis = Redis::start().await;
    let c = Central::start(Timing::FAST, &["--redis-url", &redis.url()]).await;
    let _n = Node::start("o1", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["o1"], Duration::from_secs(10)).await;
    assert_eq!(c.login("alice").await.0, 200);

    redis.kill();
    wait_until(
        "login to fail with 503",
        Duration::from_secs(10),
        || async { c.login("alice").await.0 == 503 },
    )
    .await;
    let (_, body) = c.login("alice").await;
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("redis"), "{msg}");
    let ready = reqwest::get(format!("{}/readyz", c.url())).await.unwrap();
    // A shared dependency's outage alone does not flip readiness; the body shows it.
    assert_eq!(ready.status(), 200);
    let r: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(r["registry"]["ok"], false, "{r}");
    assert!(r["registry"]["error"].is_string(), "{r}");
    let nodes = reqwest::get(format!("{}/v1/nodes", c.url())).await.unwrap();
    assert_eq!(nodes.status(), 503);
    let h = reqwest::get(format!("{}/healthz", c.url())).await.unwrap();
    assert_eq!(h.status(), 200);
    // Set by the sweep loop (every 100 ms here): polled, not read once.
    wait_until("central_registry_up 0", Duration::from_secs(10), || async {
        c.metrics().await.contains("central_registry_up 0")
    })
    .await;

    // Redis comes back empty; the node re-registers at its next heartbeat and logins work.
    redis.restart().await;
    wait_until("login to work again", Duration::from_secs(15), || async {
        c.login("alice").await.0 == 200
    })
    .await;
    assert_eq!(c.node_ids().await, vec!["o1"]);
    let r: serde_json::Value = reqwest::get(format!("{}/readyz", c.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["registry"]["ok"], true, "{r}");
}

#[tokio::test]
async fn central_starts_while_redis_is_down() {
    let mut redis = Redis::start().await;
    let url = redis.url();
    // (testkit keeps the port while Redis is down: see `Redis::kill`.)
    redis.kill();
    let c = Central::start(Timing::FAST, &["--redis-url", &url]).await;
    let (s, body) = c.login("alice").await;
    assert_eq!(s, 503, "{body}");
    let _n = Node::start("late", &c.grpc_url(), 1, &[]);
    redis.restart().await;
    wait_until("login to work", Duration::from_secs(15), || async {
        c.login("alice").await.0 == 200
    })
    .await;
}
