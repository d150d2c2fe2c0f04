//! Sessions (contract section 5) on real nodes (in-process, real gRPC on loopback) sharing a
//! real redis-server: numbered frames, acks, resume on the same and on the other node with
//! nothing lost, duplicated or reordered, refusals, expiry with OFFLINE to senders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use signal_node::DirectoryConfig;
use testkit::{Received, Redis, WsClient};

async fn pair(redis: &Redis, window: Duration) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut cfg = dev(id);
        cfg.directory = DirectoryConfig::Redis(redis.url().into());
        cfg.rate_limit = 0;
        cfg.resume_window = window;
        nodes.push(TestNode::start(cfg).await);
    }
    nodes
}

async fn stop(nodes: Vec<TestNode>) {
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

fn resume_url(node: &TestNode, user: &str, token: &str, last: u64) -> String {
    format!(
        "ws://{}/ws?user={user}&resume={token}&last={last}",
        node.http
    )
}

/// Connects and returns the client and its Welcome.
async fn welcomed(url: &str) -> (WsClient, Value) {
    let (c, w) = WsClient::connect_welcomed(url).await;
    assert!(w["session"].as_str().is_some_and(|s| s.len() >= 32), "{w}");
    (c, w)
}

fn token(w: &Value) -> String {
    w["session"].as_str().unwrap().to_owned()
}

fn msg(to: &str, i: usize) -> Value {
    json!({"type":"Offer","to":to,"sessionID":format!("s{i}"),"sdp":"v=0","i":i})
}

/// Reads frames until `count` numbered frames arrived; returns their (n, i) pairs.
async fn read_numbered(c: &mut WsClient, count: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    while got.len() < count {
        let v = c.next_json().await;
        let n = v["n"].as_u64().unwrap_or_else(|| panic!("no n: {v}"));
        got.push((n, v["i"].as_u64().unwrap_or(u64::MAX)));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_and_numbered_frames() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, Duration::from_secs(5)).await;
    let (mut bob, w) = welcomed(&nodes[0].ws("bob")).await;
    assert_eq!(w["resumed"], false);
    assert_eq!(w["resumeWindowMs"], 5000);
    assert!(w.get("n").is_none(), "the Welcome carries no n: {w}");
    let mut alice = nodes[1].connect("alice").await;
    for i in 0..5 {
        alice.send_json(&msg("bob", i)).await;
    }
    let got = read_numbered(&mut bob, 5).await;
    assert_eq!(got, (1..=5).zip(0..5).collect::<Vec<_>>());
    // Pong is not numbered; errors to the sender are.
    bob.send_json(&json!({"type":"Ping"})).await;
    assert_eq!(bob.next_json().await, json!({"type":"Pong"}));
    bob.send_json(&json!({"type":"Ack","n":99})).await;
    let e = bob.next_json().await;
    assert_eq!(
        (e["errorType"].as_str(), e["n"].as_u64()),
        (Some("BADMESSAGE"), Some(6))
    );
    bob.send_json(&json!({"type":"Ack","n":6})).await;
    // A client's own `n` on a relayed frame is dropped, not relayed.
    bob.send_json(&json!({"type":"Ok","to":"alice","sessionID":"x","n":777}))
        .await;
    let ok = alice.next_json().await;
    assert_eq!(ok["n"], 1, "{ok}");
    stop(nodes).await;
}

/// A client reads k frames, its socket dies without a close frame, the sender keeps sending;
/// it resumes on the *other* node with last=k and gets exactly the rest, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_other_node_gets_exactly_the_rest() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, Duration::from_secs(3)).await;
    let (mut bob, w) = welcomed(&nodes[0].ws("bob")).await;
    let tok = token(&w);
    let mut alice = nodes[1].connect("alice").await;
    for i in 0..10 {
        alice.send_json(&msg("bob", i)).await;
    }
    let got = read_numbered(&mut bob, 4).await;
    assert_eq!(got.last().unwrap().0, 4);
    drop(bob); // no close frame
               // The session is kept: alice's frames are buffered, none refused.
    for i in 10..20 {
        alice.send_json(&msg("bob", i)).await;
    }
    let (mut bob, w) = welcomed(&resume_url(&nodes[1], "bob", &tok, 4)).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["session"], tok.as_str());
    assert_eq!(w["node"], "b");
    let got = read_numbered(&mut bob, 16).await;
    assert_eq!(got, (5..=20).zip(4..20).collect::<Vec<_>>());
    // New frames continue the numbering.
    alice.send_json(&msg("bob", 20)).await;
    assert_eq!(read_numbered(&mut bob, 1).await, vec![(21, 20)]);
    assert_quiet(&mut alice, "no error for alice").await;
    stop(nodes).await;
}

