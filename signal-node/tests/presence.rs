//! Presence (contract section 7) on real nodes sharing a real redis-server: in-process nodes
//! (real gRPC on loopback) for the protocol, real `signal-node` processes with a real central
//! for SIGKILL. Snapshot on subscribe, change across nodes, invisible, clean close -> offline,
//! blip + resume -> nothing, TOOMANY and bad input, Redis restart, SIGKILL of the presentity's
//! node and of a watcher's node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use signal_node::DirectoryConfig;
use testkit::{free_port, wait_for_port, wait_until, Proc, Received, Redis, WsClient};

async fn pair(redis: &Redis, max_subs: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut cfg = dev(id);
        cfg.directory = DirectoryConfig::Redis(redis.url().into());
        cfg.rate_limit = 0;
        cfg.resume_window = Duration::from_secs(5);
        cfg.presence.max_subscriptions = max_subs;
        nodes.push(TestNode::start(cfg).await);
    }
    nodes
}

async fn stop(nodes: Vec<TestNode>) {
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

fn subscribe(users: &[&str]) -> Value {
    json!({"type":"Subscribe","users":users})
}

fn set(state: &str, note: Option<&str>) -> Value {
    match note {
        Some(n) => json!({"type":"SetPresence","state":state,"note":n}),
        None => json!({"type":"SetPresence","state":state}),
    }
}

/// The next Presence frame within `within` (other frames are skipped); panics if none.
async fn presence_within(c: &mut WsClient, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Some(Received::Json(v)) if v["type"] == "Presence" => return v,
            Some(Received::Json(_)) => continue,
            other => panic!("expected a Presence frame within {within:?}, got {other:?}"),
        }
    }
}

/// Asserts the next Presence frame is `user` in `state` within 1 s; returns it.
async fn expect_presence(c: &mut WsClient, user: &str, state: &str) -> Value {
    let v = presence_within(c, Duration::from_secs(1)).await;
    assert_eq!(
        (v["user"].as_str(), v["state"].as_str()),
        (Some(user), Some(state)),
        "{v}"
    );
    assert!(v["since"].as_u64().is_some(), "{v}");
    assert!(v["n"].as_u64().is_some(), "numbered like every frame: {v}");
    v
}

