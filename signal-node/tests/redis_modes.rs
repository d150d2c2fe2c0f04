//! Every Redis deployment of contract section 10, for real: a Redis Cluster (3 masters + 3
//! replicas), a Sentinel setup (master, replica, 3 sentinels) and a TLS-only server. On each:
//! central (its registry in that Redis) balances logins over two `signal-node` processes,
//! messages relay across the nodes, a chat message waits in the mailbox and is pushed at login.
//! Cluster and Sentinel then lose a master (SIGKILL): relaying resumes without restarting
//! anything, and the mailbox message accepted before the kill is still delivered.
//!
//! Presence (another feature, later) gets its hook in [`after_failover`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use signal_node::redis_link::{self, RedisConfig, RedisMode};
use testkit::redis_deployments::{wait_replicated, SENTINEL_MASTER};
use testkit::{
    free_port, wait_for_port, wait_until, Proc, Received, RedisCluster, RedisSentinel, RedisTls,
    WsClient,
};

const SECRET: &str = "shared-cluster-secret";

/// What the binaries are told about the deployment.
struct Flags {
    mode: RedisMode,
    urls: String,
    master: Option<String>,
    tls_ca: Option<PathBuf>,
}

impl Flags {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--redis-mode".into(),
            self.mode.as_str().into(),
            "--redis-url".into(),
            self.urls.clone(),
        ];
        if let Some(m) = &self.master {
            a.extend(["--redis-sentinel-master".into(), m.clone()]);
        }
        if let Some(ca) = &self.tls_ca {
            a.extend(["--redis-tls-ca".into(), ca.display().to_string()]);
        }
        a
    }

    fn config(&self) -> RedisConfig {
        RedisConfig::parse(
            self.mode,
            &self.urls,
            self.master.clone(),
            self.tls_ca.clone(),
        )
    }
}

struct NodeProc {
    id: String,
    proc: Proc,
    http: SocketAddr,
}

impl NodeProc {
    async fn start(id: &str, flags: &Flags, central: &TestCentral) -> NodeProc {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proc = Proc::spawn(
            id,
            Command::new(env!("CARGO_BIN_EXE_signal-node"))
                .args(["--id", id, "--secret", SECRET, "--dev-auth"])
                .args(["--listen", &http.to_string()])
                .args(["--grpc-listen", &grpc.to_string()])
                .args(["--central", &central.grpc_url()])
                .args(flags.args())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null()),
        );
        wait_for_port(http, Duration::from_secs(10)).await;
        NodeProc {
            id: id.to_owned(),
            proc,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// Two nodes behind central, both reachable.
struct Setup {
    central: TestCentral,
    nodes: Vec<NodeProc>,
}

async fn setup(flags: &Flags) -> Setup {
    let central = {
        let mut cfg = central_config(
            SECRET,
            Duration::from_millis(200),
            Duration::from_millis(1500),
        );
        cfg.redis = Some(flags.config());
        TestCentral::start(cfg).await
    };
    let a = NodeProc::start("a", flags, &central).await;
    let b = NodeProc::start("b", flags, &central).await;
    wait_until(
        "central to hand out both nodes",
        Duration::from_secs(20),
        || async { central.reachable_nodes().await == ["a", "b"] },
    )
    .await;
    for n in [&a, &b] {
        wait_until("node ready", Duration::from_secs(10), || async {
            get_json(&n.url("/readyz")).await.0 == 200
        })
        .await;
    }
    Setup {
        central,
        nodes: vec![a, b],
    }
}

/// The next JSON frame of type `ty`, skipping others (acks, Delivered...).
async fn next_of(c: &mut WsClient, ty: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Some(Received::Json(v)) if v["type"] == ty => return v,
            Some(Received::Json(_)) => continue,
            other => panic!("expected {ty}, got {other:?}"),
        }
    }
}

/// Sends offers from `from` to `to` until one arrives; returns how long it took. In between,
/// `from` may be told UNAVAILABLE or OFFLINE: that is what a failover looks like.
async fn relay_until_delivered(
    from: &mut WsClient,
    to: &mut WsClient,
    to_user: &str,
    tag: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    for i in 0.. {
        assert!(
            start.elapsed() < within,
            "relaying did not resume within {within:?}"
        );
        let sid = format!("{tag}-{i}");
        from.send_json(&offer(to_user, &sid)).await;
        let until = Instant::now() + Duration::from_millis(700);
        while let Some(r) = to
            .recv_within(until.saturating_duration_since(Instant::now()))
            .await
        {
            match r {
                Received::Json(v) if v["sessionID"] == sid.as_str() => return start.elapsed(),
                Received::Json(_) => {}
                other => panic!("{to_user}'s connection ended: {other:?}"),
            }
        }
        // Drain what the sender was told meanwhile (errors during the outage).
        while let Some(r) = from.recv_within(Duration::from_millis(5)).await {
            if let Received::Json(v) = r {
                if v["type"] == "Error" {
                    let ty = v["errorType"].as_str().unwrap_or_default().to_owned();
                    assert!(
                        ["UNAVAILABLE", "OFFLINE"].contains(&ty.as_str()),
                        "unexpected error during the outage: {v}"
                    );
                }
            } else {
                panic!("sender's connection ended: {r:?}");
            }
        }
    }
    unreachable!()
}

