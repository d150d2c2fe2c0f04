//! The server API (contract section 11) against real clusters: the in-process dev cluster
//! (memory directory) and real `central` + `signal-node` processes sharing a real Redis.
//! Auth (none, wrong, rotated keys, API disabled), a message to an offline user reaching them
//! at login and to an online user at once, dedupe of a retried id, the mailbox quota, users and
//! presence, and a disconnect: close 4403, the session gone, a resume refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use central::api::keys::ApiKeys;
use central::api::ApiConfig;
use central::dev::{DevCluster, DevOptions};
use common::{login, Central, Node, Timing};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::{wait_until, Received, WsClient};

const OLD_KEY: &str = "old-api-key-0123456789";
const NEW_KEY: &str = "new-api-key-0123456789";

/// One API call -> (status, JSON body or Null).
async fn call(
    method: Method,
    base: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
    };
    (status, v)
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    call(Method::GET, base, path, Some(NEW_KEY), None).await
}

async fn post_message(base: &str, msg: Value) -> (u16, Value) {
    call(Method::POST, base, "/v1/messages", Some(OLD_KEY), Some(msg)).await
}

/// Logs `user` in through central and connects it (`extra`: e.g. a resume query).
async fn connect(base: &str, user: &str, extra: &str) -> (WsClient, Value) {
    let (s, body) = login(base, Some(user), None).await;
    assert_eq!(s, 200, "{body}");
    let url = format!(
        "{}?token={}{extra}",
        body["url"].as_str().unwrap(),
        body["token"].as_str().unwrap()
    );
    let (ws, welcome) = WsClient::connect_welcomed(&url).await;
    assert_eq!(welcome["user"], user);
    (ws, welcome)
}

/// Next frame of type `ty` (skipping others, e.g. Presence), within 5 s.
async fn next_of(ws: &mut WsClient, ty: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv_within(left).await {
            Some(Received::Json(v)) if v["type"] == ty => return v,
            Some(Received::Json(_)) => continue,
            other => panic!("expected a {ty} frame, got {other:?}"),
        }
    }
}

/// Asserts no chat Message arrives within 300 ms.
async fn no_message(ws: &mut WsClient, what: &str) {
    let deadline = Instant::now() + Duration::from_millis(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv_within(left).await {
            None => return,
            Some(Received::Json(v)) if v["type"] == "Message" => panic!("{what}: got {v}"),
            Some(Received::Json(_)) => continue,
            Some(other) => panic!("{what}: connection ended: {other:?}"),
        }
    }
}