/// Asserts no Presence frame arrives within `within`.
async fn no_presence(c: &mut WsClient, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            None => return,
            Some(Received::Json(v)) if v["type"] == "Presence" => panic!("{what}: got {v}"),
            Some(Received::Json(_)) => continue,
            Some(other) => panic!("{what}: connection ended {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_change_across_nodes_invisible_and_clean_close() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, 1000).await;
    let mut bob = nodes[1].connect("bob").await;
    let mut alice = nodes[0].connect("alice").await;
    bob.send_json(&set("away", Some("lunch"))).await;
    roundtrip(&mut bob).await;
    alice.send_json(&subscribe(&["bob", "nobody"])).await;
    let mut got = [
        presence_within(&mut alice, Duration::from_secs(1)).await,
        presence_within(&mut alice, Duration::from_secs(1)).await,
    ];
    got.sort_by_key(|v| v["user"].as_str().unwrap_or_default().to_owned());
    assert_eq!(strip_n(got[0].clone())["state"], "away", "{}", got[0]);
    assert_eq!(got[0]["note"], "lunch");
    assert_eq!(got[1]["user"], "nobody");
    assert_eq!(got[1]["state"], "offline");
    assert!(got[1].get("note").is_none());

    // A change on node b reaches the watcher on node a within 1 s, in order.
    let t = Instant::now();
    bob.send_json(&set("busy", None)).await;
    let v = expect_presence(&mut alice, "bob", "busy").await;
    assert!(v.get("note").is_none(), "{v}");
    assert!(t.elapsed() < Duration::from_secs(1));
    // Invisible is shown as offline (no note).
    bob.send_json(&set("invisible", Some("secret"))).await;
    let v = expect_presence(&mut alice, "bob", "offline").await;
    assert!(v.get("note").is_none(), "{v}");
    bob.send_json(&set("online", None)).await;
    expect_presence(&mut alice, "bob", "online").await;
    // Setting the same state again announces nothing.
    bob.send_json(&set("online", None)).await;
    no_presence(&mut alice, Duration::from_millis(400), "same state twice").await;

    // A watcher on the same node as the presentity.
    let mut carol = nodes[1].connect("carol").await;
    carol.send_json(&subscribe(&["bob"])).await;
    expect_presence(&mut carol, "bob", "online").await;

    // Clean close (1000): offline within 1 s for every watcher.
    let t = Instant::now();
    bob.close().await;
    expect_presence(&mut alice, "bob", "offline").await;
    expect_presence(&mut carol, "bob", "offline").await;
    assert!(t.elapsed() < Duration::from_secs(1));
    // Back online: a fresh session starts online.
    let _bob = nodes[0].connect("bob").await;
    expect_presence(&mut alice, "bob", "online").await;
    expect_presence(&mut carol, "bob", "online").await;

    // Unsubscribe stops the notifications.
    alice
        .send_json(&json!({"type":"Unsubscribe","users":["bob"]}))
        .await;
    roundtrip(&mut alice).await;
    let mut bob = _bob;
    bob.send_json(&set("away", None)).await;
    expect_presence(&mut carol, "bob", "away").await;
    no_presence(&mut alice, Duration::from_millis(300), "unsubscribed").await;
    stop(nodes).await;
}

/// A network blip and a resume on the other node: watchers see nothing, and the session's
/// own subscriptions keep working from the new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blip_and_resume_elsewhere_announce_nothing_and_keep_subscriptions() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, 1000).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut dave = nodes[0].connect("dave").await;
    let (mut carol, w) = WsClient::connect_welcomed(&nodes[1].ws("carol")).await;
    let tok = w["session"].as_str().unwrap().to_owned();
    carol.send_json(&set("busy", Some("call"))).await;
    carol.send_json(&subscribe(&["dave"])).await;
    let last = expect_presence(&mut carol, "dave", "online").await["n"]
        .as_u64()
        .unwrap();
    alice.send_json(&subscribe(&["carol"])).await;
    expect_presence(&mut alice, "carol", "busy").await;

    // Same-node blip, then a resume on the other node.
    drop(carol);
    no_presence(&mut alice, Duration::from_millis(500), "blip").await;
    let url = format!(
        "ws://{}/ws?user=carol&resume={tok}&last={last}",
        nodes[0].http
    );
    let (mut carol, w) = WsClient::connect_welcomed(&url).await;
    assert_eq!(w["resumed"], true, "{w}");
    no_presence(&mut alice, Duration::from_millis(700), "resume elsewhere").await;
    no_presence(
        &mut carol,
        Duration::from_millis(100),
        "nothing new for carol",
    )
    .await;

    // Carol's state came along (a change from the new node is announced)...
    carol.send_json(&set("away", None)).await;
    expect_presence(&mut alice, "carol", "away").await;
    // ...and her subscription too.
    dave.send_json(&set("busy", None)).await;
    expect_presence(&mut carol, "dave", "busy").await;
    // The old node forgot her: a close now is one offline, not two.
    carol.close().await;
    expect_presence(&mut alice, "carol", "offline").await;
    no_presence(&mut alice, Duration::from_millis(400), "one offline").await;
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_and_bad_input_keep_the_connection() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, 3).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut u1 = nodes[1].connect("u1").await;
    alice.send_json(&subscribe(&["u1", "u2"])).await;
    presence_within(&mut alice, Duration::from_secs(1)).await;
    presence_within(&mut alice, Duration::from_secs(1)).await;
    // 2 + 2 new > 3: TOOMANY, none added (u3 changes are not seen).
    alice.send_json(&subscribe(&["u1", "u3", "u4"])).await;
    let e = expect_server_error(&mut alice, "TOOMANY", None, None).await;
    assert!(e["description"].as_str().unwrap().contains('3'), "{e}");
    let mut u3 = nodes[1].connect("u3").await;
    u3.send_json(&set("away", None)).await;
    roundtrip(&mut u3).await;
    no_presence(&mut alice, Duration::from_millis(400), "u3 was not added").await;
    // Already subscribed ones do not count twice.
    alice.send_json(&subscribe(&["u1", "u2", "u3"])).await;
    for _ in 0..3 {
        presence_within(&mut alice, Duration::from_secs(1)).await;
    }

    let many: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    for bad in [
        json!({"type":"Subscribe","users":many}),
        json!({"type":"Subscribe","users":[]}),
        json!({"type":"Subscribe","users":["ok","bad id"]}),
        json!({"type":"Unsubscribe","users":[5]}),
        json!({"type":"SetPresence","state":"sleeping"}),
        json!({"type":"SetPresence","state":"offline"}),
        json!({"type":"SetPresence","state":"away","note":"x".repeat(257)}),
    ] {
        alice.send_json(&bad).await;
        expect_server_error(&mut alice, "BADMESSAGE", None, None).await;
    }
    roundtrip(&mut alice).await;
    // Still subscribed, still served.
    u1.send_json(&set("busy", Some(&"é".repeat(128)))).await;
    let v = expect_presence(&mut alice, "u1", "busy").await;
    assert_eq!(v["note"].as_str().unwrap().len(), 256);
    stop(nodes).await;
}