/// Login balancing, cross-node relay, a mailbox message for an offline user. Returns the two
/// connected users (alice, bob on different nodes).
async fn exercise(s: &Setup, mailbox_to: &str) -> (WsClient, WsClient, String) {
    let (na, ua) = s.central.login("alice").await.unwrap();
    let (nb, ub) = s.central.login("bob").await.unwrap();
    assert_ne!(na, nb, "central balanced two logins onto different nodes");
    let (mut alice, w) = WsClient::connect_welcomed(&ua).await;
    assert_eq!(
        (w["user"].as_str(), w["node"].as_str()),
        (Some("alice"), Some(na.as_str()))
    );
    let (mut bob, _) = WsClient::connect_welcomed(&ub).await;
    // Cross-node relay, both ways.
    bob.send_json(&offer("alice", "s1")).await;
    assert_eq!(next_of(&mut alice, "Offer").await["sessionID"], "s1");
    alice
        .send_json(&json!({"type":"Answer","to":"bob","sessionID":"s1","sdp":"v=0"}))
        .await;
    assert_eq!(next_of(&mut bob, "Answer").await["sessionID"], "s1");
    // A chat message for someone offline waits in the mailbox.
    alice
        .send_json(&json!({"type":"Message","to":mailbox_to,"id":"m1","body":"kept"}))
        .await;
    let acc = next_of(&mut alice, "Accepted").await;
    assert_eq!(acc["id"], "m1", "{acc}");
    // Presence: a snapshot of 20 users (their keys spread over the slots of a cluster), then a
    // change of bob's on the other node.
    let watched: Vec<String> = std::iter::once("bob".to_owned())
        .chain((0..19).map(|i| format!("w{i}")))
        .collect();
    alice
        .send_json(&json!({"type":"Subscribe","users":watched}))
        .await;
    let mut seen = std::collections::HashMap::new();
    while seen.len() < watched.len() {
        let p = next_of(&mut alice, "Presence").await;
        seen.insert(p["user"].as_str().unwrap().to_owned(), p["state"].clone());
    }
    assert_eq!(seen["bob"], "online");
    assert!(
        watched[1..].iter().all(|u| seen[u] == "offline"),
        "{seen:?}"
    );
    bob.send_json(&json!({"type":"SetPresence","state":"away","note":"lunch"}))
        .await;
    let p = next_of(&mut alice, "Presence").await;
    assert_eq!(
        (p["user"].as_str(), p["state"].as_str()),
        (Some("bob"), Some("away")),
        "{p}"
    );
    // Rooms: one room over both nodes, a message from one member reaches the other.
    alice.send_json(&json!({"type":"Join","room":"r1"})).await;
    next_of(&mut alice, "Joined").await;
    bob.send_json(&json!({"type":"Join","room":"r1"})).await;
    let j = next_of(&mut bob, "Joined").await;
    assert_eq!(j["members"].as_array().map(Vec::len), Some(2), "{j}");
    next_of(&mut alice, "MemberJoined").await;
    bob.send_json(&json!({"type":"Message","room":"r1","id":"g1","body":"hi all"}))
        .await;
    let acc = next_of(&mut bob, "Accepted").await;
    assert_eq!(acc["recipients"], 1, "{acc}");
    let m = next_of(&mut alice, "Message").await;
    assert_eq!(
        (m["room"].as_str(), m["body"].as_str()),
        (Some("r1"), Some("hi all")),
        "{m}"
    );
    (alice, bob, na)
}