/// 500 frames from one sender while the recipient resumes on the other node (its old
/// connection still open, then replaced with 4409): complete, in order, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_frames_across_a_takeover_arrive_complete_and_in_order() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, Duration::from_secs(3)).await;
    let (mut bob, w) = welcomed(&nodes[0].ws("bob")).await;
    let tok = token(&w);
    let mut alice = nodes[0].connect("alice").await;
    let sender = tokio::spawn(async move {
        for i in 0..500 {
            alice.send_json(&msg("bob", i)).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        alice
    });
    let first = read_numbered(&mut bob, 100).await;
    let last = first.last().unwrap().0;
    // Resume elsewhere while the old socket is still open.
    let (mut bob2, w) = welcomed(&resume_url(&nodes[1], "bob", &tok, last)).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(bob.expect_close().await, 4409);
    let rest = read_numbered(&mut bob2, 400).await;
    let all: Vec<u64> = first.iter().chain(rest.iter()).map(|(_, i)| *i).collect();
    assert_eq!(all, (0..500).collect::<Vec<_>>());
    let ns: Vec<u64> = first.iter().chain(rest.iter()).map(|(n, _)| *n).collect();
    assert_eq!(ns, (1..=500).collect::<Vec<_>>());
    let mut alice = sender.await.unwrap();
    assert_quiet(&mut alice, "no error for alice").await;
    stop(nodes).await;
}

