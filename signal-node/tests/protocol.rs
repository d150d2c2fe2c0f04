//! The WebSocket protocol on one real node: Welcome, relay of every ROAP type, Ping/Pong and
//! every row of the contract's error table, replacement (4409), order, idle timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::{Received, WsClient};

#[tokio::test]
async fn welcome_then_every_roap_type_relayed_with_extra_fields() {
    let node = TestNode::start(dev("n1")).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    for m in every_type("bob") {
        alice.send_json(&m).await;
        assert_eq!(strip_n(bob.next_json().await), as_relayed(&m, "alice"));
    }
    // `from` given and correct is accepted too.
    let mut m = offer("alice", "s2");
    m["from"] = json!("bob");
    bob.send_json(&m).await;
    assert_eq!(strip_n(alice.next_json().await), m);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn ping_pong_and_offline() {
    let node = TestNode::start(dev("n1")).await;
    let mut alice = node.connect("alice").await;
    alice.send_json(&json!({"type":"Ping"})).await;
    assert_eq!(strip_n(alice.next_json().await), json!({"type":"Pong"}));
    alice.send_json(&offer("nobody", "s7")).await;
    expect_server_error(&mut alice, "OFFLINE", Some("nobody"), Some("s7")).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_malformed_frame_is_badmessage_and_keeps_the_connection() {
    let node = TestNode::start(dev("n1")).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let deep = format!(
        r#"{{"type":"Ok","to":"bob","sessionID":"s","x":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    // (frame, peer and session the error must name)
    let cases: Vec<(String, Option<&str>, Option<&str>)> = vec![
        ("not json".into(), None, None),
        ("".into(), None, None),
        ("[1,2]".into(), None, None),
        ("\"Offer\"".into(), None, None),
        ("null".into(), None, None),
        (
            r#"{"to":"bob","sessionID":"s1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":5,"to":"bob","sessionID":"s1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"offer","to":"bob","sessionID":"s1","sdp":"x"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"OFFER","to":"bob","sessionID":"s1","sdp":"x"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Bogus","to":"bob","sessionID":"s1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Offer","to":"bob","sessionID":"s1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Offer","sessionID":"s1","sdp":"x"}"#.into(),
            None,
            Some("s1"),
        ),
        (
            r#"{"type":"Offer","to":"bob","sdp":"x"}"#.into(),
            Some("bob"),
            None,
        ),
        (
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":5}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"x","seq":-1}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Offer","to":"bob","sessionID":"s1","sdp":"x","tieBreaker":"1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Offer","to":"a b","sessionID":"s1","sdp":"x"}"#.into(),
            None,
            Some("s1"),
        ),
        (
            r#"{"type":"Ok","to":"bob","from":"a\u0001b","sessionID":"s1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Candidate","to":"bob","sessionID":"s1"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Candidate","to":"bob","sessionID":"s1","candidate":"x"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Error","to":"bob","sessionID":"s1","errorType":"nomatch"}"#.into(),
            Some("bob"),
            Some("s1"),
        ),
        (
            r#"{"type":"Error","to":"bob","errorType":"NOMATCH"}"#.into(),
            Some("bob"),
            None,
        ),
        (
            r#"{"type":"Welcome","user":"alice","node":"n1"}"#.into(),
            None,
            None,
        ),
        (r#"{"type":"Pong"}"#.into(), None, None),
        (deep, None, None),
    ];
    for (frame, peer, sid) in &cases {
        alice.send_text(frame).await;
        let e = expect_server_error(&mut alice, "BADMESSAGE", *peer, *sid).await;
        assert!(
            e["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{e}"
        );
        assert_eq!(e["to"], "alice");
    }
    alice.send_binary(b"{\"type\":\"Ping\"}".to_vec()).await;
    expect_server_error(&mut alice, "BADMESSAGE", None, None).await;
    // Still connected, nothing reached bob.
    roundtrip(&mut alice).await;
    alice.send_json(&offer("bob", "ok")).await;
    assert_eq!(bob.next_json().await["sessionID"], "ok");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn spoofed_from_is_forbidden_and_not_relayed() {
    let node = TestNode::start(dev("n1")).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut m = offer("bob", "s1");
    m["from"] = json!("mallory");
    alice.send_json(&m).await;
    expect_server_error(&mut alice, "FORBIDDEN", Some("bob"), Some("s1")).await;
    // The next message arrives first at bob: the forged one was dropped.
    alice.send_json(&offer("bob", "s2")).await;
    assert_eq!(bob.next_json().await["sessionID"], "s2");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn too_large_gets_toolarge_and_above_the_cap_closes_1009() {
    let mut cfg = dev("n1");
    cfg.max_message_bytes = 1024;
    let node = TestNode::start(cfg).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut big = offer("bob", "big");
    big["sdp"] = json!("x".repeat(2000));
    alice.send_json(&big).await;
    expect_server_error(&mut alice, "TOOLARGE", Some("bob"), Some("big")).await;
    roundtrip(&mut alice).await;
    // Exactly at the limit passes.
    let mut at = offer("bob", "at");
    let len = at.to_string().len();
    at["sdp"] = json!("x".repeat(1024 - len + 3));
    assert_eq!(at.to_string().len(), 1024);
    alice.send_json(&at).await;
    assert_eq!(bob.next_json().await["sessionID"], "at");
    // Above the hard cap (4x): closed with 1009.
    let mut huge = offer("bob", "huge");
    huge["sdp"] = json!("x".repeat(10_000));
    alice.send_json(&huge).await;
    assert_eq!(alice.expect_close().await, 1009);
    // Other connections are not disturbed.
    roundtrip(&mut bob).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limited_beyond_the_burst() {
    let mut cfg = dev("n1");
    cfg.rate_limit = 5;
    cfg.rate_burst = 10;
    let node = TestNode::start(cfg).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    for i in 0..40 {
        alice.send_json(&offer("bob", &format!("s{i}"))).await;
    }
    let mut limited = 0;
    while limited < 40 {
        match alice.recv_within(Duration::from_secs(2)).await {
            Some(Received::Json(v)) => {
                assert_eq!(v["errorType"], "RATELIMITED", "{v}");
                assert_eq!(v["origin"], "server");
                assert_eq!(v["from"], "bob");
                limited += 1;
            }
            None => break,
            other => panic!("{other:?}"),
        }
    }
    let mut delivered = 0;
    while let Some(Received::Json(v)) = bob.recv_within(Duration::from_millis(500)).await {
        assert_eq!(v["type"], "Offer");
        delivered += 1;
    }
    assert!(limited >= 20, "limited {limited}");
    assert_eq!(
        delivered + limited,
        40,
        "every message is delivered or answered"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn second_connection_replaces_the_first_with_4409() {
    let node = TestNode::start(dev("n1")).await;
    let mut old = node.connect("alice").await;
    let mut new = node.connect("alice").await;
    assert_eq!(old.expect_close().await, 4409);
    let mut bob = node.connect("bob").await;
    bob.send_json(&offer("alice", "s1")).await;
    assert_eq!(new.next_json().await["sessionID"], "s1");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_of_1000_messages_is_kept() {
    let mut cfg = dev("n1");
    cfg.rate_limit = 0;
    let node = TestNode::start(cfg).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let sender = tokio::spawn(async move {
        for i in 0..1000u64 {
            alice
                .send_json(&json!({"type":"Candidate","to":"bob","sessionID":"s","seq":i,"candidate":null}))
                .await;
        }
        alice
    });
    for i in 0..1000u64 {
        let v = bob.next_json().await;
        assert_eq!(v["seq"], i, "{v}");
    }
    let mut alice = sender.await.unwrap();
    roundtrip(&mut alice).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_connection_is_closed_live_one_kept() {
    let mut cfg = dev("n1");
    cfg.ping_interval = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_millis(400);
    let node = TestNode::start(cfg).await;
    let mut silent = node.connect("silent").await;
    let mut live = node.connect("live").await;
    // `live` reads (and so answers the server's pings) for well over the idle timeout.
    assert_eq!(live.recv_within(Duration::from_millis(1200)).await, None);
    roundtrip(&mut live).await;
    // `silent` never read: it did not answer pings and was closed.
    let code = silent.expect_close().await;
    assert!(code == 1000 || code == 1006, "code {code}");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_user_id_in_dev_mode_is_400() {
    let node = TestNode::start(dev("n1")).await;
    let err = WsClient::try_connect(&node.ws("a%20b"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status, Some(400));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_text_frame_gets_badmessage_then_1007() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let node = TestNode::start(dev("n1")).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    alice.ws.send(WsMessage::Frame(frame)).await.unwrap();
    expect_server_error(&mut alice, "BADMESSAGE", None, None).await;
    assert_eq!(alice.expect_close().await, 1007);
    roundtrip(&mut bob).await;
    node.shutdown().await.unwrap();
}
