//! The Redis backend of the registry against a real redis-server: same rules as the memory
//! backend, shared between handles (replicas), and it survives a Redis outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use central::registry::{Beat, NodeInfo, Registered, Registry, RegistryError, StoreHealth};
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

/// The ticket lifetime the registries count pending assignments for.
const TTL: Duration = Duration::from_secs(60);

fn nid(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

#[tokio::test]
async fn lifecycle_and_instances() {
    let redis = Redis::start().await;
    let r = Registry::redis(redis.url(), TTL).unwrap();
    assert_eq!(r.register(info("n1", "a", 1), 0).await, Ok(Registered::New));
    assert_eq!(r.health(), StoreHealth::RedisUp);
    assert_eq!(
        r.register(info("n1", "a", 1), 0).await,
        Ok(Registered::Again)
    );
    assert_eq!(
        r.heartbeat(&nid("n1"), "a", Beat::load(7, false)).await,
        Ok(true)
    );
    assert_eq!(
        r.heartbeat(&nid("n1"), "b", Beat::load(7, false)).await,
        Ok(false)
    );
    assert_eq!(
        r.heartbeat(&nid("nx"), "a", Beat::load(7, false)).await,
        Ok(false)
    );
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
    assert_eq!(
        r.heartbeat(&nid("n1"), "a", Beat::load(7, false)).await,
        Ok(false)
    );
    assert_eq!(r.deregister(&nid("n1"), "a").await, Ok(false));
    assert_eq!(r.list().await.unwrap()[0].info.weight, 2);
    assert_eq!(r.deregister(&nid("n1"), "b").await, Ok(true));
    assert!(r.list().await.unwrap().is_empty());
    assert_eq!(r.pick().await, Ok(None));
}

#[tokio::test]
async fn picks_by_weight_across_two_replicas() {
    let redis = Redis::start().await;
    let a = Registry::redis(redis.url(), TTL).unwrap();
    let b = Registry::redis(redis.url(), TTL).unwrap();
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
        la.iter().map(|n| n.pending).collect::<Vec<_>>(),
        vec![100, 100, 200]
    );
    assert_eq!(
        lb.iter()
            .map(|n| (n.info.id.clone(), n.pending))
            .collect::<Vec<_>>(),
        la.iter()
            .map(|n| (n.info.id.clone(), n.pending))
            .collect::<Vec<_>>()
    );
    // A heartbeat reporting the assignments as accepted connections retires them; more
    // connections than that make the node busy.
    let beat = Beat {
        connections: 1000,
        accepted: 200,
        draining: false,
    };
    a.heartbeat(&nid("w2"), "i", beat).await.unwrap();
    let l = b.list().await.unwrap();
    assert_eq!((l[2].connections, l[2].pending), (1000, 0));
    for _ in 0..50 {
        assert_ne!(a.pick().await.unwrap().unwrap().node.as_str(), "w2");
    }
}

#[tokio::test]
async fn ties_are_random_and_busy_nodes_wait() {
    let redis = Redis::start().await;
    let r = Registry::redis(redis.url(), TTL).unwrap();
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
    let r = Registry::redis(redis.url(), TTL).unwrap();
    r.register(info("d1", "i", 10), 0).await.unwrap();
    r.register(info("d2", "i", 1), 500).await.unwrap();
    r.heartbeat(&nid("d1"), "i", Beat::load(0, true))
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(r.pick().await.unwrap().unwrap().node.as_str(), "d2");
    }
    assert_eq!(r.set_down(&nid("d2"), "i", true).await, Ok(true));
    assert_eq!(r.set_down(&nid("d2"), "i", true).await, Ok(false));
    assert_eq!(r.set_down(&nid("d2"), "other", false).await, Ok(false));
    assert_eq!(r.pick().await, Ok(None));
    // A heartbeat does not bring a down node back; answering probes does.
    r.heartbeat(&nid("d2"), "i", Beat::load(500, false))
        .await
        .unwrap();
    assert_eq!(r.pick().await, Ok(None));
    assert_eq!(r.set_down(&nid("d2"), "i", false).await, Ok(true));
    assert_eq!(r.pick().await.unwrap().unwrap().node.as_str(), "d2");
    // Draining ends with a heartbeat that says so.
    r.heartbeat(&nid("d1"), "i", Beat::load(0, false))
        .await
        .unwrap();
    assert_eq!(r.pick().await.unwrap().unwrap().node.as_str(), "d1");
    let l = r.list().await.unwrap();
    assert!(!l[0].draining && !l[1].down);
}

