//! Shared helpers of the signal-node integration tests: real nodes via `run` on port-0
//! listeners, ROAP message builders, HTTP probes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use signal_node::{Config, Listeners};
use testkit::{Received, WsClient};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node served by `signal_node::run` inside the test process.
pub struct TestNode {
    pub id: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), signal_node::NodeError>>>,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let id = config.id.to_string();
        let task = tokio::spawn(signal_node::run(config, Listeners { http, grpc }, async {
            let _ = rx.await;
        }));
        TestNode {
            id,
            http: http_addr,
            grpc: grpc_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `ws://.../ws?user=<user>` (dev-auth).
    pub fn ws(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.http)
    }

    pub fn ws_token(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.http)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn connect(&self, user: &str) -> WsClient {
        let (c, w) = WsClient::connect_welcomed(&self.ws(user)).await;
        assert_eq!(w["user"], user);
        assert_eq!(w["node"], self.id.as_str());
        c
    }

    /// Starts the drain and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), signal_node::NodeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("run returned within 30 s")
            .expect("run did not panic")
    }

    /// Starts the drain without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(mut self) -> Result<(), signal_node::NodeError> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("run returned within 30 s")
            .expect("run did not panic")
    }
}

/// The node's `/metrics` text.
pub async fn metrics_text(node: &TestNode) -> String {
    reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Asserts that `c` receives nothing within 300 ms (e.g. no error for a sender).
pub async fn assert_quiet(c: &mut WsClient, what: &str) {
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_none(),
        "{what}"
    );
}

/// The frame without its session frame number `n` (checked where numbering is the subject).
pub fn strip_n(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("n");
    }
    v
}

/// A dev config for tests: short drain, short resume window (a drain waits for the takeover
/// of its kept sessions at most that long).
pub fn dev(id: &str) -> Config {
    let mut c = Config::dev(id);
    c.drain = Duration::from_millis(200);
    c.resume_window = Duration::from_secs(2);
    c
}

/// One ROAP message of each relayed type, from nobody to `to`, with an unknown extra field.
pub fn every_type(to: &str) -> Vec<Value> {
    vec![
        json!({"type":"Offer","to":to,"sessionID":"s1","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n","seq":1,"tieBreaker":42,"x-app":{"k":[1,2,3]}}),
        json!({"type":"Answer","to":to,"sessionID":"s1","sdp":"v=0\r\n","seq":2,"x-app":"a"}),
        json!({"type":"Ok","to":to,"sessionID":"s1","seq":3,"x-app":null}),
        json!({"type":"Candidate","to":to,"sessionID":"s1","candidate":{"candidate":"candidate:1 1 udp 2122260223 10.0.0.1 54321 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd","x-c":true},"x-app":1}),
        json!({"type":"Candidate","to":to,"sessionID":"s1","candidate":null,"x-app":2}),
        json!({"type":"Error","to":to,"sessionID":"s1","errorType":"NOMATCH","description":"no","x-app":3}),
        json!({"type":"Error","to":to,"sessionID":"s1","errorType":"DOUBLECONFLICT","seq":9}),
        json!({"type":"Shutdown","to":to,"sessionID":"s1","seq":4,"x-app":[]}),
    ]
}

/// What the receiver must see for `sent` relayed from `from`.
pub fn as_relayed(sent: &Value, from: &str) -> Value {
    let mut v = sent.clone();
    v["from"] = json!(from);
    v
}

pub fn offer(to: &str, sid: &str) -> Value {
    json!({"type":"Offer","to":to,"sessionID":sid,"sdp":"v=0"})
}

/// Next JSON frame; asserts it is a server error of `error_type` about `peer`, session `sid`.
pub async fn expect_server_error(
    c: &mut WsClient,
    error_type: &str,
    peer: Option<&str>,
    sid: Option<&str>,
) -> Value {
    let v = c.next_json().await;
    assert_eq!(v["type"], "Error", "{v}");
    assert_eq!(v["errorType"], error_type, "{v}");
    assert_eq!(v["origin"], "server", "{v}");
    match peer {
        Some(p) => assert_eq!(v["from"], p, "{v}"),
        None => assert!(v.get("from").is_none(), "{v}"),
    }
    match sid {
        Some(s) => assert_eq!(v["sessionID"], s, "{v}"),
        None => assert!(v.get("sessionID").is_none(), "{v}"),
    }
    v
}

/// Asserts nothing arrives on `c` for a short while (used after a positive check that the
/// preceding frames did arrive).
pub async fn expect_silence(c: &mut WsClient, within: Duration) {
    if let Some(r) = c.recv_within(within).await {
        panic!("expected nothing, got {r:?}");
    }
}

/// Sends Ping and waits for Pong: proves the connection is open and every earlier frame of
/// this client has been processed (frames are processed in order).
pub async fn roundtrip(c: &mut WsClient) {
    c.send_json(&json!({"type":"Ping"})).await;
    match c.recv().await {
        Received::Json(v) if v["type"] == "Pong" => {}
        Received::Json(v) => panic!("expected Pong, got {v}"),
        other => panic!("expected Pong, got {other:?}"),
    }
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits until the node serving HTTP at `http` has begun its drain (`/readyz` answers 503),
/// then three `heartbeat`s more: the other nodes have heard central's peer list since.
pub async fn wait_draining(http: SocketAddr, heartbeat: Duration) {
    let ready = format!("http://{http}/readyz");
    testkit::wait_until(
        "the node to start draining",
        Duration::from_secs(5),
        || async { get_json(&ready).await.0 == 503 },
    )
    .await;
    tokio::time::sleep(heartbeat * 3).await;
}

/// central served by `central::run` inside the test process (open login, cluster `secret`,
/// heartbeats and probes every `tick`, nodes evicted after `node_timeout`).
pub fn central_config(secret: &str, tick: Duration, node_timeout: Duration) -> central::Config {
    let mut cfg = central::Config::dev();
    cfg.dev = false;
    cfg.open_login = true;
    cfg.secret = secret.into();
    cfg.heartbeat_interval = tick;
    cfg.node_timeout = node_timeout;
    cfg.probe_interval = tick;
    cfg
}

/// A central served by `central::run` inside the test process; stops when dropped.
pub struct TestCentral {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestCentral {
    pub async fn start(cfg: central::Config) -> TestCentral {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (h, g) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(central::run(
            cfg,
            central::Listeners { http, grpc },
            async {
                let _ = rx.await;
            },
        ));
        TestCentral {
            http: h,
            grpc: g,
            _stop: tx,
        }
    }

    /// What nodes pass as `--central`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The listed nodes that answered central's probe (only those are handed out), sorted.
    pub async fn reachable_nodes(&self) -> Vec<String> {
        let (_, body) = get_json(&format!("http://{}/v1/nodes", self.http)).await;
        let mut ids: Vec<String> = body["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["reachable"] == true)
                    .map(|n| n["id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Logs `user` in; `Ok((node, ws url with ticket))` or the HTTP status.
    pub async fn login(&self, user: &str) -> Result<(String, String), u16> {
        let (s, login) = get_json(&format!("http://{}/v1/endpoint?user={user}", self.http)).await;
        if s != 200 {
            return Err(s);
        }
        Ok((
            login["node"].as_str().unwrap().to_owned(),
            format!(
                "{}?token={}",
                login["url"].as_str().unwrap(),
                login["token"].as_str().unwrap()
            ),
        ))
    }
}
