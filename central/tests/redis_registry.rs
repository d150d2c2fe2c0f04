//! The Redis backend of the registry against a real redis-server: same rules as the memory
//! backend, shared between handles (replicas), and it survives a Redis outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use central::registry::{NodeInfo, Registered, Registry, RegistryError, StoreHealth};
use signal_proto::NodeId;
use testkit::{wait_until, Redis};

fn info(id: &str, instance: &str, weight: u32) -> NodeInfo {
    NodeInfo {
        id: NodeId::new(id).unwrap(),
        instance: instance.into(),
        ws_url: format!("ws://{id}.test/ws"),
        grpc_url: format!("http://{id}.test:9091"),
        weight,
    }
}

fn nid(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

#[tokio::test]
async fn lifecycle_and_instances() {
    let redis = Redis::start().await;
    let r = Registry::redis(&redis.url()).unwrap();
    assert_eq!(r.register(info("n1", "a", 1), 0).await, Ok(Registered::New));
    assert_eq!(r.health(), StoreHealth::RedisUp);
    assert_eq!(
        r.register(info("n1", "a", 1), 0).await,
        Ok(Registered::Again)
    );
    assert_eq!(r.heartbeat(&nid("n1"), "a", 7, false).await, Ok(true));
    assert_eq!(r.heartbeat(&nid("n1"), "b", 7, false).await, Ok(false));
    assert_eq!(r.heartbeat(&nid("nx"), "a", 7, false).await, Ok(false));
    let l = r.list().await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].connections, 7);
    assert_eq!(l[0].info, info("n1", "a", 1));
    assert!(l[0].since_heartbeat < Duration::from_secs(5));
    assert_eq!(
        r.register(info("n1", "b", 2), 0).await,
        Ok(Registered::Replaced {
            old_instance: "a".into()
        })
    );
    assert_eq!(r.heartbeat(&nid("n1"), "a", 7, false).await, Ok(false));
    assert_eq!(r.deregister(&nid("n1"), "a").await, Ok(false));
    assert_eq!(r.list().await.unwrap()[0].info.weight, 2);
    assert_eq!(r.deregister(&nid("n1"), "b").await, Ok(true));
    assert!(r.list().await.unwrap().is_empty());
    assert_eq!(r.pick().await, Ok(None));
}

#[tokio::test]
async fn picks_by_weight_across_two_replicas() {
    let redis = Redis::start().await;
    let a = Registry::redis(&redis.url()).unwrap();
    let b = Registry::redis(&redis.url()).unwrap();
    a.register(info("w1a", "i", 1), 0).await.unwrap();
    a.register(info("w1b", "i", 1), 0).await.unwrap();
    b.register(info("w2", "i", 2), 0).await.unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..400 {
        let r = if i % 2 == 0 { &a } else { &b };
        let p = r.pick().await.unwrap().unwrap();
        assert_eq!(p.ws_url, format!("ws://{}.test/ws", p.node));
        *counts.entry(p.node.into_string()).or_default() += 1;
    }
    // Both replicas share one score index: exact 1:1:2 split.
    assert_eq!(counts["w1a"], 100, "{counts:?}");
    assert_eq!(counts["w1b"], 100, "{counts:?}");
    assert_eq!(counts["w2"], 200, "{counts:?}");
    // Both see the assignments.
    let la = a.list().await.unwrap();
    let lb = b.list().await.unwrap();
    assert_eq!(
        la.iter().map(|n| n.assigned).collect::<Vec<_>>(),
        vec![100, 100, 200]
    );
    assert_eq!(
        lb.iter()
            .map(|n| (n.info.id.clone(), n.assigned))
            .collect::<Vec<_>>(),
        la.iter()
            .map(|n| (n.info.id.clone(), n.assigned))
            .collect::<Vec<_>>()
    );
    // A heartbeat resets the assignments to the reported connections.
    a.heartbeat(&nid("w2"), "i", 1000, false).await.unwrap();
    for _ in 0..50 {
        assert_ne!(a.pick().await.unwrap().unwrap().node.as_str(), "w2");
    }
}