#[tokio::test]
async fn eviction_is_counted_by_exactly_one_replica() {
    let redis = Redis::start().await;
    let a = Registry::redis(redis.url(), TTL).unwrap();
    let b = Registry::redis(redis.url(), TTL).unwrap();
    a.register(info("e1", "i", 1), 0).await.unwrap();
    a.register(info("e2", "i", 1), 0).await.unwrap();
    let timeout = Duration::from_millis(300);
    // e1 keeps heartbeating, e2 goes silent.
    let mut evicted = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) && evicted.is_empty() {
        a.heartbeat(&nid("e1"), "i", Beat::load(0, false))
            .await
            .unwrap();
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
    let r = Registry::redis(redis.url(), TTL).unwrap();
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
    assert_eq!(
        r.heartbeat(&nid("o1"), "i", Beat::load(0, false)).await,
        Ok(false)
    );
    r.register(info("o1", "i", 1), 0).await.unwrap();
    assert_eq!(r.pick().await.unwrap().unwrap().node, nid("o1"));
}

#[tokio::test]
async fn redis_down_at_start_is_not_fatal() {
    let port = testkit::free_port();
    let r = Registry::redis(format!("redis://127.0.0.1:{port}/"), TTL).unwrap();
    assert!(matches!(r.health(), StoreHealth::RedisDown(_)));
    assert!(r.pick().await.is_err());
}

async fn pending_of(r: &Registry, id: &str) -> u64 {
    r.list()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.info.id.as_str() == id)
        .map(|n| n.pending)
        .unwrap()
}

#[tokio::test]
async fn pending_assignments_survive_heartbeats_until_accepted() {
    let redis = Redis::start().await;
    let a = Registry::redis(redis.url(), TTL).unwrap();
    let b = Registry::redis(redis.url(), TTL).unwrap();
    for round in 0..10 {
        let instance = format!("r{round}");
        a.register(info("p1", &instance, 1), 0).await.unwrap();
        a.register(info("p2", &instance, 1), 0).await.unwrap();
        let first = a.pick().await.unwrap().unwrap().node;
        // Its node heartbeats (through the other replica) before the client connected.
        assert_eq!(
            b.heartbeat(&first, &instance, Beat::load(0, false)).await,
            Ok(true)
        );
        assert_eq!(pending_of(&a, first.as_str()).await, 1);
        let second = b.pick().await.unwrap().unwrap().node;
        assert_ne!(first, second, "round {round}: the second login herded");
    }

    // Three logins on one node, two of them connect: the heartbeat retires two.
    a.register(info("q", "i", 1), 0).await.unwrap();
    a.deregister(&nid("p1"), "r9").await.unwrap();
    a.deregister(&nid("p2"), "r9").await.unwrap();
    for _ in 0..3 {
        assert_eq!(a.pick().await.unwrap().unwrap().node, nid("q"));
    }
    assert_eq!(pending_of(&b, "q").await, 3);
    let beat = Beat {
        connections: 2,
        accepted: 2,
        draining: false,
    };
    // A heartbeat from another instance retires nothing.
    assert_eq!(b.heartbeat(&nid("q"), "other", beat).await, Ok(false));
    assert_eq!(pending_of(&b, "q").await, 3);
    assert_eq!(b.heartbeat(&nid("q"), "i", beat).await, Ok(true));
    let l = a.list().await.unwrap();
    assert_eq!((l[0].connections, l[0].pending), (2, 1));
    // Down and up again keeps the pending one in the score: (2 + 1) / 1.
    a.register(info("q2", "i", 1), 2).await.unwrap();
    assert_eq!(a.set_down(&nid("q"), "i", true).await, Ok(true));
    assert_eq!(a.set_down(&nid("q"), "i", false).await, Ok(true));
    assert_eq!(pending_of(&a, "q").await, 1);
    // q2 scores 2, q scores 3: the next login goes to q2.
    assert_eq!(a.pick().await.unwrap().unwrap().node, nid("q2"));
    // A node reporting more accepted than pending (reconnects) just empties it.
    let all = Beat {
        connections: 3,
        accepted: u64::MAX,
        draining: false,
    };
    assert_eq!(a.heartbeat(&nid("q"), "i", all).await, Ok(true));
    assert_eq!(pending_of(&a, "q").await, 0);
    // Registering again starts from nothing pending.
    assert_eq!(pending_of(&a, "q2").await, 1);
    a.register(info("q2", "i", 1), 3).await.unwrap();
    assert_eq!(pending_of(&a, "q2").await, 0);
}