/// A sender on node a relays to a recipient on node b in bursts of 8, each burst in flight at
/// once (the reader reads on before node b answers, `--relay-inflight`); mid-stream the
/// recipient's socket dies and it resumes on node `to` (a third node, or the sender's own).
/// The burst node b refuses once the session has left (NOT_HERE, every frame of it) is sent
/// on to the new node in its order, none overtaken by a later frame: complete, in order, no
/// duplicate, no error for the sender.
async fn frames_in_flight_follow_a_move(to: usize) {
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let mut cfg = dev(id);
        cfg.directory = DirectoryConfig::Redis(redis.url().into());
        cfg.rate_limit = 0;
        cfg.resume_window = Duration::from_secs(3);
        nodes.push(TestNode::start(cfg).await);
    }
    let (mut bob, w) = welcomed(&nodes[1].ws("bob")).await;
    let tok = token(&w);
    let mut alice = nodes[0].connect("alice").await;
    // Paced in bursts of 8 (not a synchronisation): the sender is still sending when the
    // session moves.
    const FRAMES: u64 = 1000;
    let sender = tokio::spawn(async move {
        for i in 0..FRAMES as usize {
            alice.send_json(&msg("bob", i)).await;
            if i % 8 == 7 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        alice
    });
    let first = read_numbered(&mut bob, 100).await;
    let last = first.last().unwrap().0;
    drop(bob); // no close frame: the session is kept on node b, frames buffered
    let (mut bob2, w) = welcomed(&resume_url(&nodes[to], "bob", &tok, last)).await;
    assert_eq!(w["resumed"], true, "{w}");
    let rest = read_numbered(&mut bob2, FRAMES as usize - 100).await;
    let all: Vec<u64> = first.iter().chain(rest.iter()).map(|(_, i)| *i).collect();
    assert_eq!(all, (0..FRAMES).collect::<Vec<_>>());
    let ns: Vec<u64> = first.iter().chain(rest.iter()).map(|(n, _)| *n).collect();
    assert_eq!(ns, (1..=FRAMES).collect::<Vec<_>>());
    let mut alice = sender.await.unwrap();
    assert_quiet(&mut alice, "no error for alice").await;
    assert_quiet(&mut bob2, "nothing more for bob").await;
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_follow_a_move_to_a_third_node() {
    frames_in_flight_follow_a_move(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_follow_a_move_to_the_senders_node() {
    frames_in_flight_follow_a_move(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_resume_and_refusals() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, Duration::from_secs(3)).await;
    let (mut bob, w) = welcomed(&nodes[0].ws("bob")).await;
    let tok = token(&w);
    let mut alice = nodes[0].connect("alice").await;
    for i in 0..3 {
        alice.send_json(&msg("bob", i)).await;
    }
    read_numbered(&mut bob, 3).await;
    drop(bob);
    alice.send_json(&msg("bob", 3)).await;
    let (mut bob, w) = welcomed(&resume_url(&nodes[0], "bob", &tok, 3)).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(read_numbered(&mut bob, 1).await, vec![(4, 3)]);
    bob.send_json(&json!({"type":"Ack","n":4})).await;
    drop(bob);

    // Another user's token, a forged one, a claim ahead of what was sent: fresh sessions.
    let (_carol, wc) = welcomed(&nodes[1].ws("carol")).await;
    let (mut c1, w1) = welcomed(&resume_url(&nodes[1], "carol", &tok, 0)).await;
    assert_eq!(w1["resumed"], false, "another user's token: {w1}");
    assert_ne!(w1["session"], wc["session"]);
    c1.send_json(&json!({"type":"Ping"})).await;
    c1.next_json().await;
    let forged = "0".repeat(32);
    let (_b, w2) = welcomed(&resume_url(&nodes[1], "bob", &forged, 4)).await;
    assert_eq!(w2["resumed"], false, "forged: {w2}");
    assert_ne!(w2["session"], tok.as_str());
    // The forged attempt replaced bob's session: his real token is now stale too.
    let (_b, w3) = welcomed(&resume_url(&nodes[0], "bob", &tok, 4)).await;
    assert_eq!(w3["resumed"], false, "stale: {w3}");
    let (_d, wd) = welcomed(&nodes[0].ws("dave")).await;
    let (_d2, wd2) = welcomed(&resume_url(&nodes[1], "dave", &token(&wd), 50)).await;
    assert_eq!(wd2["resumed"], false, "ahead: {wd2}");
    // A malformed `last` is a bad request.
    let bad = format!("ws://{}/ws?user=dave&resume=x&last=-1", nodes[0].http);
    assert_eq!(
        WsClient::try_connect(&bad).await.err().unwrap().status,
        Some(400)
    );
    stop(nodes).await;
}

/// The window passes: the session ends, and the sender of every ROAP frame it buffered gets
/// OFFLINE; frames for the user then get OFFLINE at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_tells_senders_of_buffered_frames_offline() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, Duration::from_millis(800)).await;
    let (bob, wb) = welcomed(&nodes[0].ws("bob")).await;
    let mut alice = nodes[1].connect("alice").await;
    drop(bob);
    // Wait until the node noticed (a frame sent before that may still reach the dead socket).
    testkit::wait_until("bob detached", Duration::from_secs(5), || async {
        let (_, body) = get_json(&nodes[0].url("/readyz")).await;
        body["connections"] == 0 && body["sessions"] == 1
    })
    .await;
    for i in 0..3 {
        alice.send_json(&msg("bob", i)).await;
    }
    assert_quiet(&mut alice, "buffered, not refused").await;
    let mut errors = Vec::new();
    for _ in 0..3 {
        let e = alice.next_json().await;
        assert_eq!(e["errorType"], "OFFLINE", "{e}");
        assert_eq!(e["origin"], "server");
        assert_eq!(e["from"], "bob");
        errors.push(e["sessionID"].as_str().unwrap().to_owned());
    }
    assert_eq!(errors, vec!["s0", "s1", "s2"]);
    alice.send_json(&msg("bob", 9)).await;
    assert_eq!(alice.next_json().await["errorType"], "OFFLINE");
    // The window has passed: its token no longer resumes anything.
    let (_bob, w) = welcomed(&resume_url(&nodes[0], "bob", &token(&wb), 0)).await;
    assert_eq!(w["resumed"], false, "expired: {w}");
    stop(nodes).await;
}

/// A client close (1000) ends the session at once: senders get OFFLINE, no resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_ends_the_session() {
    let redis = Redis::start().await;
    let nodes = pair(&redis, Duration::from_secs(3)).await;
    let (bob, w) = welcomed(&nodes[0].ws("bob")).await;
    let mut alice = nodes[1].connect("alice").await;
    bob.close().await;
    testkit::wait_until("bob gone", Duration::from_secs(5), || async {
        let (_, body) = get_json(&nodes[0].url("/readyz")).await;
        body["sessions"] == 0
    })
    .await;
    alice.send_json(&msg("bob", 0)).await;
    assert_eq!(alice.next_json().await["errorType"], "OFFLINE");
    let (_b, w2) = welcomed(&resume_url(&nodes[1], "bob", &token(&w), 0)).await;
    assert_eq!(w2["resumed"], false);
    stop(nodes).await;
}

/// A node drains: every client is closed with 1012 and resumes on the other node with
/// nothing lost, also frames sent while it was reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_sessions_over() {
    let redis = Redis::start().await;
    let mut nodes = pair(&redis, Duration::from_secs(3)).await;
    let mut alice = nodes[1].connect("alice").await;
    let mut users = Vec::new();
    for u in 0..20 {
        let name = format!("u{u}");
        let (c, w) = welcomed(&nodes[0].ws(&name)).await;
        users.push((name, c, token(&w)));
    }
    for (name, _, _) in &users {
        alice.send_json(&msg(name, 0)).await;
    }
    let mut draining = nodes.remove(0);
    draining.begin_shutdown();
    let b = &nodes[0];
    for (name, mut c, tok) in users {
        let mut last = 0;
        let mut seen = Vec::new();
        loop {
            match c.recv().await {
                Received::Json(v) => {
                    last = v["n"].as_u64().unwrap();
                    seen.push(v["i"].as_u64().unwrap());
                }
                Received::Closed(code) => {
                    assert_eq!(code, 1012);
                    break;
                }
                Received::Ended => panic!("{name}: no close frame"),
            }
        }
        // Sent while the client is away.
        alice.send_json(&msg(&name, 1)).await;
        let (mut c, w) = welcomed(&resume_url(b, &name, &tok, last)).await;
        assert_eq!(w["resumed"], true, "{name}: {w}");
        while seen.len() < 2 {
            let v = c.next_json().await;
            assert_eq!(v["n"].as_u64().unwrap(), last + 1, "{name}: {v}");
            last += 1;
            seen.push(v["i"].as_u64().unwrap());
        }
        assert_eq!(seen, vec![0, 1], "{name}");
    }
    assert_quiet(&mut alice, "no error for alice").await;
    // Every session was taken over: the drain ends well before the resume window.
    let t = std::time::Instant::now();
    draining.join().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    stop(nodes).await;
}

/// Frames a client sends while its node is closing the connection (1012) are still relayed:
/// they carry no number, so the client could not tell they were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_crossing_a_drain_close_are_relayed() {
    let redis = Redis::start().await;
    let mut nodes = pair(&redis, Duration::from_secs(3)).await;
    let (mut carol, _) = welcomed(&nodes[0].ws("carol")).await;
    let mut bob = nodes[1].connect("bob").await;
    let mut draining = nodes.remove(0);
    draining.begin_shutdown();
    for i in 0..5 {
        carol.send_json(&msg("bob", i)).await;
    }
    let got = read_numbered(&mut bob, 5).await;
    assert_eq!(
        got.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(carol.expect_close().await, 1012);
    draining.join().await.unwrap();
    stop(nodes).await;
}