#[tokio::test]
async fn ties_are_random_and_busy_nodes_wait() {
    let redis = Redis::start().await;
    let r = Registry::redis(&redis.url()).unwrap();
    let mut firsts: HashMap<String, usize> = HashMap::new();
    for round in 0..60 {
        for id in ["t1", "t2", "t3"] {
            r.register(info(id, &format!("r{round}"), 1), 5)
                .await
                .unwrap();
        }
        let p = r.pick().await.unwrap().unwrap();
        *firsts.entry(p.node.into_string()).or_default() += 1;
    }
    assert_eq!(firsts.len(), 3, "ties always went the same way: {firsts:?}");

    r.register(info("t1", "x", 1), 100).await.unwrap();
    r.register(info("t2", "x", 1), 0).await.unwrap();
    r.register(info("t3", "x", 1), 50).await.unwrap();
    let mut c: HashMap<String, usize> = HashMap::new();
    for _ in 0..150 {
        *c.entry(r.pick().await.unwrap().unwrap().node.into_string())
            .or_default() += 1;
    }
    assert_eq!(c.get("t1"), None, "{c:?}");
    assert_eq!(c["t2"], 100);
    assert_eq!(c["t3"], 50);
}

#[tokio::test]
async fn draining_and_down_nodes_are_not_picked() {
    let redis = Redis::start().await;
    let r = Registry::redis(&redis.url()).unwrap();
    r.register(info("d1", "i", 10), 0).await.unwrap();
    r.register(info("d2", "i", 1), 500).await.unwrap();
    r.heartbeat(&nid("d1"), "i", 0, true).await.unwrap();
    for _ in 0..20 {
        assert_eq!(r.pick().await.unwrap().unwrap().node.as_str(), "d2");
    }
    assert_eq!(r.set_down(&nid("d2"), "i", true).await, Ok(true));
    assert_eq!(r.set_down(&nid("d2"), "i", true).await, Ok(false));
    assert_eq!(r.set_down(&nid("d2"), "other", false).await, Ok(false));
    assert_eq!(r.pick().await, Ok(None));
    // A heartbeat does not bring a down node back; answering probes does.
    r.heartbeat(&nid("d2"), "i", 500, false).await.unwrap();
    assert_eq!(r.pick().await, Ok(None));
    assert_eq!(r.set_down(&nid("d2"), "i", false).await, Ok(true));
    assert_eq!(r.pick().await.unwrap().unwrap().node.as_str(), "d2");
    // Draining ends with a heartbeat that says so.
    r.heartbeat(&nid("d1"), "i", 0, false).await.unwrap();
    assert_eq!(r.pick().await.unwrap().unwrap().node.as_str(), "d1");
    let l = r.list().await.unwrap();
    assert!(!l[0].draining && !l[1].down);
}

#[tokio::test]
async fn eviction_is_counted_by_exactly_one_replica() {
    let redis = Redis::start().await;
    let a = Registry::redis(&redis.url()).unwrap();
    let b = Registry::redis(&redis.url()).unwrap();
    a.register(info("e1", "i", 1), 0).await.unwrap();
    a.register(info("e2", "i", 1), 0).await.unwrap();
    let timeout = Duration::from_millis(300);
    // e1 keeps heartbeating, e2 goes silent.
    let mut evicted = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) && evicted.is_empty() {
        a.heartbeat(&nid("e1"), "i", 0, false).await.unwrap();
        let (x, y) = tokio::join!(a.evict(timeout), b.evict(timeout));
        evicted.extend(x.unwrap());
        evicted.extend(y.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(evicted, vec![nid("e2")]);
    assert!(a.evict(timeout).await.unwrap().is_empty());
    let l = b.list().await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].info.id, nid("e1"));
    for _ in 0..10 {
        assert_eq!(b.pick().await.unwrap().unwrap().node, nid("e1"));
    }
}

#[tokio::test]
async fn redis_outage_is_an_error_not_a_crash_and_heals() {
    let mut redis = Redis::start().await;
    let r = Registry::redis(&redis.url()).unwrap();
    r.register(info("o1", "i", 1), 0).await.unwrap();
    redis.kill();
    let e = r.pick().await.unwrap_err();
    assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
    assert!(matches!(r.health(), StoreHealth::RedisDown(_)));
    assert!(r.list().await.is_err());
    redis.restart().await;
    // The store came back empty (no persistence): the node must register again.
    wait_until("redis reachable again", Duration::from_secs(10), || async {
        r.list().await.is_ok()
    })
    .await;
    assert_eq!(r.health(), StoreHealth::RedisUp);
    assert_eq!(r.heartbeat(&nid("o1"), "i", 0, false).await, Ok(false));
    r.register(info("o1", "i", 1), 0).await.unwrap();
    assert_eq!(r.pick().await.unwrap().unwrap().node, nid("o1"));
}

#[tokio::test]
async fn redis_down_at_start_is_not_fatal() {
    let port = testkit::free_port();
    let r = Registry::redis(&format!("redis://127.0.0.1:{port}/")).unwrap();
    assert!(matches!(r.health(), StoreHealth::RedisDown(_)));
    assert!(r.pick().await.is_err());
}