/// The part every cluster must pass.
async fn scenario(base: &str) {
    // Auth: none, wrong, both keys of a rotation.
    let (s, v) = call(Method::GET, base, "/v1/users/bob", None, None).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].is_string(), "{v}");
    let (s, _) = call(
        Method::GET,
        base,
        "/v1/users/bob",
        Some("wrong-key-0123456789"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = call(
        Method::POST,
        base,
        "/v1/messages",
        Some("wrong-key-0123456789"),
        Some(json!({"from":"system","to":"bob","id":"x","body":"no"})),
    )
    .await;
    assert_eq!(s, 401, "a refused call stores nothing");
    for key in [OLD_KEY, NEW_KEY] {
        let (s, v) = call(Method::GET, base, "/v1/users/bob", Some(key), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v, json!({"user":"bob","online":false,"node":null}));
    }

    // Offline recipient: stored, delivered at login (delayed); a retry is deduplicated.
    let m1 = json!({"from":"system","to":"bob","id":"m-1","body":"hello offline"});
    let (s, a) = post_message(base, m1.clone()).await;
    assert_eq!(s, 202, "{a}");
    assert_eq!(a["id"], "m-1");
    assert_eq!(a["stored"], true);
    let ts = a["ts"].as_u64().unwrap();
    assert!(ts > 0);
    let (s, again) = post_message(base, m1).await;
    assert_eq!(s, 202);
    assert_eq!(again["ts"], ts, "a retried id keeps its first ts");

    let (mut bob, welcome) = connect(base, "bob", "").await;
    let node = welcome["node"].as_str().unwrap().to_owned();
    let got = next_of(&mut bob, "Message").await;
    assert_eq!(got["from"], "system");
    assert_eq!(got["id"], "m-1");
    assert_eq!(got["body"], "hello offline");
    assert_eq!(got["delayed"], true);
    assert_eq!(got["ts"], ts);
    no_message(&mut bob, "the retried m-1 is not delivered twice").await;

    // Online recipient: pushed at once.
    let sent = Instant::now();
    let (s, a) = post_message(
        base,
        json!({"from":"system","to":"bob","id":"m-2","body":"hello online","contentType":"text/x-app"}),
    )
    .await;
    assert_eq!(s, 202, "{a}");
    assert_eq!(a["stored"], false, "{a}");
    let got = next_of(&mut bob, "Message").await;
    let latency = sent.elapsed();
    assert_eq!(got["id"], "m-2");
    assert_eq!(got["contentType"], "text/x-app");
    assert!(got.get("delayed").is_none(), "{got}");
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    let (s, again) = post_message(
        base,
        json!({"from":"system","to":"bob","id":"m-2","body":"hello online"}),
    )
    .await;
    assert_eq!((s, &again["ts"]), (202, &a["ts"]));
    no_message(&mut bob, "the retried m-2 is not delivered twice").await;

    // Bad requests.
    let (s, v) = post_message(
        base,
        json!({"from":"system","to":"bob","id":"has space","body":"x"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = post_message(base, json!({"from":"system","to":"bob","body":"x"})).await;
    assert_eq!(s, 400, "missing id: {v}");
    let (s, v) = post_message(
        base,
        json!({"from":"system","to":"bob","id":"big","body":"x".repeat(5000)}),
    )
    .await;
    assert_eq!(s, 413, "body above the nodes' --max-body-bytes: {v}");
    let (s, v) = post_message(
        base,
        json!({"from":"system","to":"bob","id":"huge","body":"x".repeat(70_000)}),
    )
    .await;
    assert_eq!(s, 413, "request above --api-max-body-bytes: {v}");
    assert!(v["error"].is_string(), "{v}");

    // Users and presence.
    let (s, v) = get(base, "/v1/users/bob").await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"user":"bob","online":true,"node":node}));
    let (s, v) = get(base, "/v1/users/a%20b").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = get(base, "/v1/presence?user=bob&user=nobody&user=bob").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["presence"][0]["state"], "online", "{v}");
    assert!(v["presence"][0]["since"].is_u64(), "{v}");
    assert_eq!(
        v["presence"][1],
        json!({"user":"nobody","state":"offline","note":null,"since":null}),
        "a user never seen"
    );
    assert_eq!(v["presence"].as_array().map(Vec::len), Some(2), "{v}");
    // What bob sets is what the backend reads (the presence store, not the directory).
    bob.send_json(&json!({"type":"SetPresence","state":"away","note":"in a meeting"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let bob_seen = loop {
        let (s, v) = get(base, "/v1/presence?user=bob").await;
        assert_eq!(s, 200, "{v}");
        if v["presence"][0]["state"] == "away" || Instant::now() > deadline {
            break v["presence"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(bob_seen["state"], "away", "{bob_seen}");
    assert_eq!(bob_seen["note"], "in a meeting", "{bob_seen}");
    bob.send_json(&json!({"type":"SetPresence","state":"invisible"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let bob_seen = loop {
        let (_, v) = get(base, "/v1/presence?user=bob").await;
        if v["presence"][0]["state"] == "offline" || Instant::now() > deadline {
            break v["presence"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&bob_seen["state"], &bob_seen["note"]),
        (&json!("offline"), &json!(null)),
        "invisible shows as offline: {bob_seen}"
    );
    let (s, v) = get(base, "/v1/presence").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = get(base, "/v1/presence?user=a&user=b&user=c&user=d").await;
    assert_eq!(s, 400, "above --api-max-presence-users 3: {v}");

    // Disconnect: 4403, the session is gone, a resume is refused.
    let last = got["n"].as_u64().unwrap();
    let token = welcome["session"].as_str().unwrap().to_owned();
    let (s, v) = call(
        Method::DELETE,
        base,
        "/v1/users/bob/session",
        Some(NEW_KEY),
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(bob.expect_close().await, 4403);
    wait_until("bob to be offline", Duration::from_secs(5), || async {
        get(base, "/v1/users/bob").await.1["online"] == false
    })
    .await;
    let (mut bob2, w2) = connect(base, "bob", &format!("&resume={token}&last={last}")).await;
    assert_eq!(w2["resumed"], false, "{w2}");
    assert_ne!(w2["session"], welcome["session"]);
    // The unacknowledged messages are still in the mailbox: the new session gets them.
    let again = next_of(&mut bob2, "Message").await;
    assert_eq!(again["delayed"], true);
    let (s, _) = call(
        Method::DELETE,
        base,
        "/v1/users/nobody/session",
        Some(NEW_KEY),
        None,
    )
    .await;
    assert_eq!(s, 404);
    bob2.close().await;
}

fn api_config(redis: Option<String>) -> ApiConfig {
    ApiConfig {
        keys: ApiKeys::parse(&format!("{OLD_KEY},{NEW_KEY}"))
            .unwrap()
            .unwrap(),
        max_body_bytes: central::api::DEFAULT_MAX_BODY_BYTES,
        max_presence_users: 3,
        redis: redis.map(|url| url.as_str().into()),
    }
}

#[tokio::test]
async fn server_api_on_the_dev_cluster() {
    let mut opts = DevOptions::default();
    opts.central.api = Some(api_config(None));
    let cluster = DevCluster::start(opts).await.unwrap();
    scenario(&cluster.central_url()).await;
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_api_disabled_answers_404() {
    let cluster = DevCluster::start(DevOptions::default()).await.unwrap();
    let base = cluster.central_url();
    for (method, path) in [
        (Method::GET, "/v1/users/bob"),
        (Method::GET, "/v1/presence?user=bob"),
        (Method::DELETE, "/v1/users/bob/session"),
        (Method::POST, "/v1/messages"),
    ] {
        let (s, v) = call(method, &base, path, Some(OLD_KEY), Some(json!({}))).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("--api-key"), "{v}");
    }
    cluster.shutdown().await.unwrap();
}

/// Real processes sharing a real Redis: central reads the nodes' directory there
/// (`--api-redis-url`), messages cross nodes, the mailbox quota gives 429.
#[tokio::test]
async fn server_api_with_processes_and_redis() {
    let redis = testkit::Redis::start().await;
    let keys = format!("{OLD_KEY},{NEW_KEY}");
    let central = Central::start(
        Timing::FAST,
        &[
            "--api-key",
            &keys,
            "--api-redis-url",
            &redis.url(),
            "--api-max-presence-users",
            "3",
        ],
    )
    .await;
    let node_args = ["--redis-url", &redis.url(), "--mailbox-max-messages", "3"];
    let _a = Node::start("node-a", &central.grpc_url(), 1, &node_args);
    let _b = Node::start("node-b", &central.grpc_url(), 1, &node_args);
    central
        .wait_nodes(&["node-a", "node-b"], Duration::from_secs(15))
        .await;
    scenario(&central.url()).await;

    // The quota of section 6: MAILBOXFULL -> 429, nothing stored.
    for i in 0..3 {
        let (s, v) = post_message(
            &central.url(),
            json!({"from":"system","to":"dave","id":format!("q-{i}"),"body":"x"}),
        )
        .await;
        assert_eq!(s, 202, "{v}");
    }
    let (s, v) = post_message(
        &central.url(),
        json!({"from":"system","to":"dave","id":"q-3","body":"x"}),
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert!(v["error"].is_string());
    let metrics = central.metrics().await;
    assert!(
        metrics.contains("central_api_requests_total{route=\"POST /v1/messages\",status=\"429\"}"),
        "{metrics}"
    );
}
