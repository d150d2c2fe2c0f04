//! The node registry with real processes: nodes register and show in `/v1/nodes`, a node
//! killed with SIGKILL is evicted and never handed out again, nodes re-register after central
//! restarts, and the Registry gRPC API itself (unknown nodes, new instances, probes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Central, Node, Timing};
use signal_proto::grpc_auth::AuthChannel;
use signal_proto::registry::registry_client::RegistryClient;
use signal_proto::registry::{DeregisterRequest, HeartbeatRequest, NodeInfo, RegisterRequest};
use testkit::{free_port, wait_until};
use tonic::transport::Channel;

async fn client(c: &Central) -> RegistryClient<AuthChannel<Channel>> {
    common::registry_client(&c.grpc_url()).await
}

fn info(id: &str, instance: &str, grpc_port: u16) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        instance: instance.into(),
        ws_url: format!("ws://127.0.0.1:1/{id}"),
        grpc_url: format!("http://127.0.0.1:{grpc_port}"),
        weight: 1,
    }
}

#[tokio::test]
async fn nodes_register_and_show_in_v1_nodes() {
    let c = Central::start(Timing::FAST, &[]).await;
    let n1 = Node::start("n1", &c.grpc_url(), 1, &[]);
    let n2 = Node::start("n2", &c.grpc_url(), 3, &[]);
    c.wait_nodes(&["n1", "n2"], Duration::from_secs(10)).await;
    let nodes = c.nodes().await;
    assert_eq!(nodes[0]["url"], n1.ws_url());
    assert_eq!(nodes[1]["url"], n2.ws_url());
    assert_eq!(nodes[0]["weight"], 1);
    assert_eq!(nodes[1]["weight"], 3);
    for n in &nodes {
        assert_eq!(n["state"], "active");
        assert_eq!(n["connections"], 0);
        assert!(n["secondsSinceHeartbeat"].as_f64().unwrap() < 5.0, "{n}");
    }
    // Probes answer: both stay reachable over several probe intervals.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in c.nodes().await {
        assert_eq!(n["reachable"], true, "{n}");
    }
    let m = c.metrics().await;
    assert!(m.contains("central_nodes{state=\"active\"} 2"), "{m}");
}

#[tokio::test]
async fn a_killed_node_is_evicted_and_never_handed_out() {
    let c = Central::start(Timing::FAST, &[]).await;
    let mut dead = Node::start("dead", &c.grpc_url(), 1, &[]);
    let _alive = Node::start("alive", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["alive", "dead"], Duration::from_secs(10))
        .await;
    dead.proc.signal(9);
    dead.proc.wait_exit(Duration::from_secs(5)).await;
    let killed = std::time::Instant::now();
    c.wait_nodes(&["alive"], Duration::from_secs(10)).await;
    // Evicted within the node timeout (plus slack for a sweep and a loaded machine).
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(Timing::FAST.node_timeout_ms + 2000),
        "eviction took {took:?}"
    );
    for i in 0..50 {
        let (status, body) = c.login(&format!("user{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node"], "alive");
    }
    let m = c.metrics().await;
    assert!(m.contains("central_evictions_total 1"), "{m}");
}

