//! Webhooks (contract section 11) against a real local HTTP receiver (an axum server in the
//! test) and real nodes (in-process, real gRPC between two of them): every event arrives with
//! a valid signature, none for a resumed blip; a receiver down for 10 s then back gets every
//! event; a receiver that never answers does not slow relaying, and the overflow is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use signal_node::mailbox::MailboxStore;
use signal_node::webhooks::WebhookConfig;
use signal_node::{Config, Directory, DirectoryConfig};
use testkit::{wait_until, Received, WsClient};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "webhook-test-secret";

#[derive(Clone, Copy)]
enum Mode {
    Answer,
    /// Accepts the request and never answers.
    Hang,
}

/// What the receiver got: each body with whether its signature was valid.
type Got = Arc<Mutex<Vec<(Value, bool)>>>;

struct Receiver {
    addr: SocketAddr,
    got: Got,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn valid(headers: &HeaderMap, body: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    headers
        .get("x-signal-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("sha256={want}"))
}

async fn hook(
    State((got, mode)): State<(Got, Mode)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if let Mode::Hang = mode {
        std::future::pending::<()>().await;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    got.lock().unwrap().push((v, valid(&headers, &body)));
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start(addr: SocketAddr, mode: Mode, got: Got) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state((got.clone(), mode));
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Receiver {
            addr,
            got,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Stops listening (connections are refused until it starts again).
    async fn down(self) -> (SocketAddr, Got) {
        self.stop.cancel();
        self.task.abort();
        let _ = self.task.await;
        (self.addr, self.got)
    }

    fn events(&self) -> Vec<(Value, bool)> {
        self.got.lock().unwrap().clone()
    }
}

fn hooks(url: &str, tune: impl FnOnce(&mut WebhookConfig)) -> WebhookConfig {
    let mut w = WebhookConfig {
        url: url.to_owned(),
        secret: SECRET.to_owned(),
        queue: 1000,
        concurrency: 4,
        timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(300),
        backoff_max: Duration::from_millis(300),
    };
    tune(&mut w);
    w
}

/// Two nodes sharing a memory directory and mailbox, both with webhooks.
async fn pair(w: WebhookConfig) -> (TestNode, TestNode) {
    let directory = Directory::memory();
    let mailbox = MailboxStore::memory();
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut c: Config = dev(id);
        c.directory = DirectoryConfig::Memory(directory.clone());
        c.mailbox_store = Some(mailbox.clone());
        c.rate_limit = 0;
        c.webhooks = Some(w.clone());
        nodes.push(TestNode::start(c).await);
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (a, b)
}

/// The events of `kind` about `user` (field `user`, or `to` for message.stored).
fn of<'a>(events: &'a [(Value, bool)], kind: &str, user: &str) -> Vec<&'a Value> {
    events
        .iter()
        .map(|(v, _)| v)
        .filter(|v| v["type"] == kind && (v["user"] == user || v["to"] == user))
        .collect()
}

/// Next frame of type `ty`, skipping others.
async fn next_of(c: &mut WsClient, ty: &str) -> Value {
    loop {
        let v = c.next_json().await;
        if v["type"] == ty {
            return v;
        }
    }
}

#[tokio::test]
async fn every_event_arrives_signed_and_a_resumed_blip_sends_none() {
    let got = Got::default();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Answer, got).await;
    let (a, b) = pair(hooks(&rx.url(), |_| {})).await;

    // alice: session start, a message stored for offline bob, a blip with resume, the end.
    let (mut alice, welcome) = WsClient::connect_welcomed(&a.ws("alice")).await;
    alice
        .send_json(&json!({"type":"Message","to":"bob","id":"m-1","body":"ping me"}))
        .await;
    let acc = next_of(&mut alice, "Accepted").await;
    assert_eq!(acc["stored"], true);
    // Dropped without a close frame: kept; resumed on the other node.
    drop(alice);
    let token = welcome["session"].as_str().unwrap();
    let resume = format!("{}&resume={token}&last={}", b.ws("alice"), acc["n"]);
    let (alice, w2) = WsClient::connect_welcomed(&resume).await;
    assert_eq!(w2["resumed"], true, "{w2}");
    // carol: online on b, gets alice's live message (not stored: no message.stored).
    let mut carol = b.connect("carol").await;
    let mut alice = alice;
    alice
        .send_json(&json!({"type":"Message","to":"carol","id":"m-2","body":"live"}))
        .await;
    assert_eq!(next_of(&mut alice, "Accepted").await["stored"], false);
    next_of(&mut carol, "Message").await;
    alice.close().await;

    wait_until("alice's offline event", Duration::from_secs(10), || async {
        !of(&rx.events(), "user.offline", "alice").is_empty()
    })
    .await;
    let events = rx.events();
    assert!(
        events.iter().all(|(_, ok)| *ok),
        "every signature valid: {events:?}"
    );
    let ids: HashSet<&str> = events
        .iter()
        .map(|(v, _)| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "unique ids: {events:?}");
    assert!(events.iter().all(|(v, _)| v["ts"].as_u64().unwrap() > 0));
    let online = of(&events, "user.online", "alice");
    assert_eq!(
        online.len(),
        1,
        "one session start, none for the resume: {events:?}"
    );
    assert_eq!(online[0]["node"], "a");
    assert_eq!(of(&events, "user.offline", "alice").len(), 1, "{events:?}");
    let stored = of(&events, "message.stored", "bob");
    assert_eq!(stored.len(), 1, "{events:?}");
    assert_eq!(
        (
            stored[0]["from"].clone(),
            stored[0]["id"].clone(),
            stored[0]["body"].clone()
        ),
        (json!("alice"), json!("m-1"), json!("ping me"))
    );
    assert!(
        of(&events, "message.stored", "carol").is_empty(),
        "{events:?}"
    );
    assert_eq!(of(&events, "user.online", "carol")[0]["node"], "b");
    carol.close().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(rx.down().await);
}

#[tokio::test]
async fn a_receiver_down_for_10_s_then_back_gets_every_event() {
    let got = Got::default();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Answer, got).await;
    let (a, b) = pair(hooks(&rx.url(), |_| {})).await;
    let (addr, got) = rx.down().await;
    let down_at = Instant::now();