/// Redis goes down: watchers of users on the same node keep being served, nobody is shown a
/// false offline; when Redis is back (empty), the state re-syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_local_presence_and_resyncs() {
    let mut redis = Redis::start().await;
    let nodes = pair(&redis, 1000).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut carol = nodes[0].connect("carol").await;
    let mut bob = nodes[1].connect("bob").await;
    alice.send_json(&subscribe(&["bob", "carol"])).await;
    presence_within(&mut alice, Duration::from_secs(1)).await;
    presence_within(&mut alice, Duration::from_secs(1)).await;

    redis.kill();
    carol.send_json(&set("away", None)).await;
    expect_presence(&mut alice, "carol", "away").await;
    bob.send_json(&set("busy", Some("meanwhile"))).await;
    roundtrip(&mut bob).await;
    no_presence(&mut alice, Duration::from_millis(800), "no false offline").await;

    redis.restart().await;
    // Bob's change made while Redis was down arrives once it is back.
    let v = presence_within(&mut alice, Duration::from_secs(6)).await;
    assert_eq!(
        (v["user"].as_str(), v["state"].as_str()),
        (Some("bob"), Some("busy")),
        "{v}"
    );
    assert_eq!(v["note"], "meanwhile");
    // And the cluster works as before: watcher sets were registered again.
    bob.send_json(&set("online", None)).await;
    expect_presence(&mut alice, "bob", "online").await;
    carol.close().await;
    expect_presence(&mut alice, "carol", "offline").await;
    stop(nodes).await;
}

// ---- real processes with a real central ----

const SECRET: &str = "presence-test-secret";
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);

struct NodeProc {
    proc: Proc,
    http: SocketAddr,
}

impl NodeProc {
    async fn start(id: &str, redis: &Redis, central: &TestCentral) -> NodeProc {
        Self::start_with(id, redis, central, &["--drain-ms", "100"]).await
    }

    async fn start_with(id: &str, redis: &Redis, central: &TestCentral, args: &[&str]) -> NodeProc {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proc = Proc::spawn(
            id,
            Command::new(env!("CARGO_BIN_EXE_signal-node"))
                .args(["--id", id, "--dev-auth", "--secret", SECRET])
                .args(["--listen", &http.to_string()])
                .args(["--grpc-listen", &grpc.to_string()])
                .args(["--redis-url", &redis.url()])
                .args(["--central", &central.grpc_url()])
                .args(["--resume-window-ms", "2000"])
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null()),
        );
        wait_for_port(http, Duration::from_secs(10)).await;
        NodeProc { proc, http }
    }

    async fn connect(&self, user: &str) -> WsClient {
        WsClient::connect_welcomed(&format!("ws://{}/ws?user={user}", self.http))
            .await
            .0
    }

    async fn live_peers(&self) -> usize {
        let (_, body) = get_json(&format!("http://{}/readyz", self.http)).await;
        body["central"]["livePeers"].as_array().map_or(0, Vec::len)
    }
}

