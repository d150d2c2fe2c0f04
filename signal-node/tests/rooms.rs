//! Rooms (contract section 8) on real `signal-node` processes sharing a real redis-server (and
//! a real central where node liveness matters): a 100-member room over three nodes with one
//! forward per node and message, ordered messages from several senders, membership events in
//! one order, limits and bad input, SIGKILL of a member's node, resume keeping the membership
//! (also through a drain of the member's node).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use testkit::{free_port, wait_for_port, wait_until, Proc, Received, Redis, WsClient};

const BIN: &str = env!("CARGO_BIN_EXE_signal-node");
const SECRET: &str = "rooms-test-secret";

struct NodeProc {
    proc: Proc,
    http: SocketAddr,
    id: String,
}

impl NodeProc {
    async fn start(id: &str, redis: &Redis, central: Option<&str>, extra: &[&str]) -> NodeProc {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["--id", id, "--dev-auth", "--secret", SECRET])
            .args(["--listen", &http.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--redis-url", &redis.url()])
            .args(["--rate-limit", "0", "--resume-window-ms", "5000"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(c) = central {
            cmd.args(["--central", c]);
        }
        let proc = Proc::spawn(id, &mut cmd);
        wait_for_port(http, Duration::from_secs(10)).await;
        NodeProc {
            proc,
            http,
            id: id.to_owned(),
        }
    }

    fn ws(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.http)
    }

    async fn connect(&self, user: &str) -> (WsClient, Value) {
        let (c, w) = WsClient::connect_welcomed(&self.ws(user)).await;
        assert_eq!(w["node"], self.id.as_str());
        (c, w)
    }

    async fn metric(&self, line_start: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn live_peers(&self) -> Value {
        get_json(&format!("http://{}/readyz", self.http)).await.1["central"]["livePeers"].clone()
    }

    /// Waits until this node's last peer list from central names exactly `ids`.
    async fn wait_live_peers(&self, ids: Value) {
        wait_until("the live peer set", Duration::from_secs(10), || async {
            self.live_peers().await == ids
        })
        .await;
    }
}

fn join(room: &str) -> Value {
    json!({"type":"Join","room":room})
}

fn room_msg(room: &str, id: &str, body: &str) -> Value {
    json!({"type":"Message","room":room,"id":id,"body":body})
}

/// Reads until a frame of `ty` (skipping others); returns it and what came before.
async fn until_type(c: &mut WsClient, ty: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = c.next_json().await;
        if v["type"] == ty {
            return (v, before);
        }
        before.push(v);
    }
}

/// Joins `room` and returns the Joined's members.
async fn join_ok(c: &mut WsClient, room: &str) -> Vec<String> {
    c.send_json(&join(room)).await;
    let (v, _) = until_type(c, "Joined").await;
    assert_eq!(v["room"], room, "{v}");
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

/// The next server error (skipping other frames).
async fn next_error(c: &mut WsClient) -> Value {
    until_type(c, "Error").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_member_room_over_three_nodes_costs_one_forward_per_node_and_keeps_order() {
    const MEMBERS: usize = 100;
    const PER_SENDER: usize = 20;
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(NodeProc::start(id, &redis, None, &[]).await);
    }
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(nodes[i % 3].connect(u).await.0);
    }
    // Everyone joins at once (joins from the three nodes interleave).
    for c in clients.iter_mut() {
        c.send_json(&join("big")).await;
    }
    // Each member: its Joined, then a MemberJoined for everyone not in it, in one order.
    let mut seen: Vec<Vec<String>> = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let (joined, before) = until_type(c, "Joined").await;
        assert!(before.is_empty(), "{before:?}");
        let members = joined["members"].as_array().unwrap().len();
        assert!(joined["members"]
            .as_array()
            .unwrap()
            .contains(&json!(users[i])));
        let mut events = Vec::new();
        while events.len() < MEMBERS - members {
            let v = c.next_json().await;
            assert_eq!(v["type"], "MemberJoined", "{v}");
            assert_eq!(v["room"], "big");
            events.push(v["user"].as_str().unwrap().to_owned());
        }
        seen.push(events);
    }
    // One order: for any two members, the events both saw are in the same relative order.
    for a in &seen {
        for b in &seen {
            let common_a: Vec<&String> = a.iter().filter(|u| b.contains(u)).collect();
            let common_b: Vec<&String> = b.iter().filter(|u| a.contains(u)).collect();
            assert_eq!(common_a, common_b, "membership events in different orders");
        }
    }
    for c in clients.iter_mut() {
        roundtrip(c).await;
    }

    // Three senders, one per node, interleaved.
    let remote = r#"signal_room_forwards_total{route="remote"}"#;
    let local = r#"signal_room_forwards_total{route="local"}"#;
    let (remote0, local0) = (nodes[0].metric(remote).await, nodes[0].metric(local).await);
    for i in 0..PER_SENDER {
        for (s, c) in clients.iter_mut().take(3).enumerate() {
            let body = format!("{s}:{i}");
            c.send_json(&room_msg("big", &format!("m-{s}-{i}"), &body))
                .await;
        }
    }
    // Every member gets every other sender's messages, each sender's in order; each sender
    // gets its Accepteds in order.
    for (m, c) in clients.iter_mut().enumerate() {
        let mut next: HashMap<String, usize> = HashMap::new();
        let want = if m < 3 { 2 } else { 3 } * PER_SENDER;
        let want_accepted = if m < 3 { PER_SENDER } else { 0 };
        let (mut got, mut accepted) = (0, 0);
        while got < want || accepted < want_accepted {
            let v = match c.recv_within(Duration::from_secs(10)).await {
                Some(testkit::Received::Json(v)) => v,
                other => panic!(
                    "member {m}: {got}/{want} messages, {accepted}/{want_accepted} accepted, then {other:?} ({next:?})"
                ),
            };
            if v["type"] == "Accepted" {
                assert_eq!(v["id"], format!("m-{m}-{accepted}"), "{v}");
                assert_eq!(v["room"], "big");
                assert_eq!(v["recipients"], MEMBERS as u64 - 1, "{v}");
                assert!(v["ts"].as_u64().is_some());
                accepted += 1;
                continue;
            }
            assert_eq!(v["type"], "Message", "{v}");
            assert_eq!(v["room"], "big");
            assert!(v.get("to").is_none(), "{v}");
            let from = v["from"].as_str().unwrap().to_owned();
            assert_ne!(from, users[m], "own message echoed");
            let (s, i) = v["body"].as_str().unwrap().split_once(':').unwrap();
            assert_eq!(users[s.parse::<usize>().unwrap()], from);
            let i: usize = i.parse().unwrap();
            let e = next.entry(from.clone()).or_default();
            assert_eq!(i, *e, "{from}'s messages out of order at {}", users[m]);
            *e += 1;
            got += 1;
        }
    }
    // Node a sent PER_SENDER messages of u0: one local fan-out and two gRPC forwards each,
    // not one per member.
    let sent = PER_SENDER as f64;
    assert_eq!(nodes[0].metric(remote).await - remote0, 2.0 * sent);
    assert_eq!(nodes[0].metric(local).await - local0, sent);
    for c in clients.iter_mut() {
        expect_silence(c, Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_leaves_limits_and_bad_input() {
    let redis = Redis::start().await;
    let extra = ["--max-room-members", "3", "--max-rooms", "2"];
    let a = NodeProc::start("a", &redis, None, &extra).await;
    let b = NodeProc::start("b", &redis, None, &extra).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, _) = b.connect("bob").await;
    let (mut carol, _) = b.connect("carol").await;
    let (mut dave, _) = a.connect("dave").await;

    assert_eq!(join_ok(&mut alice, "r1").await, vec!["alice"]);
    assert_eq!(join_ok(&mut bob, "r1").await, vec!["alice", "bob"]);
    let v = alice.next_json().await;
    assert_eq!(
        strip_n(v),
        json!({"type":"MemberJoined","room":"r1","user":"bob"})
    );
    // Joining again: Joined again, nobody is told.
    assert_eq!(join_ok(&mut bob, "r1").await, vec!["alice", "bob"]);
    assert_eq!(
        join_ok(&mut carol, "r1").await,
        vec!["alice", "bob", "carol"]
    );
    for c in [&mut alice, &mut bob] {
        let v = c.next_json().await;
        assert_eq!(
            strip_n(v),
            json!({"type":"MemberJoined","room":"r1","user":"carol"})
        );
    }
    // ROOMFULL at 3 members.
    dave.send_json(&join("r1")).await;
    let e = next_error(&mut dave).await;
    assert_eq!(
        (e["errorType"].as_str(), e["room"].as_str()),
        (Some("ROOMFULL"), Some("r1")),
        "{e}"
    );
    assert_eq!(e["origin"], "server");
    assert!(e.get("sessionID").is_none());
    // TOOMANY at 2 rooms per session.
    join_ok(&mut dave, "r2").await;
    join_ok(&mut dave, "r3").await;
    dave.send_json(&join("r4")).await;
    let e = next_error(&mut dave).await;
    assert_eq!(
        (e["errorType"].as_str(), e["room"].as_str()),
        (Some("TOOMANY"), Some("r4")),
        "{e}"
    );
    // NOTMEMBER: message and Leave for a room not joined.
    dave.send_json(&room_msg("r1", "m-1", "hi")).await;
    let e = next_error(&mut dave).await;
    assert_eq!(
        (
            e["errorType"].as_str(),
            e["room"].as_str(),
            e["id"].as_str()
        ),
        (Some("NOTMEMBER"), Some("r1"), Some("m-1")),
        "{e}"
    );
    dave.send_json(&json!({"type":"Leave","room":"r1"})).await;
    let e = next_error(&mut dave).await;
    assert_eq!(e["errorType"], "NOTMEMBER", "{e}");
    // BADMESSAGE: bad room ids, missing room; the connection stays.
    for bad in [
        json!({"type":"Join","room":"a b"}),
        json!({"type":"Join"}),
        json!({"type":"Join","room":""}),
        json!({"type":"Leave","room":5}),
        json!({"type":"Message","room":"x y","id":"m-2","body":"hi"}),
    ] {
        dave.send_json(&bad).await;
        let e = next_error(&mut dave).await;
        assert_eq!(e["errorType"], "BADMESSAGE", "{bad}: {e}");
    }
    roundtrip(&mut dave).await;

    // A message reaches every other member (both nodes), the sender gets Accepted.
    alice.send_json(&room_msg("r1", "m-3", "hello")).await;
    let acc = alice.next_json().await;
    assert_eq!(acc["type"], "Accepted", "{acc}");
    assert_eq!(acc["recipients"], 2, "{acc}");
    for c in [&mut bob, &mut carol] {
        let v = strip_n(c.next_json().await);
        assert_eq!(v["type"], "Message");
        assert_eq!(
            (v["from"].as_str(), v["id"].as_str(), v["body"].as_str()),
            (Some("alice"), Some("m-3"), Some("hello")),
            "{v}"
        );
    }
    // Leave: Left, the others get MemberLeft; now there is room for dave.
    bob.send_json(&json!({"type":"Leave","room":"r1"})).await;
    assert_eq!(
        strip_n(bob.next_json().await),
        json!({"type":"Left","room":"r1"})
    );
    for c in [&mut alice, &mut carol] {
        assert_eq!(
            strip_n(c.next_json().await),
            json!({"type":"MemberLeft","room":"r1","user":"bob"})
        );
    }
    dave.send_json(&json!({"type":"Leave","room":"r3"})).await;
    until_type(&mut dave, "Left").await;
    assert_eq!(
        join_ok(&mut dave, "r1").await,
        vec!["alice", "carol", "dave"]
    );
    // A session end (client close) leaves every room.
    carol.close().await;
    for c in [&mut alice, &mut dave] {
        let (v, _) = until_type(c, "MemberLeft").await;
        assert_eq!(v["user"], "carol", "{v}");
    }
    // Bob, no longer a member, gets nothing of the room.
    alice.send_json(&room_msg("r1", "m-4", "after")).await;
    let acc = until_type(&mut alice, "Accepted").await.0;
    assert_eq!(acc["recipients"], 1, "{acc}");
    assert_eq!(until_type(&mut dave, "Message").await.0["id"], "m-4");
    expect_silence(&mut bob, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_members_node_means_member_left_within_the_bound() {
    let node_timeout = Duration::from_millis(1000);
    let redis = Redis::start().await;
    let central = TestCentral::start(central_config(
        SECRET,
        Duration::from_millis(200),
        node_timeout,
    ))
    .await;
    let a = NodeProc::start("a", &redis, Some(&central.grpc_url()), &[]).await;
    let b = NodeProc::start("b", &redis, Some(&central.grpc_url()), &[]).await;
    a.wait_live_peers(json!(["a", "b"])).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, _) = b.connect("bob").await;
    let (mut erin, _) = b.connect("erin").await;
    join_ok(&mut alice, "r").await;
    join_ok(&mut bob, "r").await;
    join_ok(&mut erin, "r").await;
    until_type(&mut alice, "MemberJoined").await;
    until_type(&mut alice, "MemberJoined").await;

    b.proc.signal(9);
    let start = Instant::now();
    let mut left = Vec::new();
    while left.len() < 2 {
        let (v, _) = until_type(&mut alice, "MemberLeft").await;
        left.push(v["user"].as_str().unwrap().to_owned());
    }
    left.sort();
    assert_eq!(left, vec!["bob", "erin"]);
    let took = start.elapsed();
    assert!(
        took < node_timeout + Duration::from_secs(5),
        "took {took:?}"
    );
    // The room is alice's alone now; messages cost no forward to the dead node.
    alice.send_json(&room_msg("r", "m-1", "anyone?")).await;
    let acc = until_type(&mut alice, "Accepted").await.0;
    assert_eq!(acc["recipients"], 0, "{acc}");
    // A new member gets the right member list.
    let (mut bob2, _) = a.connect("bob").await;
    assert_eq!(join_ok(&mut bob2, "r").await, vec!["alice", "bob"]);
    drop(erin);
    drop(bob);
}

/// A rolling restart step for rooms: the members' node drains (SIGTERM) while the other node
/// holds a member too. The draining node stays in central's live set until its drain is over,
/// so the other node neither drops its members (no MemberLeft, no MemberJoined when they come
/// back) nor stops forwarding to them: every member gets every message, live before its 1012
/// or from its buffer where it resumes. (Before, the node left the live set at once, and the
/// other node removed its members from the room at its next heartbeat.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_the_room_whole_while_its_members_move() {
    const MOVING: usize = 10;
    let redis = Redis::start().await;
    let heartbeat = Duration::from_millis(200);
    let central = TestCentral::start(central_config(
        SECRET,
        heartbeat,
        Duration::from_millis(1500),
    ))
    .await;
    let a = NodeProc::start("a", &redis, Some(&central.grpc_url()), &[]).await;
    let mut b = NodeProc::start(
        "b",
        &redis,
        Some(&central.grpc_url()),
        &["--drain-ms", "3000"],
    )
    .await;
    a.wait_live_peers(json!(["a", "b"])).await;
    let (mut alice, _) = a.connect("alice").await;
    join_ok(&mut alice, "r").await;
    let mut movers = Vec::new();
    for i in 0..MOVING {
        let user = format!("m{i}");
        let (mut c, w) = b.connect(&user).await;
        join_ok(&mut c, "r").await;
        until_type(&mut alice, "MemberJoined").await;
        movers.push((user, c, w["session"].as_str().unwrap().to_owned()));
    }
    b.proc.signal(15);
    wait_draining(b.http, heartbeat).await;
    assert_eq!(
        a.live_peers().await,
        json!(["a", "b"]),
        "the draining node left the live set"
    );
    alice
        .send_json(&room_msg("r", "d-1", "while b drains"))
        .await;
    // Each member reads until its 1012 and resumes on a, where it finds what it missed.
    let a_http = a.http;
    let moves = movers.into_iter().map(|(user, mut c, token)| {
        tokio::spawn(async move {
            let mut last = 0;
            let mut got = Vec::new();
            loop {
                match c.recv().await {
                    Received::Json(v) => {
                        last = v["n"].as_u64().unwrap_or(last);
                        if v["type"] == "Message" {
                            got.push(v["id"].as_str().unwrap().to_owned());
                        }
                    }
                    Received::Closed(code) => {
                        assert_eq!(code, 1012, "{user}");
                        break;
                    }
                    Received::Ended => panic!("{user}: no close frame"),
                }
            }
            let url = format!("ws://{a_http}/ws?user={user}&resume={token}&last={last}");
            let (mut c, w) = WsClient::connect_welcomed(&url).await;
            assert_eq!(w["resumed"], true, "{user}: {w}");
            if got.is_empty() {
                let v = until_type(&mut c, "Message").await.0;
                got.push(v["id"].as_str().unwrap().to_owned());
            }
            assert_eq!(got, vec!["d-1"], "{user}");
            (user, c)
        })
    });
    let mut moved = Vec::new();
    for m in futures::future::join_all(moves).await {
        moved.push(m.unwrap());
    }
    // All on a now: one more message reaches every one of them.
    alice
        .send_json(&room_msg("r", "d-2", "after the move"))
        .await;
    let mut seen = Vec::new();
    let acc = loop {
        let v = alice.next_json().await;
        if v["type"] == "Accepted" && v["id"] == "d-2" {
            break v;
        }
        seen.push(v);
    };
    assert_eq!(acc["recipients"], MOVING as u64, "{acc}");
    for (user, c) in &mut moved {
        assert_eq!(until_type(c, "Message").await.0["id"], "d-2", "{user}");
    }
    assert!(
        seen.iter()
            .all(|f| f["type"] != "MemberLeft" && f["type"] != "MemberJoined"),
        "alice saw the movers leave or join: {seen:?}"
    );
    let status = b.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    expect_silence(&mut alice, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_keeps_the_membership_without_events() {
    let redis = Redis::start().await;
    let a = NodeProc::start("a", &redis, None, &[]).await;
    let b = NodeProc::start("b", &redis, None, &[]).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, w) = a.connect("bob").await;
    let token = w["session"].as_str().unwrap().to_owned();
    join_ok(&mut alice, "r").await;
    join_ok(&mut bob, "r").await;
    until_type(&mut alice, "MemberJoined").await;
    alice.send_json(&room_msg("r", "m-1", "one")).await;
    let v = until_type(&mut bob, "Message").await.0;
    let last = v["n"].as_u64().unwrap();
    drop(bob); // no close frame: the session is kept
               // While bob is away, room messages are buffered for him.
    alice.send_json(&room_msg("r", "m-2", "two")).await;
    assert_eq!(until_type(&mut alice, "Accepted").await.0["id"], "m-1");
    let acc = until_type(&mut alice, "Accepted").await.0;
    assert_eq!(
        (acc["id"].as_str(), acc["recipients"].as_u64()),
        (Some("m-2"), Some(1)),
        "{acc}"
    );
    let url = format!("ws://{}/ws?user=bob&resume={token}&last={last}", b.http);
    let (mut bob, w) = WsClient::connect_welcomed(&url).await;
    assert_eq!(
        (w["resumed"].as_bool(), w["node"].as_str()),
        (Some(true), Some("b")),
        "{w}"
    );
    assert_eq!(until_type(&mut bob, "Message").await.0["id"], "m-2");
    // Still a member, now on node b: messages both ways, no leave/join pair for alice.
    alice.send_json(&room_msg("r", "m-3", "three")).await;
    assert_eq!(until_type(&mut bob, "Message").await.0["id"], "m-3");
    let acc = until_type(&mut alice, "Accepted").await.0;
    assert_eq!(acc["recipients"], 1, "{acc}");
    bob.send_json(&room_msg("r", "b-1", "back")).await;
    let (v, before) = until_type(&mut alice, "Message").await;
    assert_eq!(v["id"], "b-1");
    assert!(
        before
            .iter()
            .all(|f| f["type"] != "MemberLeft" && f["type"] != "MemberJoined"),
        "{before:?}"
    );
    assert_eq!(join_ok(&mut bob, "r").await, vec!["alice", "bob"]);
    expect_silence(&mut alice, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_unavailable_and_a_restart_without_data_is_healed() {
    let mut redis = Redis::start().await;
    let a = NodeProc::start("a", &redis, None, &[]).await;
    let b = NodeProc::start("b", &redis, None, &[]).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, _) = b.connect("bob").await;
    join_ok(&mut alice, "r").await;
    join_ok(&mut bob, "r").await;
    until_type(&mut alice, "MemberJoined").await;

    redis.kill();
    alice.send_json(&room_msg("r", "m-1", "down")).await;
    let e = next_error(&mut alice).await;
    assert_eq!(
        (
            e["errorType"].as_str(),
            e["room"].as_str(),
            e["id"].as_str()
        ),
        (Some("UNAVAILABLE"), Some("r"), Some("m-1")),
        "{e}"
    );
    alice.send_json(&join("r2")).await;
    let e = next_error(&mut alice).await;
    assert_eq!(
        (e["errorType"].as_str(), e["room"].as_str()),
        (Some("UNAVAILABLE"), Some("r2")),
        "{e}"
    );
    roundtrip(&mut alice).await;

    // Redis comes back empty: the nodes put their memberships back, messages flow again.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "the room did not recover");
        alice.send_json(&room_msg("r", "m-2", "up")).await;
        let v = loop {
            let v = alice.next_json().await;
            if v["type"] == "Accepted" || v["type"] == "Error" {
                break v;
            }
        };
        if v["type"] == "Accepted" && v["recipients"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = until_type(&mut bob, "Message").await.0;
    assert_eq!(v["id"], "m-2", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_member_is_closed_1013_and_does_not_slow_the_room() {
    const N: usize = 600;
    let redis = Redis::start().await;
    let extra = ["--outbound-queue", "32", "--max-body-bytes", "32768"];
    let a = NodeProc::start("a", &redis, None, &extra).await;
    let b = NodeProc::start("b", &redis, None, &extra).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut stuck, _) = b.connect("stuck").await;
    let (mut carol, _) = b.connect("carol").await;
    let (mut dave, _) = a.connect("dave").await;
    for c in [&mut alice, &mut stuck, &mut carol, &mut dave] {
        join_ok(c, "r").await;
    }
    for c in [&mut alice, &mut carol, &mut dave] {
        c.send_json(&json!({"type":"Ping"})).await;
        until_type(c, "Pong").await;
    }
    // `stuck` stops reading; alice sends 600 messages of 30 KB (18 MB): far more than its
    // socket buffers and its 32-frame outbound bound.
    let body = "x".repeat(30_000);
    let started = Instant::now();
    let reader = |mut c: WsClient| {
        tokio::spawn(async move {
            let mut next = 0;
            while next < N {
                let v = c.next_json().await;
                if v["type"] == "Message" {
                    assert_eq!(v["id"], format!("m-{next}"), "in order");
                    next += 1;
                }
            }
            c
        })
    };
    let (carol_t, dave_t) = (reader(carol), reader(dave));
    let mut accepted = 0;
    for i in 0..N {
        alice
            .send_json(&room_msg("r", &format!("m-{i}"), &body))
            .await;
        // Keep at most 64 in flight so that alice's own queue stays small.
        if i >= 64 {
            let v = until_type(&mut alice, "Accepted").await.0;
            assert!(v["recipients"].as_u64().unwrap() >= 2, "{v}");
            accepted += 1;
        }
    }
    while accepted < N {
        until_type(&mut alice, "Accepted").await;
        accepted += 1;
    }
    let (_carol, _dave) = (carol_t.await.unwrap(), dave_t.await.unwrap());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The stuck member was closed as a slow consumer (1013; the close frame itself may not
    // fit in its full socket, then the client sees the connection end), its session kept.
    let code = stuck.expect_close().await;
    assert!(code == 1013 || code == 1006, "{code}");
    assert_eq!(b.metric("signal_slow_consumer_closes_total").await, 1.0);
    assert!(b.metric("signal_sessions_kept_total").await >= 1.0);
}

/// The sender's node caches the room's node set: a member who joins from a node new to the
/// room gets the very next message all the same (its node tells the others before its
/// Joined). And acknowledging room messages tells their sender nothing: they were in no
/// mailbox, so there is no Delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_on_a_new_node_gets_the_next_message_and_room_acks_send_no_delivered() {
    let redis = Redis::start().await;
    let a = NodeProc::start("a", &redis, None, &[]).await;
    let b = NodeProc::start("b", &redis, None, &[]).await;
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, _) = a.connect("bob").await;
    join_ok(&mut alice, "r").await;
    join_ok(&mut bob, "r").await;
    until_type(&mut alice, "MemberJoined").await;
    for i in 0..3 {
        alice
            .send_json(&room_msg("r", &format!("m-{i}"), "x"))
            .await;
        let acc = until_type(&mut alice, "Accepted").await.0;
        assert_eq!(acc["recipients"], 1, "{acc}");
    }
    let cached = r#"signal_room_node_set_reads_total{source="cache"}"#;
    assert!(
        a.metric(cached).await >= 2.0,
        "node a reads its cached node set"
    );
    // carol's node b is new to the room: once she has her Joined, alice's next message
    // reaches her although node a had cached the set {a}.
    let (mut carol, _) = b.connect("carol").await;
    assert_eq!(
        join_ok(&mut carol, "r").await,
        vec!["alice", "bob", "carol"]
    );
    alice.send_json(&room_msg("r", "m-after", "hi carol")).await;
    let acc = until_type(&mut alice, "Accepted").await.0;
    assert_eq!(
        (acc["id"].as_str(), acc["recipients"].as_u64()),
        (Some("m-after"), Some(2)),
        "{acc}"
    );
    assert_eq!(until_type(&mut carol, "Message").await.0["id"], "m-after");
    // bob acknowledges every room message: alice hears nothing of it.
    let mut last = 0;
    loop {
        let (v, _) = until_type(&mut bob, "Message").await;
        last = v["n"].as_u64().unwrap_or(last);
        if v["id"] == "m-after" {
            break;
        }
    }
    bob.send_json(&json!({"type":"Ack","n":last})).await;
    expect_silence(&mut alice, Duration::from_millis(300)).await;
}

/// One member's socket is written three ways: by the room fan-out of its own node and of the
/// batch from another node (the pushers write it themselves while its writer is idle), and by
/// its writer (ROAP relayed on its node, and whatever a full socket left over). With four
/// senders at once and the member not reading until its socket is full, every frame arrives
/// once, numbered without a gap, each sender's frames in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_and_the_writer_share_one_socket_in_frame_order() {
    const N: usize = 150;
    let redis = Redis::start().await;
    let extra = [
        "--outbound-queue",
        "4096",
        "--outbound-queue-bytes",
        "67108864",
        "--resume-buffer-frames",
        "4096",
        "--resume-buffer-bytes",
        "67108864",
        "--max-body-bytes",
        "32768",
    ];
    let a = NodeProc::start("a", &redis, None, &extra).await;
    let b = NodeProc::start("b", &redis, None, &extra).await;
    let (mut m, _) = a.connect("m").await;
    let (mut near, _) = a.connect("near").await;
    let (mut far, _) = b.connect("far").await;
    let (local, _) = a.connect("local").await;
    let (remote, _) = b.connect("remote").await;
    for c in [&mut m, &mut near, &mut far] {
        join_ok(c, "r").await;
    }
    // Each frame about 20 KB: 600 of them (12 MB) fill the member's socket buffers.
    let pad = "x".repeat(20_000);
    let room_sender = |mut c: WsClient, name: &'static str, pad: String| {
        tokio::spawn(async move {
            for i in 0..N {
                c.send_json(&room_msg("r", &format!("{name}-{i}"), &pad))
                    .await;
            }
            let mut accepted = 0;
            while accepted < N {
                let (v, _) = until_type(&mut c, "Accepted").await;
                assert_eq!(v["recipients"], 2, "{v}");
                accepted += 1;
            }
            c
        })
    };
    let roap_sender = |mut c: WsClient, name: &'static str, pad: String| {
        tokio::spawn(async move {
            for i in 0..N {
                let sdp = format!("v=0 {name} {i} {pad}");
                c.send_json(&json!({"type":"Offer","to":"m","sessionID":name,"sdp":sdp}))
                    .await;
            }
            // Ordered behind the Offers: the node has relayed them all once it answers.
            c.send_json(&json!({"type":"Ping"})).await;
            until_type(&mut c, "Pong").await;
            c
        })
    };
    let senders = [
        room_sender(near, "near", pad.clone()),
        room_sender(far, "far", pad.clone()),
        roap_sender(local, "local", pad.clone()),
        roap_sender(remote, "remote", pad.clone()),
    ];
    // The member reads only once every frame is queued for it (most of them unwritten).
    let mut done = Vec::new();
    for s in senders {
        done.push(s.await.unwrap());
    }
    let mut last_n: Option<u64> = None;
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut got = 0;
    while got < 4 * N {
        let v = m.next_json().await;
        let n = v["n"].as_u64().unwrap_or(0);
        if n == 0 {
            continue;
        }
        if let Some(last) = last_n {
            assert_eq!(n, last + 1, "numbered without a gap: {}", v["type"]);
        }
        last_n = Some(n);
        let (sender, i) = match v["type"].as_str() {
            Some("Message") => {
                let id = v["id"].as_str().unwrap();
                let (s, i) = id.rsplit_once('-').unwrap();
                (s.to_owned(), i.parse::<usize>().unwrap())
            }
            Some("Offer") => {
                let sdp = v["sdp"].as_str().unwrap();
                let mut parts = sdp.split(' ');
                let _ = parts.next();
                let s = parts.next().unwrap().to_owned();
                (s, parts.next().unwrap().parse::<usize>().unwrap())
            }
            _ => continue,
        };
        let e = next.entry(sender.clone()).or_default();
        assert_eq!(i, *e, "{sender}'s frames in the order sent");
        *e += 1;
        got += 1;
    }
    for s in ["near", "far", "local", "remote"] {
        assert_eq!(next.get(s), Some(&N), "every frame of {s}");
    }
    // Some frames went out through the pushers, and the full socket left some to the writer.
    assert!(
        a.metric("signal_frames_written_total{by=\"producer\"}")
            .await
            > 0.0
    );
    assert!(a.metric("signal_frames_written_total{by=\"writer\"}").await > 0.0);
}
