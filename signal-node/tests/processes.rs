//! The real `signal-node` binary: bad flags, SIGKILL of a node, SIGTERM drain, a client that
//! never reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use testkit::{free_port, wait_for_port, Proc, Received, Redis, WsClient};

const BIN: &str = env!("CARGO_BIN_EXE_signal-node");

struct NodeProc {
    proc: Proc,
    http: SocketAddr,
    id: String,
}

impl NodeProc {
    async fn start(id: &str, redis: Option<&Redis>, extra: &[&str]) -> NodeProc {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["--id", id, "--dev-auth"])
            .args([
                "--listen",
                &http.to_string(),
                "--grpc-listen",
                &grpc.to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(r) = redis {
            cmd.args(["--redis-url", &r.url()]);
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

    async fn connect(&self, user: &str) -> WsClient {
        let (c, w) = WsClient::connect_welcomed(&self.ws(user)).await;
        assert_eq!(w["node"], self.id.as_str());
        c
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

fn run_bad(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SIGNAL_SECRET")
        .env_remove("SIGNAL_DEV_AUTH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_flags_exit_non_zero_with_one_line_naming_the_flag() {
    for (args, env, flag) in [
        (vec!["--dev-auth", "--listen", "nope"], vec![], "--listen"),
        (
            vec!["--dev-auth", "--grpc-listen", "1.2.3.4"],
            vec![],
            "--grpc-listen",
        ),
        (
            vec!["--dev-auth", "--central", "not a url"],
            vec![],
            "--central",
        ),
        (
            vec!["--dev-auth", "--redis-url", "nope://x"],
            vec![],
            "--redis-url",
        ),
        (
            vec!["--dev-auth", "--advertise-url", "http://x/ws"],
            vec![],
            "--advertise-url",
        ),
        (
            vec!["--dev-auth", "--max-message-bytes", "lots"],
            vec![],
            "--max-message-bytes",
        ),
        (
            vec!["--dev-auth", "--rate-limit", "fast"],
            vec![],
            "--rate-limit",
        ),
        (vec!["--id", "n1"], vec![], "--secret"),
        (
            vec!["--dev-auth"],
            vec![("SIGNAL_DRAIN_MS", "soon")],
            "--drain-ms",
        ),
        (
            vec!["--id", "n1"],
            vec![("SIGNAL_DEV_AUTH", "maybe")],
            "--dev-auth",
        ),
        (vec!["--dev-auth", "--weight", "0"], vec![], "--weight"),
        (
            vec!["--dev-auth", "--mailbox-max-messages", "0"],
            vec![],
            "--mailbox-max-messages",
        ),
        (
            vec!["--dev-auth"],
            vec![("SIGNAL_MAILBOX_TTL_SECS", "forever")],
            "--mailbox-ttl-secs",
        ),
        (
            vec!["--dev-auth", "--max-body-bytes", "big"],
            vec![],
            "--max-body-bytes",
        ),
    ] {
        let (code, stderr) = run_bad(&args, &env);
        assert_ne!(code, 0, "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line expected:\n{stderr}"
        );
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--id",
        "--listen",
        "--advertise-url",
        "--grpc-listen",
        "--grpc-advertise",
        "--central",
        "--redis-url",
        "--secret",
        "--dev-auth",
        "--weight",
        "--max-message-bytes",
        "--rate-limit",
        "--rate-burst",
        "--drain-ms",
        "--log-json",
        "--outbound-queue",
        "--mailbox-max-messages",
        "--mailbox-ttl-secs",
        "--max-body-bytes",
        "SIGNAL_MAILBOX_MAX_MESSAGES",
        "SIGNAL_MAILBOX_TTL_SECS",
        "SIGNAL_MAX_BODY_BYTES",
        "--max-room-members",
        "--max-rooms",
        "SIGNAL_MAX_ROOM_MEMBERS",
        "SIGNAL_MAX_ROOMS",
        "SIGNAL_REDIS_URL",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_not_acknowledged_before_a_sigkill_is_delivered_again() {
    let redis = Redis::start().await;
    let a = NodeProc::start("a", Some(&redis), &[]).await;
    let mut b = NodeProc::start("b", Some(&redis), &[]).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    for i in 0..5 {
        alice
            .send_json(&json!({"type":"Message","to":"bob","id":format!("k{i}"),"body":"x"}))
            .await;
        assert_eq!(alice.next_json().await["type"], "Accepted");
    }
    // bob's node gets every message to his socket, and dies before he acknowledges. A message
    // stored while his push at connect finished may come twice (at-least-once: the client
    // drops duplicates by (from, id)); the first copies arrive in order.
    let mut seen: Vec<String> = Vec::new();
    while seen.len() < 5 {
        let m = bob.next_json().await;
        assert_eq!(m["type"], "Message", "{m}");
        let id = m["id"].as_str().unwrap().to_owned();
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    assert_eq!(seen, ["k0", "k1", "k2", "k3", "k4"]);
    b.proc.signal(9);
    b.proc.wait_exit(Duration::from_secs(5)).await;
    // A new session on the surviving node: all five again, in order, then Delivered on ack.
    let mut bob = a.connect("bob").await;
    let mut last = 0;
    for i in 0..5 {
        let m = bob.next_json().await;
        assert_eq!(m["id"], format!("k{i}"), "{m}");
        assert_eq!(m["delayed"], true, "{m}");
        last = m["n"].as_u64().unwrap();
    }
    bob.send_json(&json!({"type":"Ack","n":last})).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let d = alice.next_json().await;
        assert_eq!(
            (d["type"].as_str(), d["from"].as_str()),
            (Some("Delivered"), Some("bob"))
        );
        ids.push(d["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, ["k0", "k1", "k2", "k3", "k4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_means_offline_within_two_seconds() {
    let redis = Redis::start().await;
    let mut a = NodeProc::start("a", Some(&redis), &[]).await;
    let b = NodeProc::start("b", Some(&redis), &[]).await;
    let c = NodeProc::start("c", Some(&redis), &[]).await;
    let _alice = a.connect("alice").await;
    let _amy = a.connect("amy").await;
    let mut bob = b.connect("bob").await;
    let mut carol = c.connect("carol").await;
    // bob has alice's route cached; carol never talked to anyone.
    bob.send_json(&offer("alice", "s0")).await;
    roundtrip(&mut bob).await;

    a.proc.signal(9);
    a.proc.wait_exit(Duration::from_secs(5)).await;
    let start = Instant::now();
    bob.send_json(&offer("alice", "s1")).await;
    expect_server_error(&mut bob, "OFFLINE", Some("alice"), Some("s1")).await;
    carol.send_json(&offer("amy", "s2")).await;
    expect_server_error(&mut carol, "OFFLINE", Some("amy"), Some("s2")).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    // Again: the stale entries were removed, so it is a plain directory miss now.
    bob.send_json(&offer("amy", "s3")).await;
    expect_server_error(&mut bob, "OFFLINE", Some("amy"), Some("s3")).await;
    // The surviving nodes keep relaying.
    bob.send_json(&offer("carol", "s4")).await;
    assert_eq!(carol.next_json().await["sessionID"], "s4");
    let (mut b, mut c) = (b, c);
    assert!(b.proc.is_running() && c.proc.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1012_spread_over_the_window_and_exits_0() {
    let redis = Redis::start().await;
    let mut node = NodeProc::start(
        "d",
        Some(&redis),
        &["--drain-ms", "1500", "--resume-window-ms", "1000"],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(node.connect(&format!("u{i}")).await);
    }
    let dir = signal_node::Directory::redis(redis.url()).unwrap();
    let user = |i: usize| signal_proto::UserId::new(format!("u{i}")).unwrap();
    assert!(dir.lookup(&user(0)).await.unwrap().is_some());
    node.proc.signal(15);
    let start = Instant::now();
    let mut closes = Vec::new();
    // Each client waits for its own close, concurrently.
    let waits = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let code = c.expect_close().await;
            (code, start.elapsed())
        })
    });
    for w in waits.collect::<Vec<_>>() {
        closes.push(w.await.unwrap());
    }
    assert!(closes.iter().all(|(code, _)| *code == 1012), "{closes:?}");
    let first = closes.iter().map(|(_, t)| *t).min().unwrap();
    let last = closes.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(700),
        "not spread: {closes:?}"
    );
    let status = node.proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    // Every connection released its directory entry before the process exited.
    for i in 0..6 {
        assert_eq!(dir.lookup(&user(i)).await.unwrap(), None, "u{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_at_once() {
    let mut node = NodeProc::start("e", None, &["--drain-ms", "60000"]).await;
    let _a = node.connect("a").await;
    let _b = node.connect("b").await;
    node.proc.signal(15);
    let ready = format!("http://{}/readyz", node.http);
    testkit::wait_until("draining", Duration::from_secs(5), || async {
        get_json(&ready).await.0 == 503
    })
    .await;
    node.proc.signal(15);
    let status = node.proc.wait_exit(Duration::from_secs(5)).await;
    assert_ne!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let node = NodeProc::start("s", None, &["--rate-limit", "0"]).await;
    let mut alice = node.connect("alice").await;
    // Never reads after the upgrade.
    let sleepy = node.connect("sleepy").await;
    let mut c1 = node.connect("c1").await;
    let mut c2 = node.connect("c2").await;
    let base = node.rss_kib();
    let sdp = "x".repeat(60_000);
    let mut undelivered = Vec::new();
    let mut sent = 0;
    // 800 x 60 KB = 48 MB toward a socket nobody reads (loopback socket buffers hold a few MB).
    for i in 0..800 {
        alice
            .send_json(&json!({"type":"Offer","to":"sleepy","sessionID":format!("s{i}"),"sdp":sdp}))
            .await;
        sent += 1;
        while let Some(Received::Json(v)) = alice.recv_within(Duration::ZERO).await {
            undelivered.push(v);
        }
    }
    roundtrip_collect(&mut alice, &mut undelivered).await;
    assert_eq!(sent, 800);
    let kinds: Vec<&str> = undelivered
        .iter()
        .map(|v| v["errorType"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"UNAVAILABLE"),
        "the message that did not fit gets UNAVAILABLE"
    );
    assert!(
        kinds.iter().all(|k| *k == "UNAVAILABLE" || *k == "OFFLINE"),
        "{kinds:?}"
    );
    let grown = node.rss_kib().saturating_sub(base);
    assert!(grown < 24 * 1024, "node grew by {grown} KiB");
    // Other clients are unaffected.
    c1.send_json(&offer("c2", "fine")).await;
    assert_eq!(c2.next_json().await["sessionID"], "fine");
    // The sleepy connection was closed: after what was buffered, 1013 (or a cut stream when
    // even the close frame could not be written).
    let mut sleepy = sleepy;
    let code = sleepy.expect_close().await;
    eprintln!(
        "sleepy closed with {code}, node grew by {grown} KiB, {} errors",
        kinds.len()
    );
    assert!(code == 1013 || code == 1006, "code {code}");
}

/// Ping/Pong while collecting the error frames that arrive before the Pong.
async fn roundtrip_collect(c: &mut WsClient, into: &mut Vec<serde_json::Value>) {
    c.send_json(&json!({"type":"Ping"})).await;
    loop {
        let v = c.next_json().await;
        if v["type"] == "Pong" {
            return;
        }
        into.push(v);
    }
}

/// SIGTERM on a node process with 200 users: each is closed with 1012 and resumes on the other
/// node process (shared Redis directory, gRPC takeover) with nothing lost: the frame sent
/// before the drain and the one sent while it was away arrive exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_200_users_every_one_resumes_on_the_other_node() {
    let redis = Redis::start().await;
    let opts = [
        "--drain-ms",
        "1500",
        "--resume-window-ms",
        "15000",
        "--rate-limit",
        "0",
    ];
    let mut a = NodeProc::start("a", Some(&redis), &opts).await;
    let b = NodeProc::start("b", Some(&redis), &opts).await;
    let mut sender = b.connect("sender").await;
    let mut users = Vec::new();
    for i in 0..200 {
        let name = format!("u{i}");
        let (c, w) = WsClient::connect_welcomed(&a.ws(&name)).await;
        users.push((name, c, w["session"].as_str().unwrap().to_owned()));
    }
    for (name, _, _) in &users {
        sender
            .send_json(&json!({"type":"Offer","to":name,"sessionID":"s0","sdp":"v=0"}))
            .await;
    }
    a.proc.signal(15);
    let b_http = b.http;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
    let mut tasks = Vec::new();
    for (name, mut c, tok) in users {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            let mut seen = Vec::new();
            loop {
                match c
                    .recv_within(Duration::from_secs(20))
                    .await
                    .expect("close within 20 s")
                {
                    Received::Json(v) => {
                        last = v["n"].as_u64().unwrap();
                        seen.push(v["sessionID"].as_str().unwrap().to_owned());
                    }
                    Received::Closed(code) => {
                        assert_eq!(code, 1012, "{name}");
                        break;
                    }
                    Received::Ended => panic!("{name}: no close frame"),
                }
            }
            // Ask the sender for the second frame now that this user is away.
            tx.send(name.clone()).await.unwrap();
            let url = format!("ws://{b_http}/ws?user={name}&resume={tok}&last={last}");
            let (mut c, w) = WsClient::connect_welcomed(&url).await;
            assert_eq!(w["resumed"], true, "{name}: {w}");
            while seen.len() < 2 {
                let v = c.next_json().await;
                assert_eq!(v["n"].as_u64().unwrap(), last + 1, "{name}: {v}");
                last += 1;
                seen.push(v["sessionID"].as_str().unwrap().to_owned());
            }
            assert_eq!(seen, vec!["s0", "s1"], "{name}");
            c
        }));
    }
    drop(tx);
    let mut asked = 0;
    while let Some(name) = rx.recv().await {
        sender
            .send_json(&json!({"type":"Offer","to":name,"sessionID":"s1","sdp":"v=0"}))
            .await;
        asked += 1;
    }
    assert_eq!(asked, 200);
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    assert_quiet(&mut sender, "the sender was told of no failure").await;
    // Every session was taken over: the drained node exits well before its resume window.
    let status = a.proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}