async fn all_live(nodes: &[&NodeProc], n: usize) {
    for node in nodes {
        wait_until(
            "every node to see the live set",
            Duration::from_secs(10),
            || async { node.live_peers().await == n },
        )
        .await;
    }
}

/// SIGKILL of the presentities' node: its users are announced offline within the node
/// timeout + 5 s, except one who connected again elsewhere meanwhile (announced nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_presentity_node_announces_offline_within_the_bound() {
    let redis = Redis::start().await;
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(250),
        NODE_TIMEOUT,
    ))
    .await;
    let a = NodeProc::start("a", &redis, &central).await;
    let b = NodeProc::start("b", &redis, &central).await;
    all_live(&[&a, &b], 2).await;
    let mut alice = a.connect("alice").await;
    let _bob = b.connect("bob").await;
    let _dave = b.connect("dave").await;
    alice.send_json(&subscribe(&["bob", "dave"])).await;
    for _ in 0..2 {
        let v = presence_within(&mut alice, Duration::from_secs(1)).await;
        assert_eq!(v["state"], "online", "{v}");
    }
    let t = Instant::now();
    b.proc.signal(libc_sigkill());
    // Dave is back at once on node a (a fresh session: he was online, he still is).
    let _dave = loop {
        match WsClient::try_connect(&format!("ws://{}/ws?user=dave", a.http)).await {
            Ok(mut c) => {
                let w = c.next_json().await;
                assert_eq!(w["type"], "Welcome");
                break c;
            }
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(10), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let bound = NODE_TIMEOUT + Duration::from_secs(5);
    let v = presence_within(&mut alice, bound).await;
    assert_eq!(
        (v["user"].as_str(), v["state"].as_str()),
        (Some("bob"), Some("offline")),
        "{v}"
    );
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    no_presence(
        &mut alice,
        Duration::from_secs(1),
        "dave came back: nothing",
    )
    .await;
    drop(a);
}

/// SIGKILL of a watcher's node: the presentity and the other watchers are not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_watcher_node_breaks_nothing_for_others() {
    let redis = Redis::start().await;
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(250),
        NODE_TIMEOUT,
    ))
    .await;
    let a = NodeProc::start("a", &redis, &central).await;
    let b = NodeProc::start("b", &redis, &central).await;
    let c = NodeProc::start("c", &redis, &central).await;
    all_live(&[&a, &b, &c], 3).await;
    let mut bob = b.connect("bob").await;
    let mut alice = a.connect("alice").await;
    let mut carol = c.connect("carol").await;
    for w in [&mut alice, &mut carol] {
        w.send_json(&subscribe(&["bob"])).await;
        expect_presence(w, "bob", "online").await;
    }
    a.proc.signal(libc_sigkill());
    for state in ["away", "busy", "online"] {
        let t = Instant::now();
        bob.send_json(&set(state, None)).await;
        expect_presence(&mut carol, "bob", state).await;
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    // Relaying still works for bob.
    bob.send_json(&offer("carol", "s1")).await;
    let v = carol.next_json().await;
    assert_eq!(v["type"], "Offer", "{v}");
    roundtrip(&mut bob).await;
    drop((b, c));
}

fn libc_sigkill() -> i32 {
    9
}