/// The mailbox message is pushed when its recipient logs in (through central). The login is
/// retried on 503 for a while, as clients do: after a failover the nodes' registry entries may
/// have expired during the outage, and logins find no node until their next heartbeat
/// registers them again.
async fn mailbox_delivered(s: &Setup, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let url = loop {
        match s.central.login(user).await {
            Ok((_, url)) => break url,
            Err(status) => {
                assert_eq!(status, 503, "login of {user}");
                assert!(
                    Instant::now() < deadline,
                    "{user} could not log in: {status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (mut c, _) = WsClient::connect_welcomed(&url).await;
    let m = next_of(&mut c, "Message").await;
    assert_eq!(
        (m["from"].as_str(), m["id"].as_str(), m["body"].as_str()),
        (Some("alice"), Some("m1"), Some("kept")),
        "{m}"
    );
}

/// What every node must show: the mode in `/readyz` and `redis_up{mode=...} 1` in metrics;
/// central shows the mode of its registry in `/readyz`.
async fn nodes_report(s: &Setup, mode: &str) {
    wait_until(
        "central reports its registry up",
        Duration::from_secs(10),
        || async {
            let (_, body) = get_json(&format!("http://{}/readyz", s.central.http)).await;
            body["registry"]["mode"] == mode && body["registry"]["ok"] == true
        },
    )
    .await;
    for n in &s.nodes {
        wait_until("node reports redis up", Duration::from_secs(10), || async {
            let (_, body) = get_json(&n.url("/readyz")).await;
            let metrics = reqwest_text(&n.url("/metrics")).await;
            body["directory"]["mode"] == mode
                && body["directory"]["healthy"] == true
                && metrics.contains(&format!("redis_up{{mode=\"{mode}\"}} 1"))
        })
        .await;
    }
}

async fn reqwest_text(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// After a failover: nothing restarted, logins work again, a new user connects (a directory
/// claim on the new master) and is reached from the other node (a directory lookup), the mode
/// is reported. Presence (coming from another feature) adds its checks here: a watcher sees
/// no false offline.
async fn after_failover(
    s: &mut Setup,
    mode: &str,
    bob: &mut WsClient,
    alice_node: &str,
) -> Instant {
    for n in &mut s.nodes {
        assert!(n.proc.is_running(), "a node exited during the failover");
    }
    let node = s.nodes.iter().find(|n| n.id == alice_node).unwrap();
    let url = format!("ws://{}/ws?user=zed", node.http);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut zed = loop {
        match WsClient::try_connect(&url).await {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(e.status, Some(503), "{e:?}");
                assert!(Instant::now() < deadline, "zed could not connect: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    next_of(&mut zed, "Welcome").await;
    relay_until_delivered(bob, &mut zed, "zed", "z", Duration::from_secs(10)).await;
    let reached = Instant::now();
    wait_until("logins work again", Duration::from_secs(15), || async {
        s.central.login("probe").await.is_ok()
    })
    .await;
    nodes_report(s, mode).await;
    reached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_relays_balances_keeps_mail_and_survives_a_master_kill() {
    let mut cluster = RedisCluster::start().await;
    let flags = Flags {
        mode: RedisMode::Cluster,
        urls: cluster.urls(),
        master: None,
        tls_ca: None,
    };
    let mut s = setup(&flags).await;
    nodes_report(&s, "cluster").await;
    // Kill the master that holds alice's directory entry; send the mail to someone whose
    // mailbox lives on that same master (so both survive the same failover).
    let victim = cluster.master_for("sig:u:alice").await;
    let mut recipient = "carol".to_owned();
    for name in [
        "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    ] {
        if cluster.master_for(&format!("{{mb:{name}}}")).await == victim {
            recipient = name.to_owned();
            break;
        }
    }
    let (mut alice, mut bob, alice_node) = exercise(&s, &recipient).await;
    wait_replicated(victim).await;

    let killed = Instant::now();
    cluster.kill(victim);
    cluster
        .wait_failover("sig:u:alice", victim, Duration::from_secs(30))
        .await;
    let failover = killed.elapsed();
    let resumed =
        relay_until_delivered(&mut bob, &mut alice, "alice", "f", Duration::from_secs(20)).await;
    eprintln!(
        "cluster: replica promoted {failover:?} after the kill, relaying resumed {:?} after the kill",
        failover + resumed
    );
    let reached = after_failover(&mut s, "cluster", &mut bob, &alice_node).await;
    eprintln!(
        "cluster: a user connecting after the failover was reached from the other node {:?} after the kill",
        reached - killed
    );
    mailbox_delivered(&s, &recipient).await;
    // The directory's reassert on a cluster: single-key SET NX spread over every slot.
    let dir = signal_node::Directory::redis(flags.config()).unwrap();
    let entries: Vec<_> = (0..300)
        .map(|i| {
            (
                signal_proto::UserId::new(format!("re-{i}")).unwrap(),
                signal_proto::relay::Location {
                    node_id: "a".into(),
                    instance: "i".into(),
                    conn: i,
                    grpc_url: "http://a:9091".into(),
                },
            )
        })
        .collect();
    assert_eq!(dir.reassert(&entries[..100]).await.unwrap(), 100);
    assert_eq!(
        dir.reassert(&entries).await.unwrap(),
        200,
        "never overwrites"
    );
    for (u, at) in entries.iter().step_by(37) {
        assert_eq!(dir.lookup(u).await.unwrap().as_ref(), Some(at));
    }
    // The cluster is whole again (minus the dead node): a fresh node handle works too.
    let mut conn = redis_link::connect_lazy(flags.config()).unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_relays_balances_keeps_mail_and_survives_a_failover() {
    let mut sentinel = RedisSentinel::start().await;
    let flags = Flags {
        mode: RedisMode::Sentinel,
        urls: sentinel.urls(),
        master: Some(SENTINEL_MASTER.into()),
        tls_ca: None,
    };
    let mut s = setup(&flags).await;
    nodes_report(&s, "sentinel").await;
    let (mut alice, mut bob, alice_node) = exercise(&s, "carol").await;
    wait_replicated(sentinel.master_port).await;

    let killed = Instant::now();
    sentinel.kill_master();
    sentinel.wait_failover(Duration::from_secs(30)).await;
    let failover = killed.elapsed();
    let resumed =
        relay_until_delivered(&mut bob, &mut alice, "alice", "f", Duration::from_secs(20)).await;
    eprintln!(
        "sentinel: replica promoted {failover:?} after the kill, relaying resumed {:?} after the kill",
        failover + resumed
    );
    let reached = after_failover(&mut s, "sentinel", &mut bob, &alice_node).await;
    eprintln!(
        "sentinel: a user connecting after the failover was reached from the other node {:?} after the kill",
        reached - killed
    );
    mailbox_delivered(&s, "carol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_the_test_ca() {
    let tls = RedisTls::start().await;
    // Without the CA the server's certificate is not trusted: commands fail, never hang.
    let mut untrusted = redis_link::connect_lazy(tls.url().as_str()).unwrap();
    let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut untrusted).await;
    assert!(r.is_err(), "a certificate from an unknown CA was accepted");

    let flags = Flags {
        mode: RedisMode::Standalone,
        urls: tls.url(),
        master: None,
        tls_ca: Some(tls.ca_file()),
    };
    let s = setup(&flags).await;
    nodes_report(&s, "standalone").await;
    let (_alice, _bob, _) = exercise(&s, "carol").await;
    mailbox_delivered(&s, "carol").await;
}

/// A batch of appends for several recipients on a Redis Cluster: one script call per
/// recipient (their hash tags are on different slots), each message answered on its own, each
/// mailbox in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_batched_appends_go_one_call_per_recipient() {
    use signal_node::mailbox::{Appended, MailboxError, MailboxStore, NewMessage, StoreLimits};
    use signal_proto::{MessageId, UserId};
    let cluster = RedisCluster::start().await;
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let cfg = RedisConfig::parse(RedisMode::Cluster, &cluster.urls(), None, None);
    let store = MailboxStore::redis(cfg).unwrap();
    let limits = StoreLimits {
        max_messages: 2,
        ttl: Duration::from_secs(60),
    };
    let users: Vec<UserId> = ["bob", "carol", "dave", "erin"]
        .iter()
        .map(|s| UserId::new(*s).unwrap())
        .collect();
    let alice = UserId::new("alice").unwrap();
    let ids: Vec<MessageId> = ["m1", "m2", "m3"]
        .iter()
        .map(|s| MessageId::new(*s).unwrap())
        .collect();
    let frames: Vec<Vec<String>> = users
        .iter()
        .map(|u| ids.iter().map(|id| format!("{u}-{id}")).collect())
        .collect();
    let msgs: Vec<Vec<NewMessage<'_>>> = frames
        .iter()
        .map(|f| {
            ids.iter()
                .zip(f)
                .enumerate()
                .map(|(i, (id, frame))| NewMessage {
                    sender: &alice,
                    id,
                    frame,
                    ts: i as u64,
                })
                .collect()
        })
        .collect();
    let groups: Vec<(&UserId, &[NewMessage<'_>])> = users
        .iter()
        .zip(&msgs)
        .map(|(u, m)| (u, m.as_slice()))
        .collect();
    let answers = store.append_groups(&groups, limits).await;
    assert_eq!(answers.len(), users.len());
    for (u, a) in users.iter().zip(answers) {
        let a = a.unwrap();
        assert!(matches!(a[0], Ok(Appended::Stored(_))), "{u}: {a:?}");
        assert!(matches!(a[1], Ok(Appended::Stored(_))), "{u}: {a:?}");
        assert_eq!(a[2], Err(MailboxError::Full), "{u}: quota of 2");
        let page = store.page(u, None, 10, limits).await.unwrap();
        let got: Vec<&str> = page.iter().map(|p| p.frame.as_str()).collect();
        assert_eq!(got, [format!("{u}-m1"), format!("{u}-m2")], "{u}");
    }
}
