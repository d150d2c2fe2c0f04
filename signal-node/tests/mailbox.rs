//! Chat messages and the offline mailbox (contract section 6) on real nodes (in-process, real
//! gRPC on loopback) sharing a real redis-server: offline delivery across nodes, ack before
//! delete with `Delivered`, redelivery to the next session, order of several senders mixed
//! stored/live, dedupe, quota, TTL, Redis down, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use signal_node::mailbox::MailboxStore;
use signal_node::{Config, DirectoryConfig};
use testkit::{Redis, WsClient};

fn cfg(redis: &Redis, id: &str) -> Config {
    let mut c = dev(id);
    c.directory = DirectoryConfig::Redis(redis.url().into());
    c.rate_limit = 0;
    c
}

async fn pair_with(redis: &Redis, tune: impl Fn(&mut Config)) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut c = cfg(redis, id);
        tune(&mut c);
        nodes.push(TestNode::start(c).await);
    }
    nodes
}

async fn stop(nodes: Vec<TestNode>) {
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

fn chat(to: &str, id: &str, body: &str) -> Value {
    json!({"type":"Message","to":to,"id":id,"body":body})
}

/// The next frame, which must be of type `ty`.
async fn expect(c: &mut WsClient, ty: &str) -> Value {
    let v = c.next_json().await;
    assert_eq!(v["type"], ty, "expected {ty}, got {v}");
    v
}

/// Sends a message and returns its Accepted.
async fn send_accepted(c: &mut WsClient, to: &str, id: &str) -> Value {
    c.send_json(&chat(to, id, &format!("body of {id}"))).await;
    let a = loop {
        let v = c.next_json().await;
        if v["type"] != "Delivered" {
            break v;
        }
    };
    assert_eq!(a["type"], "Accepted", "{a}");
    assert_eq!(
        (a["id"].as_str(), a["to"].as_str()),
        (Some(id), Some(to)),
        "{a}"
    );
    assert!(a["ts"].as_u64().is_some(), "{a}");
    a
}

async fn ack(c: &mut WsClient, n: u64) {
    c.send_json(&json!({"type":"Ack","n":n})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_delivery_across_nodes_ack_and_delivered() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |_| {}).await;
    let mut alice = nodes[0].connect("alice").await;
    for i in 1..=3 {
        let a = send_accepted(&mut alice, "bob", &format!("m-{i}")).await;
        assert_eq!(a["stored"], true, "bob is offline: {a}");
    }
    // bob logs in on the other node: the stored messages follow the Welcome, in order.
    let mut bob = nodes[1].connect("bob").await;
    let mut last = 0;
    for i in 1..=3 {
        let m = expect(&mut bob, "Message").await;
        assert_eq!(m["from"], "alice");
        assert_eq!(m["to"], "bob");
        assert_eq!(m["id"], format!("m-{i}"));
        assert_eq!(m["body"], format!("body of m-{i}"));
        assert_eq!(m["delayed"], true);
        assert!(m["ts"].as_u64().is_some());
        last = m["n"].as_u64().unwrap();
    }
    ack(&mut bob, last).await;
    let mut delivered = Vec::new();
    for _ in 0..3 {
        let d = expect(&mut alice, "Delivered").await;
        assert_eq!(d["from"], "bob");
        delivered.push(d["id"].as_str().unwrap().to_owned());
    }
    delivered.sort();
    assert_eq!(delivered, ["m-1", "m-2", "m-3"]);
    // Acknowledged: gone from the mailbox. A new session gets only what is sent later.
    bob.close().await;
    let mut bob = nodes[1].connect("bob").await;
    send_accepted(&mut alice, "bob", "m-4").await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(m["id"], "m-4", "{m} (acked messages must not come again)");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_go_to_the_next_session() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |_| {}).await;
    let mut alice = nodes[0].connect("alice").await;
    send_accepted(&mut alice, "bob", "x-1").await;
    send_accepted(&mut alice, "bob", "x-2").await;
    let mut bob = nodes[1].connect("bob").await;
    let first = expect(&mut bob, "Message").await;
    assert_eq!(first["id"], "x-1");
    // Acknowledge only the first, then end the session.
    ack(&mut bob, first["n"].as_u64().unwrap()).await;
    let d = expect(&mut alice, "Delivered").await;
    assert_eq!(d["id"], "x-1");
    assert_eq!(expect(&mut bob, "Message").await["id"], "x-2");
    bob.close().await;
    // The next session (on the other node) gets x-2 again, and not x-1.
    let mut bob = nodes[0].connect("bob").await;
    let again = expect(&mut bob, "Message").await;
    assert_eq!(again["id"], "x-2");
    assert_eq!(again["delayed"], true);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_of_several_senders_mixed_stored_and_live() {
    const SENDERS: usize = 5;
    const EACH: usize = 100;
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |_| {}).await;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        senders.push(nodes[s % 2].connect(&format!("s{s}")).await);
    }
    // The first half is stored while bob is offline.
    for i in 0..EACH / 2 {
        for (s, c) in senders.iter_mut().enumerate() {
            let a = send_accepted(c, "bob", &format!("{s}-{i}")).await;
            assert_eq!(a["stored"], true);
        }
    }
    let mut bob = nodes[1].connect("bob").await;
    // The second half is sent while the stored ones are being pushed.
    let send = tokio::spawn(async move {
        for i in EACH / 2..EACH {
            for (s, c) in senders.iter_mut().enumerate() {
                send_accepted(c, "bob", &format!("{s}-{i}")).await;
            }
        }
        senders
    });
    let mut seen = HashSet::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut last_n = 0;
    while seen.len() < SENDERS * EACH {
        let m = expect(&mut bob, "Message").await;
        let n = m["n"].as_u64().unwrap();
        assert!(n > last_n, "numbers increase: {m}");
        last_n = n;
        let from = m["from"].as_str().unwrap().to_owned();
        let id = m["id"].as_str().unwrap().to_owned();
        assert!(
            seen.insert((from.clone(), id.clone())),
            "delivered once within the session: {m}"
        );
        let i: usize = id.split('-').nth(1).unwrap().parse().unwrap();
        let want = next.entry(from.clone()).or_insert(0);
        assert_eq!(i, *want, "messages from {from} in the order sent: got {id}");
        *want += 1;
        if n % 25 == 0 {
            ack(&mut bob, n).await;
        }
    }
    let _senders = send.await.unwrap();
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_is_stored_and_delivered_once() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |_| {}).await;
    let mut alice = nodes[0].connect("alice").await;
    let first = send_accepted(&mut alice, "bob", "dup").await;
    let again = send_accepted(&mut alice, "bob", "dup").await;
    assert_eq!(first["ts"], again["ts"], "a retry gets the first ts");
    send_accepted(&mut alice, "bob", "after").await;
    let mut bob = nodes[1].connect("bob").await;
    assert_eq!(expect(&mut bob, "Message").await["id"], "dup");
    assert_eq!(expect(&mut bob, "Message").await["id"], "after");
    // The same id from another sender is another message.
    let mut carol = nodes[1].connect("carol").await;
    send_accepted(&mut carol, "bob", "dup").await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(
        (m["from"].as_str(), m["id"].as_str()),
        (Some("carol"), Some("dup"))
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_answers_mailboxfull() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| c.mailbox.store.max_messages = 3).await;
    let mut alice = nodes[0].connect("alice").await;
    for i in 0..3 {
        send_accepted(&mut alice, "bob", &format!("q{i}")).await;
    }
    alice.send_json(&chat("bob", "q3", "one too many")).await;
    let e = expect(&mut alice, "Error").await;
    assert_eq!(e["errorType"], "MAILBOXFULL", "{e}");
    assert_eq!(
        (e["id"].as_str(), e["from"].as_str()),
        (Some("q3"), Some("bob"))
    );
    assert_eq!(e["origin"], "server");
    assert!(e.get("sessionID").is_none(), "{e}");
    // Nothing of q3 was stored: bob gets exactly q0..q2.
    let mut bob = nodes[1].connect("bob").await;
    let mut last = 0;
    for i in 0..3 {
        let m = expect(&mut bob, "Message").await;
        assert_eq!(m["id"], format!("q{i}"));
        last = m["n"].as_u64().unwrap();
    }
    ack(&mut bob, last).await;
    for _ in 0..3 {
        expect(&mut alice, "Delivered").await;
    }
    // Room again: the retry of q3 is accepted.
    let a = send_accepted(&mut alice, "bob", "q3").await;
    assert!(a["ts"].as_u64().is_some());
    assert_eq!(expect(&mut bob, "Message").await["id"], "q3");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dropped() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| {
        c.mailbox.store.ttl = Duration::from_millis(1000)
    })
    .await;
    let mut alice = nodes[0].connect("alice").await;
    send_accepted(&mut alice, "bob", "old").await;
    // Past the TTL (time itself is what is tested here).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The dedupe marker expired too: the same id is a new message.
    let mut bob = nodes[1].connect("bob").await;
    let a = send_accepted(&mut alice, "bob", "old").await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(m["id"], "old");
    assert_eq!(
        m["ts"], a["ts"],
        "the expired one is gone; this is the new one: {m}"
    );
    let metrics = metrics_text(&nodes[0]).await;
    assert!(
        metrics.contains("signal_mailbox_expired_total"),
        "expiry is counted in /metrics"
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_unavailable_then_recovers() {
    let mut redis = Redis::start().await;
    let nodes = pair_with(&redis, |_| {}).await;
    let mut alice = nodes[0].connect("alice").await;
    send_accepted(&mut alice, "bob", "r-1").await;
    redis.kill();
    alice.send_json(&chat("bob", "r-2", "while down")).await;
    let e = expect(&mut alice, "Error").await;
    assert_eq!(e["errorType"], "UNAVAILABLE", "{e}");
    assert_eq!(e["id"], "r-2");
    redis.restart().await;
    // A retry is safe once Redis is back (the connection manager reconnects).
    let mut accepted = None;
    for _ in 0..100 {
        alice.send_json(&chat("bob", "r-2", "retried")).await;
        let v = alice.next_json().await;
        if v["type"] == "Accepted" {
            accepted = Some(v);
            break;
        }
        assert_eq!(v["errorType"], "UNAVAILABLE", "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await; // retry backoff, not sync
    }
    assert!(accepted.is_some(), "Accepted after the restart");
    // The other node's directory connection may need a retry of its own (503 until then).
    let mut bob = None;
    for _ in 0..100 {
        if let Ok(c) = WsClient::try_connect(&nodes[1].ws("bob")).await {
            bob = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // retry backoff, not sync
    }
    let mut bob = bob.expect("bob connects once Redis is back");
    expect(&mut bob, "Welcome").await;
    // The test's redis-server has no persistence: r-1 went with the kill; r-2 comes once.
    let m = expect(&mut bob, "Message").await;
    assert_eq!(
        (m["id"].as_str(), m["body"].as_str()),
        (Some("r-2"), Some("retried"))
    );
    alice.send_json(&chat("bob", "r-3", "after")).await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(m["id"], "r-3", "r-2 is not delivered twice: {m}");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_stored() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| c.mailbox.max_body_bytes = 16).await;
    let mut alice = nodes[0].connect("alice").await;
    let long = "x".repeat(65);
    let cases = [
        (
            json!({"type":"Message","to":"bob","body":"no id"}),
            "BADMESSAGE",
            None,
        ),
        (
            json!({"type":"Message","to":"bob","id":long,"body":"x"}),
            "BADMESSAGE",
            None,
        ),
        (
            json!({"type":"Message","to":"bob","id":"a b","body":"x"}),
            "BADMESSAGE",
            None,
        ),
        (
            json!({"type":"Message","to":"bob","id":"b1","body":5}),
            "BADMESSAGE",
            Some("b1"),
        ),
        (
            json!({"type":"Message","to":"bob","id":"b2","body":"x".repeat(17)}),
            "TOOLARGE",
            Some("b2"),
        ),
        (
            json!({"type":"Message","to":"bob","room":"r","id":"b3","body":"x"}),
            "BADMESSAGE",
            Some("b3"),
        ),
        (
            json!({"type":"Message","id":"b4","body":"x"}),
            "BADMESSAGE",
            Some("b4"),
        ),
        (
            json!({"type":"Message","to":"a b","id":"b5","body":"x"}),
            "BADMESSAGE",
            Some("b5"),
        ),
        (
            json!({"type":"Message","to":"bob","from":"mallory","id":"b6","body":"x"}),
            "FORBIDDEN",
            Some("b6"),
        ),
        (
            json!({"type":"Message","room":"r","id":"b7","body":"x"}),
            "NOTMEMBER",
            Some("b7"),
        ),
    ];
    for (frame, err, id) in &cases {
        alice.send_json(frame).await;
        let e = expect(&mut alice, "Error").await;
        assert_eq!(e["errorType"], *err, "{frame} -> {e}");
        assert_eq!(e["origin"], "server");
        assert!(e.get("sessionID").is_none(), "{e}");
        if let Some(id) = id {
            assert_eq!(e["id"], *id, "{frame} -> {e}");
        }
    }
    // The connection is kept, and the next good message goes through.
    send_accepted(&mut alice, "bob", "good").await;
    let mut bob = nodes[1].connect("bob").await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(m["id"], "good", "nothing of the bad ones was stored: {m}");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_in_dev_mode() {
    // One node, memory directory and memory mailbox.
    let node = TestNode::start(dev("solo")).await;
    let mut alice = node.connect("alice").await;
    let a = send_accepted(&mut alice, "bob", "mem-1").await;
    assert_eq!(a["stored"], true);
    let again = send_accepted(&mut alice, "bob", "mem-1").await;
    assert_eq!(again["ts"], a["ts"]);
    let mut bob = node.connect("bob").await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(
        (m["id"].as_str(), m["delayed"].as_bool()),
        (Some("mem-1"), Some(true))
    );
    ack(&mut bob, m["n"].as_u64().unwrap()).await;
    assert_eq!(expect(&mut alice, "Delivered").await["id"], "mem-1");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_mailbox_is_pushed_within_the_outbound_bound() {
    // 300 stored messages, an outbound bound of 16 frames: the push waits for the writer
    // instead of closing the slow reader with 1013.
    const COUNT: usize = 300;
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| c.outbound_queue = 16).await;
    let mut alice = nodes[0].connect("alice").await;
    for i in 0..COUNT {
        alice
            .send_json(&chat("bob", &format!("big-{i}"), "x"))
            .await;
    }
    for _ in 0..COUNT {
        assert_eq!(alice.next_json().await["type"], "Accepted");
    }
    let mut bob = nodes[1].connect("bob").await;
    for i in 0..COUNT {
        match bob.recv().await {
            testkit::Received::Json(m) => {
                assert_eq!(m["id"], format!("big-{i}"), "{m}");
                if i % 50 == 49 {
                    ack(&mut bob, m["n"].as_u64().unwrap()).await;
                }
            }
            other => panic!("bob's connection ended after {i} messages: {other:?}"),
        }
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cut_short_continues_after_a_resume() {
    const COUNT: usize = 200;
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| {
        c.outbound_queue = 16;
        c.resume_window = Duration::from_secs(10);
    })
    .await;
    let mut alice = nodes[0].connect("alice").await;
    for i in 0..COUNT {
        alice.send_json(&chat("bob", &format!("c-{i}"), "x")).await;
    }
    for _ in 0..COUNT {
        assert_eq!(alice.next_json().await["type"], "Accepted");
    }
    let (mut bob, w) = WsClient::connect_welcomed(&nodes[1].ws("bob")).await;
    let token = w["session"].as_str().unwrap().to_owned();
    let mut last = 0;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let m = expect(&mut bob, "Message").await;
        last = m["n"].as_u64().unwrap();
        seen.push(m["id"].as_str().unwrap().to_owned());
    }
    // The network goes away (no close frame): the session is kept, its push cut short.
    drop(bob);
    let url = format!(
        "ws://{}/ws?user=bob&resume={token}&last={last}",
        nodes[1].http
    );
    let (mut bob, w) = WsClient::connect_welcomed(&url).await;
    assert_eq!(w["resumed"], true, "{w}");
    while seen.len() < COUNT {
        let m = expect(&mut bob, "Message").await;
        let id = m["id"].as_str().unwrap().to_owned();
        assert!(!seen.contains(&id), "once within the session: {id}");
        let i: usize = id.trim_start_matches("c-").parse().unwrap();
        assert_eq!(i, seen.len(), "in order: {id} after {}", seen.len());
        seen.push(id);
    }
    stop(nodes).await;
}

/// A resume's `last` acknowledges the chat frames up to it (contract section 5): they leave
/// the mailbox and their sender gets `Delivered`, on the same node and on another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_acknowledges_the_messages_up_to_last() {
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| c.resume_window = Duration::from_secs(10)).await;
    let mut alice = nodes[0].connect("alice").await;
    for (i, node) in [(0usize, 1usize), (1, 0)] {
        // bob on node b; the second time he resumes from node a (a takeover).
        let (mut bob, w) = WsClient::connect_welcomed(&nodes[1].ws("bob")).await;
        let token = w["session"].as_str().unwrap().to_owned();
        let ids = [format!("r{i}-1"), format!("r{i}-2")];
        for id in &ids {
            send_accepted(&mut alice, "bob", id).await;
        }
        let mut last = 0;
        for id in &ids {
            let m = expect(&mut bob, "Message").await;
            assert_eq!(m["id"], id.as_str());
            last = m["n"].as_u64().unwrap();
        }
        // No Ack: the connection is lost, then resumed with `last` = the second message.
        drop(bob);
        let url = format!(
            "ws://{}/ws?user=bob&resume={token}&last={last}",
            nodes[node].http
        );
        let (bob, w) = WsClient::connect_welcomed(&url).await;
        assert_eq!(w["resumed"], true, "{w}");
        let mut delivered = HashSet::new();
        while delivered.len() < 2 {
            let d = expect(&mut alice, "Delivered").await;
            assert_eq!(d["from"], "bob");
            delivered.insert(d["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(delivered, ids.iter().cloned().collect());
        bob.close().await;
    }
    // They left the mailbox: a fresh session gets nothing stored.
    let mut bob = nodes[1].connect("bob").await;
    send_accepted(&mut alice, "bob", "marker").await;
    let m = expect(&mut bob, "Message").await;
    assert_eq!(m["id"], "marker", "nothing from the mailbox before it: {m}");
    stop(nodes).await;
}

#[tokio::test]
async fn a_rate_limited_message_is_answered_with_its_id() {
    let mut c = dev("n1");
    c.rate_limit = 5;
    c.rate_burst = 10;
    let node = TestNode::start(c).await;
    let mut alice = node.connect("alice").await;
    for i in 0..30 {
        alice.send_json(&chat("bob", &format!("r{i}"), "hi")).await;
    }
    // Every message is answered, Accepted or RATELIMITED, and each answer names its message.
    let mut answered = HashSet::new();
    let mut limited = 0;
    while answered.len() < 30 {
        let v = alice.next_json().await;
        match v["type"].as_str() {
            Some("Accepted") => {}
            Some("Error") => {
                assert_eq!(v["errorType"], "RATELIMITED", "{v}");
                assert_eq!(v["origin"], "server", "{v}");
                assert_eq!(v["from"], "bob", "{v}");
                assert!(v.get("sessionID").is_none(), "{v}");
                limited += 1;
            }
            _ => panic!("unexpected {v}"),
        }
        let id = v["id"].as_str().expect("an id").to_owned();
        assert!(answered.insert(id), "one answer per message: {v}");
    }
    assert!(limited >= 15, "limited {limited}");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pipelined_messages_is_answered_and_delivered_in_order() {
    // One sender writes without waiting for answers (the node stores several at once): the
    // answers (Accepted, or an Error naming the id) come in the order sent, each recipient
    // gets its messages in the order sent (live and stored), a retried id is answered with
    // the first ts and delivered once.
    const N: usize = 90;
    let redis = Redis::start().await;
    let nodes = pair_with(&redis, |c| c.mailbox.inflight = 8).await;
    let mut alice = nodes[0].connect("alice").await;
    let mut bob = nodes[1].connect("bob").await;
    let mut sent: Vec<(String, &str)> = Vec::new();
    for i in 0..N {
        let (to, id) = (["bob", "carol", "dave"][i % 3], format!("p-{i}"));
        let body = if i == 40 {
            "x".repeat(5000)
        } else {
            format!("b{i}")
        };
        alice.send_json(&chat(to, &id, &body)).await;
        sent.push((id, to));
        if i == 50 {
            // A retry of an earlier id, in the middle of the burst.
            alice.send_json(&chat("bob", "p-3", "b3")).await;
            sent.push(("p-3".into(), "bob"));
        }
    }
    let mut first_ts = HashMap::new();
    for (id, to) in &sent {
        let v = loop {
            let v = alice.next_json().await;
            if v["type"] != "Delivered" {
                break v;
            }
        };
        assert_eq!(
            v["id"].as_str(),
            Some(id.as_str()),
            "answers in the order sent: {v}"
        );
        if id == "p-40" {
            assert_eq!(v["type"], "Error", "{v}");
            assert_eq!(v["errorType"], "TOOLARGE", "{v}");
            continue;
        }
        assert_eq!(v["type"], "Accepted", "{v}");
        assert_eq!(v["to"].as_str(), Some(*to), "{v}");
        let ts = v["ts"].as_u64().unwrap();
        if let Some(first) = first_ts.insert(id.clone(), ts) {
            assert_eq!(ts, first, "a retried id keeps its first ts: {v}");
        }
    }
    let want = |who: &str| -> Vec<String> {
        let mut seen = HashSet::new();
        sent.iter()
            .filter(|(id, to)| *to == who && id != "p-40" && seen.insert(id.clone()))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let mut got = Vec::new();
    while got.len() < want("bob").len() {
        let m = expect(&mut bob, "Message").await;
        got.push(m["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        got,
        want("bob"),
        "bob's live messages in the order sent, once each"
    );
    for (who, node) in [("carol", 0), ("dave", 1)] {
        let mut c = nodes[node].connect(who).await;
        let mut got = Vec::new();
        while got.len() < want(who).len() {
            let m = expect(&mut c, "Message").await;
            assert_eq!(m["delayed"], true, "{m}");
            got.push(m["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(got, want(who), "{who}'s stored messages in the order sent");
    }
    stop(nodes).await;
}

/// The node's batcher stores several recipients' messages in one store call: each recipient's
/// messages keep their order and each message gets its own answer (stored, duplicate of an
/// earlier one or of one earlier in the same batch, full once the quota is reached).
async fn batched_appends_keep_order_and_per_message_answers(store: MailboxStore) {
    use signal_node::mailbox::{Appended, MailboxError, NewMessage, StoreLimits};
    use signal_proto::{MessageId, UserId};
    let limits = StoreLimits {
        max_messages: 3,
        ttl: Duration::from_secs(60),
    };
    let u = |s: &str| UserId::new(s).unwrap();
    let m = |s: &str| MessageId::new(s).unwrap();
    let (alice, bob, carol, dave) = (u("alice"), u("bob"), u("carol"), u("dave"));
    let (m1, m2, m3, m4, x, y) = (m("m1"), m("m2"), m("m3"), m("m4"), m("x"), m("y"));
    let first = store
        .append(&dave, &alice, &x, "dave-x", 7, limits)
        .await
        .unwrap();
    assert!(matches!(first, Appended::Stored(_)));
    let msg = |sender, id, frame, ts| NewMessage {
        sender,
        id,
        frame,
        ts,
    };
    let to_bob = [
        msg(&alice, &m1, "bob-a1", 10),
        msg(&carol, &m1, "bob-c1", 11),
        msg(&alice, &m2, "bob-a2", 12),
        msg(&alice, &m3, "bob-a3", 13),
        msg(&alice, &m1, "bob-a1-again", 14),
        msg(&alice, &m4, "bob-a4", 15),
    ];
    let to_carol = [
        msg(&alice, &m1, "carol-a1", 20),
        msg(&alice, &m1, "carol-a1", 21),
    ];
    let to_dave = [
        msg(&alice, &x, "dave-x-again", 30),
        msg(&bob, &y, "dave-y", 31),
    ];
    let answers = store
        .append_groups(
            &[(&bob, &to_bob), (&carol, &to_carol), (&dave, &to_dave)],
            limits,
        )
        .await;
    assert_eq!(answers.len(), 3);
    let bob_a: Vec<_> = answers[0].clone().unwrap();
    assert!(matches!(bob_a[0], Ok(Appended::Stored(_))), "{bob_a:?}");
    assert!(matches!(bob_a[1], Ok(Appended::Stored(_))), "{bob_a:?}");
    assert!(matches!(bob_a[2], Ok(Appended::Stored(_))), "{bob_a:?}");
    assert_eq!(bob_a[3], Err(MailboxError::Full), "quota of 3");
    assert_eq!(
        bob_a[4],
        Ok(Appended::Duplicate { ts: 10 }),
        "dedupe before quota"
    );
    assert_eq!(bob_a[5], Err(MailboxError::Full));
    let carol_a = answers[1].clone().unwrap();
    assert!(matches!(carol_a[0], Ok(Appended::Stored(_))), "{carol_a:?}");
    assert_eq!(carol_a[1], Ok(Appended::Duplicate { ts: 20 }));
    let dave_a = answers[2].clone().unwrap();
    assert_eq!(dave_a[0], Ok(Appended::Duplicate { ts: 7 }));
    assert!(matches!(dave_a[1], Ok(Appended::Stored(_))), "{dave_a:?}");

    let frames = |user: UserId| {
        let store = store.clone();
        async move {
            let page = store.page(&user, None, 10, limits).await.unwrap();
            let entries: Vec<_> = page.iter().map(|p| p.entry).collect();
            let mut sorted = entries.clone();
            sorted.sort();
            assert_eq!(entries, sorted, "entry ids grow in append order");
            page.into_iter().map(|p| p.frame).collect::<Vec<_>>()
        }
    };
    assert_eq!(frames(bob.clone()).await, ["bob-a1", "bob-c1", "bob-a2"]);
    assert_eq!(frames(carol.clone()).await, ["carol-a1"]);
    assert_eq!(frames(dave.clone()).await, ["dave-x", "dave-y"]);
}

#[tokio::test]
async fn batched_appends_in_redis() {
    let redis = Redis::start().await;
    let store = MailboxStore::redis(redis.url().as_str()).unwrap();
    batched_appends_keep_order_and_per_message_answers(store).await;
}

#[tokio::test]
async fn batched_appends_in_memory() {
    batched_appends_keep_order_and_per_message_answers(MailboxStore::memory()).await;
}