/// A rolling restart step: the presentity's node drains (SIGTERM: it is marked draining in
/// central's live set and keeps handing its sessions over); the client resumes on the other
/// node. The watcher sees nothing, not an offline followed by an online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_the_presentity_node_announces_nothing() {
    let redis = Redis::start().await;
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(250),
        NODE_TIMEOUT,
    ))
    .await;
    let a = NodeProc::start("a", &redis, &central).await;
    let b = NodeProc::start("b", &redis, &central).await;
    all_live(&[&a, &b], 2).await;
    let mut alice = a.connect("alice").await;
    let (mut bob, w) = WsClient::connect_welcomed(&format!("ws://{}/ws?user=bob", b.http)).await;
    let tok = w["session"].as_str().unwrap().to_owned();
    alice.send_json(&subscribe(&["bob"])).await;
    expect_presence(&mut alice, "bob", "online").await;
    b.proc.signal(15);
    // Bob reads until the 1012, then resumes on node a.
    let mut last = 0;
    loop {
        match bob.recv().await {
            Received::Json(v) => last = v["n"].as_u64().unwrap_or(last),
            Received::Closed(code) => {
                assert_eq!(code, 1012);
                break;
            }
            Received::Ended => panic!("no close frame"),
        }
    }
    // Long enough for a's heartbeat to see b leave the live set.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let url = format!("ws://{}/ws?user=bob&resume={tok}&last={last}", a.http);
    let (mut bob, w) = WsClient::connect_welcomed(&url).await;
    assert_eq!(w["resumed"], true, "{w}");
    no_presence(
        &mut alice,
        Duration::from_secs(3),
        "drain + resume elsewhere",
    )
    .await;
    bob.send_json(&set("away", None)).await;
    expect_presence(&mut alice, "bob", "away").await;
    drop(b);
}

/// Watchers on a draining node: it tells central it drains (no new logins) but stays in the
/// live set until its drain is over, so the other nodes keep notifying it; a watcher still
/// waiting for its 1012 gets a change at once, not only once it has moved (before, the node
/// left the live set at once and its watchers heard nothing until they resumed elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_a_draining_node_are_notified_until_they_move() {
    const N: usize = 20;
    let redis = Redis::start().await;
    let heartbeat = Duration::from_millis(250);
    let central = TestCentral::start(central_config(SECRET, heartbeat, NODE_TIMEOUT)).await;
    let a = NodeProc::start("a", &redis, &central).await;
    // 20 watchers closed one by one over 4 s.
    let mut b = NodeProc::start_with("b", &redis, &central, &["--drain-ms", "4000"]).await;
    all_live(&[&a, &b], 2).await;
    let mut alice = a.connect("alice").await;
    let mut watchers = Vec::new();
    for i in 0..N {
        let mut w = b.connect(&format!("w{i}")).await;
        w.send_json(&subscribe(&["alice"])).await;
        expect_presence(&mut w, "alice", "online").await;
        watchers.push(w);
    }
    b.proc.signal(15);
    // (The failure this guards against showed from a's first heartbeat after the drain began.)
    wait_draining(b.http, heartbeat).await;
    assert_eq!(
        a.live_peers().await,
        2,
        "the draining node left the live set"
    );
    let changed = Instant::now();
    alice.send_json(&set("away", None)).await;
    let outcomes = watchers.into_iter().map(|mut w| {
        tokio::spawn(async move {
            loop {
                match w.recv_within(Duration::from_secs(10)).await {
                    Some(Received::Json(v)) if v["type"] == "Presence" => {
                        assert_eq!(
                            (v["user"].as_str(), v["state"].as_str()),
                            (Some("alice"), Some("away")),
                            "{v}"
                        );
                        return (true, changed.elapsed());
                    }
                    Some(Received::Json(_)) => continue,
                    Some(Received::Closed(code)) => {
                        assert_eq!(code, 1012);
                        return (false, changed.elapsed());
                    }
                    other => panic!("expected the change or 1012, got {other:?}"),
                }
            }
        })
    });
    let mut notified = 0;
    for o in futures::future::join_all(outcomes).await {
        let (got, after) = o.unwrap();
        if got {
            notified += 1;
            assert!(after < Duration::from_secs(1), "notified after {after:?}");
        } else {
            // Only a watcher released right after the change may miss it here (it gets it
            // from its buffer when it resumes).
            assert!(
                after < Duration::from_secs(1),
                "closed {after:?} after the change without it"
            );
        }
    }
    assert!(
        notified >= N / 2,
        "{notified} of {N} watchers notified on the draining node"
    );
    let status = b.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(a);
}