#[tokio::test]
async fn nodes_re_register_within_two_heartbeats_after_central_restarts() {
    let timing = Timing {
        heartbeat_ms: 500,
        node_timeout_ms: 2000,
        probe_ms: 200,
    };
    let (http, grpc) = (free_port(), free_port());
    let mut c = Central::start_on(http, grpc, timing, &[]).await;
    let _n1 = Node::start("r1", &c.grpc_url(), 1, &[]);
    let _n2 = Node::start("r2", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["r1", "r2"], Duration::from_secs(10)).await;
    c.proc.signal(9);
    c.proc.wait_exit(Duration::from_secs(5)).await;
    drop(c);
    let c = Central::start_on(http, grpc, timing, &[]).await;
    // The new central knows nothing; the nodes' next heartbeat is refused (known=false) and
    // they register again.
    c.wait_nodes(
        &["r1", "r2"],
        Duration::from_millis(2 * timing.heartbeat_ms + 1000),
    )
    .await;
    let (status, _) = c.login("alice").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn registry_rpc_semantics() {
    let c = Central::start(Timing::FAST, &[]).await;
    let mut rpc = client(&c).await;
    // Unknown node: told to register.
    let hb = rpc
        .heartbeat(HeartbeatRequest {
            node_id: "ghost".into(),
            instance: "i1".into(),
            connections: 0,
            draining: false,
            accepted: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!hb.known);
    assert_eq!(hb.heartbeat_interval_ms, Timing::FAST.heartbeat_ms);
    // Bad registrations are refused with InvalidArgument.
    for bad in [
        NodeInfo {
            node_id: "a b".into(),
            ..info("x", "i", 1)
        },
        NodeInfo {
            ws_url: "not a url".into(),
            ..info("x", "i", 1)
        },
        NodeInfo {
            weight: 0,
            ..info("x", "i", 1)
        },
    ] {
        let e = rpc
            .register(RegisterRequest {
                node: Some(bad),
                connections: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    let r = rpc
        .register(RegisterRequest {
            node: Some(info("g", "i1", free_port())),
            connections: 4,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.heartbeat_interval_ms, Timing::FAST.heartbeat_ms);
    assert_eq!(r.node_timeout_ms, Timing::FAST.node_timeout_ms);
    // Nothing answers g's probes: it is registered but not a peer (nor handed out).
    assert!(r.peers.is_empty(), "{:?}", r.peers);
    assert_eq!(c.node_ids().await, vec!["g"]);
    assert_eq!(c.login("alice").await.0, 503);
    let hb = |instance: &str, draining: bool| HeartbeatRequest {
        node_id: "g".into(),
        instance: instance.into(),
        connections: 4,
        draining,
        accepted: 0,
    };
    assert!(
        rpc.heartbeat(hb("i1", false))
            .await
            .unwrap()
            .into_inner()
            .known
    );
    // A restart of the node (new instance) replaces the old one.
    rpc.register(RegisterRequest {
        node: Some(info("g", "i2", free_port())),
        connections: 0,
    })
    .await
    .unwrap();
    assert!(
        !rpc.heartbeat(hb("i1", false))
            .await
            .unwrap()
            .into_inner()
            .known
    );
    assert!(
        rpc.heartbeat(hb("i2", true))
            .await
            .unwrap()
            .into_inner()
            .known
    );
    let nodes = c.nodes().await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["instance"], "i2");
    assert_eq!(nodes[0]["state"], "draining");
    // A draining node is not handed out.
    let (status, body) = c.login("alice").await;
    assert_eq!(status, 503, "{body}");
    // The old instance's deregistration does not remove the new one.
    rpc.deregister(DeregisterRequest {
        node_id: "g".into(),
        instance: "i1".into(),
    })
    .await
    .unwrap();
    assert_eq!(c.nodes().await.len(), 1);
    rpc.deregister(DeregisterRequest {
        node_id: "g".into(),
        instance: "i2".into(),
    })
    .await
    .unwrap();
    assert!(c.nodes().await.is_empty());
}

#[tokio::test]
async fn a_node_that_heartbeats_but_does_not_answer_probes_is_not_handed_out() {
    let c = Central::start(Timing::FAST, &[]).await;
    let real = Node::start("real", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["real"], Duration::from_secs(10)).await;
    // "mute" registers and heartbeats, but nothing answers on its gRPC URL.
    let mut rpc = client(&c).await;
    rpc.register(RegisterRequest {
        node: Some(info("mute", "m1", free_port())),
        connections: 0,
    })
    .await
    .unwrap();
    let beat = {
        let mut rpc = rpc.clone();
        tokio::spawn(async move {
            loop {
                let _ = rpc
                    .heartbeat(HeartbeatRequest {
                        node_id: "mute".into(),
                        instance: "m1".into(),
                        connections: 0,
                        draining: false,
                        accepted: 0,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(Timing::FAST.heartbeat_ms)).await;
            }
        })
    };
    wait_until(
        "mute to be marked unreachable",
        Duration::from_secs(10),
        || async {
            c.nodes()
                .await
                .iter()
                .any(|n| n["id"] == "mute" && n["reachable"] == false)
        },
    )
    .await;
    // Still registered (it heartbeats), but every login goes to the real node.
    assert_eq!(c.node_ids().await, vec!["mute", "real"]);
    let mut seen = HashSet::new();
    for i in 0..30 {
        let (status, body) = c.login(&format!("u{i}")).await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body["node"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, HashSet::from(["real".to_owned()]));
    // The real node's peer list from central does not include the mute one.
    let hb = rpc
        .heartbeat(HeartbeatRequest {
            node_id: "mute".into(),
            instance: "m1".into(),
            connections: 0,
            draining: false,
            accepted: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let peers: Vec<String> = hb.peers.into_iter().map(|p| p.node_id).collect();
    assert_eq!(peers, vec!["real"]);
    beat.abort();
    drop(real);
}