    let users: Vec<String> = (0..5).map(|i| format!("down-{i}")).collect();
    for (i, u) in users.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut c = node.connect(u).await;
        c.send_json(&json!({"type":"Message","to":format!("{u}-away"),"id":"m","body":"x"}))
            .await;
        next_of(&mut c, "Accepted").await;
        c.close().await;
    }
    // 5 x (online, stored, offline), all refused for now.
    wait_until("failed attempts", Duration::from_secs(5), || async {
        metrics_text(&a)
            .await
            .contains("signal_webhook_failed_attempts_total")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed())).await;
    assert!(got.lock().unwrap().is_empty());

    let back = Instant::now();
    let rx = Receiver::start(addr, Mode::Answer, got).await;
    wait_until(
        "every event after the receiver is back",
        Duration::from_secs(10),
        || async {
            let events = rx.events();
            users.iter().all(|u| {
                of(&events, "user.online", u).len() == 1
                    && of(&events, "user.offline", u).len() == 1
                    && of(&events, "message.stored", &format!("{u}-away")).len() == 1
            })
        },
    )
    .await;
    println!(
        "receiver down {:?}: every event arrived {:?} after it came back",
        back - down_at,
        back.elapsed()
    );
    assert!(rx.events().iter().all(|(_, ok)| *ok));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(rx.down().await);
}

fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_relaying() {
    let got = Got::default();
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap(), Mode::Hang, got).await;
    let (a, b) = pair(hooks(&rx.url(), |w| {
        w.queue = 8;
        w.concurrency = 2;
        w.timeout = Duration::from_secs(60);
    }))
    .await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;

    // Churn: sessions start and end on both nodes while alice and bob talk.
    let churn = {
        let (wa, wb) = (a.ws(""), b.ws(""));
        tokio::spawn(async move {
            for i in 0..40 {
                let url = if i % 2 == 0 { &wa } else { &wb };
                let (c, _) = WsClient::connect_welcomed(&format!("{url}churn-{i}")).await;
                c.close().await;
            }
        })
    };
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    let n = 200;
    for i in 0..n {
        let t = Instant::now();
        alice.send_json(&offer("bob", &format!("s{i}"))).await;
        match bob.recv().await {
            Received::Json(v) if v["type"] == "Offer" => {}
            other => panic!("{other:?}"),
        }
        let d = t.elapsed();
        worst = worst.max(d);
        total += d;
    }
    churn.await.unwrap();
    println!(
        "send->receive across nodes with a hanging receiver: mean {:?}, max {worst:?}",
        total / n
    );
    assert!(worst < Duration::from_millis(500), "worst {worst:?}");
    wait_until("overflow counted", Duration::from_secs(5), || async {
        counter_sum(&metrics_text(&a).await, "signal_webhook_overflow_total") > 0.0
    })
    .await;
    // The backlog shows in /readyz without flipping it.
    let (status, ready) = get_json(&a.url("/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["webhooks"]["enabled"], true, "{ready}");
    assert!(
        ready["webhooks"]["pending"].as_u64().unwrap() > 0,
        "{ready}"
    );
    alice.close().await;
    bob.close().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(rx.down().await);
}