/// A reconnect storm: 1,000 users, each watching 10 others, all resume at once on the other
/// node (as after a drain), while an observer there watches all of them. Nothing is announced
/// (no offline, no online again, no snapshot repeated), nothing is missing: afterwards each
/// change reaches every watcher exactly once, from the subscriptions the sessions carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_onto_another_node_announces_nothing_and_loses_nothing() {
    const N: usize = 1000;
    const W: usize = 10;
    const CHANGED: usize = 100;
    let redis = Redis::start().await;
    let nodes = pair(&redis, 1000).await;
    let user = |i: usize| format!("u{}", i % N);
    let watched = |i: usize| -> Vec<String> { (1..=W).map(|d| user(i + d)).collect() };

    // Everyone on node b, then subscribed; read the W snapshots, keep the last frame number.
    let connects = (0..N).map(|i| {
        let url = nodes[1].ws(&user(i));
        async move {
            let (c, w) = WsClient::connect_welcomed(&url).await;
            (c, w["session"].as_str().unwrap().to_owned())
        }
    });
    let connected = futures::future::join_all(connects).await;
    let subscribes = connected
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, tok))| async move {
            let users = watched(i);
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            c.send_json(&subscribe(&refs)).await;
            let mut last = 0;
            for _ in 0..W {
                let v = presence_within(&mut c, Duration::from_secs(10)).await;
                assert_eq!(v["state"], "online", "{v}");
                last = v["n"].as_u64().unwrap();
            }
            (c, tok, last)
        });
    let clients = futures::future::join_all(subscribes).await;
    let mut observer = nodes[0].connect("observer").await;
    let all: Vec<String> = (0..N).map(user).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    observer.send_json(&subscribe(&refs)).await;
    for _ in 0..N {
        let v = presence_within(&mut observer, Duration::from_secs(10)).await;
        assert_eq!(v["state"], "online", "{v}");
    }

    // The storm: every connection drops (no close frame) and resumes on node a at once.
    let resumes = clients.into_iter().enumerate().map(|(i, (c, tok, last))| {
        let url = format!(
            "ws://{}/ws?user={}&resume={tok}&last={last}",
            nodes[0].http,
            user(i)
        );
        async move {
            drop(c);
            let (c, w) = WsClient::connect_welcomed(&url).await;
            assert_eq!(w["resumed"], true, "{} resumed: {w}", user(i));
            c
        }
    });
    let started = Instant::now();
    let mut clients = futures::future::join_all(resumes).await;
    let storm = started.elapsed();
    no_presence(&mut observer, Duration::from_secs(1), "the storm").await;
    let quiet = clients
        .iter_mut()
        .map(|c| no_presence(c, Duration::from_millis(300), "a resumed session"));
    futures::future::join_all(quiet).await;

    // Nothing missing: each change reaches every watcher once, on node a now.
    for (i, c) in clients.iter_mut().enumerate().take(CHANGED) {
        c.send_json(&set("away", Some(&format!("c{i}")))).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..CHANGED {
        let v = presence_within(&mut observer, Duration::from_secs(2)).await;
        assert_eq!(v["state"], "away", "{v}");
        assert!(
            seen.insert(v["user"].as_str().unwrap().to_owned()),
            "twice: {v}"
        );
    }
    let checks = clients.iter_mut().enumerate().map(|(i, c)| async move {
        let want: Vec<String> = watched(i)
            .into_iter()
            .filter(|u| u[1..].parse::<usize>().unwrap() < CHANGED)
            .collect();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let v = presence_within(c, Duration::from_secs(2)).await;
            assert_eq!(v["state"], "away", "{v}");
            got.push(v["user"].as_str().unwrap().to_owned());
        }
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want, "watcher {}", user(i));
        no_presence(c, Duration::from_millis(200), "exactly once").await;
    });
    futures::future::join_all(checks).await;
    no_presence(&mut observer, Duration::from_millis(200), "exactly once").await;
    eprintln!("{N} sessions resumed on the other node in {storm:?}");
    for c in clients {
        drop(c);
    }
    stop(nodes).await;
}