#[tokio::test]
async fn pending_assignments_expire_after_the_ticket_ttl() {
    let redis = Redis::start().await;
    // A short ticket lifetime; times are Redis' own clock, so this test waits for it.
    let r = Registry::redis(redis.url(), Duration::from_millis(300)).unwrap();
    let long = Registry::redis(redis.url(), TTL).unwrap();
    r.register(info("x1", "i", 1), 0).await.unwrap();
    r.register(info("x2", "i", 1), 0).await.unwrap();
    let first = r.pick().await.unwrap().unwrap().node;
    let other = if first.as_str() == "x1" { "x2" } else { "x1" };
    // The second login goes to the other node, through a replica with the long lifetime.
    assert_eq!(long.pick().await.unwrap().unwrap().node.as_str(), other);
    // The first expires at a heartbeat once the lifetime has passed.
    wait_until(
        "the pending assignment to expire at a heartbeat",
        Duration::from_secs(5),
        || async {
            r.heartbeat(&first, "i", Beat::load(0, false))
                .await
                .unwrap();
            pending_of(&r, first.as_str()).await == 0
        },
    )
    .await;
    // The other node's heartbeat with the long lifetime keeps its assignment.
    long.heartbeat(&nid(other), "i", Beat::load(0, false))
        .await
        .unwrap();
    assert_eq!(pending_of(&r, other).await, 1);
    // So the first node, back to score 0, gets the next login.
    assert_eq!(r.pick().await.unwrap().unwrap().node, first);
}

/// What the Register RPC does: a node is not pickable until a probe marks it up, in both
/// backends alike.
#[tokio::test]
async fn unprobed_registrations_wait_for_a_probe_in_both_backends() {
    let redis = Redis::start().await;
    for r in [
        Registry::memory(TTL),
        Registry::redis(redis.url(), TTL).unwrap(),
    ] {
        let down = |r: Registry| async move {
            r.list()
                .await
                .unwrap()
                .iter()
                .map(|n| n.down)
                .collect::<Vec<_>>()
        };
        r.register_unprobed(info("u1", "a", 1), 0).await.unwrap();
        assert_eq!(down(r.clone()).await, vec![true], "{r:?}");
        assert_eq!(r.pick().await.unwrap(), None, "{r:?}");
        assert_eq!(r.set_down(&nid("u1"), "a", false).await, Ok(true));
        assert_eq!(r.pick().await.unwrap().unwrap().node, nid("u1"));
        // The same instance again (e.g. after a central restart): stays up.
        r.register_unprobed(info("u1", "a", 1), 0).await.unwrap();
        assert_eq!(down(r.clone()).await, vec![false], "{r:?}");
        // A new instance: waits for its own probe.
        r.register_unprobed(info("u1", "b", 1), 0).await.unwrap();
        assert_eq!(down(r.clone()).await, vec![true], "{r:?}");
        assert_eq!(r.pick().await.unwrap(), None, "{r:?}");
        r.deregister(&nid("u1"), "b").await.unwrap();
    }
}
