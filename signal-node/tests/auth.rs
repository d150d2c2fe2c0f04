//! Upgrade authentication (tickets, dev-auth) and the HTTP endpoints of a node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use signal_proto::ticket::{unix_now, Ticket, TicketKey};
use signal_proto::{NodeId, UserId};
use testkit::WsClient;

const SECRET: &str = "cluster-secret";

fn ticket(key: &TicketKey, user: &str, node: &str, expires_at: u64) -> String {
    key.mint(&Ticket::new(
        UserId::new(user).unwrap(),
        NodeId::new(node).unwrap(),
        expires_at,
    ))
}

fn secured_node_config() -> signal_node::Config {
    let mut cfg = dev("node-1");
    cfg.secret = Some(SECRET.into());
    cfg.dev_auth = false;
    cfg
}

async fn secured_node() -> TestNode {
    TestNode::start(secured_node_config()).await
}

/// The refusal's status and JSON error text.
async fn refused(url: &str) -> (u16, String) {
    let http_url = url.replacen("ws://", "http://", 1);
    let resp = reqwest::Client::new()
        .get(&http_url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    let err = body["error"]
        .as_str()
        .expect("JSON {\"error\":..}")
        .to_owned();
    // A real WebSocket client sees the same refusal.
    let ws = WsClient::try_connect(url).await.err().expect("refused");
    assert_eq!(ws.status, Some(status));
    (status, err)
}

#[tokio::test]
async fn valid_ticket_connects() {
    let node = secured_node().await;
    let key = TicketKey::new(SECRET.as_bytes());
    let t = ticket(&key, "alice", "node-1", unix_now() + 60);
    let (mut c, w) = WsClient::connect_welcomed(&node.ws_token(&t)).await;
    assert_eq!(w["user"], "alice");
    assert_eq!(w["node"], "node-1");
    roundtrip(&mut c).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_tickets_are_401_before_the_upgrade() {
    let node = secured_node().await;
    let key = TicketKey::new(SECRET.as_bytes());
    let other_node = ticket(&key, "alice", "node-2", unix_now() + 60);
    let expired = ticket(&key, "alice", "node-1", unix_now() - 1);
    let forged = ticket(
        &TicketKey::new(b"wrong"),
        "alice",
        "node-1",
        unix_now() + 60,
    );
    for (url, why) in [
        (node.ws_token(&other_node), "node"),
        (node.ws_token(&expired), "expired"),
        (node.ws_token(&forged), "signature"),
        (node.ws_token("garbage"), "malformed"),
        (format!("ws://{}/ws", node.http), "missing"),
        (node.ws("alice"), "dev-auth"),
    ] {
        let (status, err) = refused(&url).await;
        assert_eq!(status, 401, "{why}: {err}");
        assert!(err.contains(why), "{why}: {err}");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_ticket_is_single_use_and_the_first_connection_is_untouched() {
    let node = secured_node().await;
    let key = TicketKey::new(SECRET.as_bytes());
    let t = ticket(&key, "alice", "node-1", unix_now() + 60);
    let (mut first, _) = WsClient::connect_welcomed(&node.ws_token(&t)).await;
    let (status, err) = refused(&node.ws_token(&t)).await;
    assert_eq!(status, 401, "{err}");
    assert!(err.contains("already used"), "{err}");
    // The replay did not replace the first connection.
    roundtrip(&mut first).await;
    // A fresh ticket for the same user, minted in the same second, is another ticket.
    let t2 = ticket(&key, "alice", "node-1", unix_now() + 60);
    assert_ne!(t, t2);
    let (mut second, _) = WsClient::connect_welcomed(&node.ws_token(&t2)).await;
    assert_eq!(first.expect_close().await, 4409);
    roundtrip(&mut second).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_used_ticket_set_refuses_new_tickets_with_503() {
    let mut cfg = dev("node-1");
    cfg.secret = Some(SECRET.into());
    cfg.dev_auth = false;
    cfg.max_used_tickets = 1;
    let node = TestNode::start(cfg).await;
    let key = TicketKey::new(SECRET.as_bytes());
    let a = ticket(&key, "alice", "node-1", unix_now() + 60);
    let (_alice, _) = WsClient::connect_welcomed(&node.ws_token(&a)).await;
    let b = ticket(&key, "bob", "node-1", unix_now() + 60);
    let (status, err) = refused(&node.ws_token(&b)).await;
    assert_eq!(status, 503, "{err}");
    assert!(err.contains("--max-used-tickets"), "{err}");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let node = TestNode::start(dev("n1")).await;
    let (s, body) = get_json(&node.url("/healthz")).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get_json(&node.url("/readyz")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["directory"]["backend"], "memory");
    assert_eq!(body["directory"]["healthy"], true);
    assert_eq!(body["central"]["configured"], false);
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.send_json(&offer("bob", "s")).await;
    bob.next_json().await;
    alice.send_json(&offer("nobody", "s")).await;
    alice.next_json().await;
    let text = metrics_text(&node).await;
    for name in [
        "signal_connections",
        "signal_messages_relayed_total",
        "signal_errors_total",
        "signal_relay_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains(r#"error_type="OFFLINE""#), "{text}");
    assert!(text.contains(r#"route="local""#), "{text}");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn central_down_means_not_ready_but_serving() {
    let mut cfg = dev("n1");
    // Nothing listens there: registration keeps retrying in the background.
    cfg.central = Some(format!("http://127.0.0.1:{}", testkit::free_port()));
    let node = TestNode::start(cfg).await;
    let (s, body) = get_json(&node.url("/readyz")).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["central"]["registered"], false);
    testkit::wait_until(
        "central error in /readyz",
        Duration::from_secs(5),
        || async {
            let (_, body) = get_json(&node.url("/readyz")).await;
            body["central"]["lastError"].is_string()
        },
    )
    .await;
    // Still serving.
    let mut alice = node.connect("alice").await;
    roundtrip(&mut alice).await;
    let (s, _) = get_json(&node.url("/healthz")).await;
    assert_eq!(s, 200);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn draining_node_is_not_ready_and_refuses_upgrades_503() {
    let mut cfg = dev("n1");
    cfg.drain = Duration::from_secs(3);
    let mut node = TestNode::start(cfg).await;
    let mut alice = node.connect("alice").await;
    let _bob = node.connect("bob").await;
    node.begin_shutdown();
    testkit::wait_until("readyz 503", Duration::from_secs(5), || async {
        get_json(&node.url("/readyz")).await.0 == 503
    })
    .await;
    let (_, body) = get_json(&node.url("/readyz")).await;
    assert_eq!(body["draining"], true);
    let err = WsClient::try_connect(&node.ws("carol"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.status, Some(503));
    assert_eq!(alice.expect_close().await, 1012);
    node.join().await.unwrap();
}

/// A WebSocket upgrade with this `Origin` (none: no header): the node's Welcome, or the
/// refusal's status and JSON error text.
async fn connect_from(url: &str, origin: Option<&str>) -> Result<serde_json::Value, (u16, String)> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::{Error, Message};

    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a frame within 10 s");
            match first {
                Some(Ok(Message::Text(t))) => Ok(serde_json::from_str(t.as_str()).unwrap()),
                other => panic!("expected the Welcome, got {other:?}"),
            }
        }
        Err(Error::Http(resp)) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                    .expect("a JSON body");
            let err = body["error"].as_str().expect("{\"error\":..}").to_owned();
            Err((resp.status().as_u16(), err))
        }
        Err(e) => panic!("connect {url}: {e}"),
    }
}

#[tokio::test]
async fn disallowed_origin_is_403_before_the_upgrade() {
    let mut cfg = secured_node_config();
    cfg.allowed_origins = "https://app.example, http://localhost:3000"
        .parse()
        .unwrap();
    let node = TestNode::start(cfg).await;
    let key = TicketKey::new(SECRET.as_bytes());

    // A page from a foreign origin: 403 with a JSON error, and its ticket is not spent.
    let t = ticket(&key, "alice", "node-1", unix_now() + 60);
    for bad in ["https://evil.example", "https://app.example.evil", "null"] {
        let (status, err) = connect_from(&node.ws_token(&t), Some(bad))
            .await
            .expect_err(bad);
        assert_eq!(status, 403, "{bad}: {err}");
        assert!(
            err.contains("origin") && err.contains("not allowed"),
            "{err}"
        );
    }
    // An allowed origin (any case, default port spelled out or not) connects.
    let w = connect_from(&node.ws_token(&t), Some("https://APP.example"))
        .await
        .unwrap();
    assert_eq!(w["type"], "Welcome");
    assert_eq!(w["user"], "alice");
    let t = ticket(&key, "bob", "node-1", unix_now() + 60);
    let w = connect_from(&node.ws_token(&t), Some("http://localhost:3000"))
        .await
        .unwrap();
    assert_eq!(w["user"], "bob");
    // No Origin header: not a browser, not subject to the check.
    let t = ticket(&key, "carol", "node-1", unix_now() + 60);
    let w = connect_from(&node.ws_token(&t), None).await.unwrap();
    assert_eq!(w["user"], "carol");
    let metrics = metrics_text(&node).await;
    assert!(metrics.contains("signal_origin_refused_total"), "{metrics}");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn any_origin_by_default() {
    let node = secured_node().await;
    let key = TicketKey::new(SECRET.as_bytes());
    let t = ticket(&key, "alice", "node-1", unix_now() + 60);
    let w = connect_from(&node.ws_token(&t), Some("https://anywhere.example"))
        .await
        .unwrap();
    assert_eq!(w["user"], "alice");
    node.shutdown().await.unwrap();
}
