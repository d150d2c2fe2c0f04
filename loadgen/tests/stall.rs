//! A server that welcomes users and then relays nothing: every setup due in the measured
//! window is accounted for as a failure (timeout or never started), none goes missing — the
//! open-loop schedule does not slow down with the server (no coordinated omission).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use loadgen::{Config, Target};
use signal_proto::roap::Welcome;
use signal_proto::{Message, NodeId, UserId};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Accepts WebSockets, sends a Welcome, then swallows every frame.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let welcome = Message::Welcome(Welcome {
                    user: UserId::new("someone").unwrap(),
                    node: NodeId::new("black-hole").unwrap(),
                    session: None,
                    resumed: None,
                    resume_window_ms: None,
                    extra: Default::default(),
                });
                if ws.send(WsMessage::text(welcome.to_json())).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_shows_every_due_setup_as_failed() {
    let url = black_hole().await;
    let mut config = Config::embedded();
    config.target = Target::Nodes(vec![url]);
    config.pairs = 2;
    config.rate = 20.0;
    config.warmup = Duration::ZERO;
    config.duration = Duration::from_secs(1);
    config.timeout = Duration::from_millis(300);
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    assert_eq!(report.connections, 4, "{report}");
    assert_eq!(report.setups, 0, "{report}");
    // 20 setups/s for 1 s: 20 due, 20 failed, whatever the 2 pairs managed to start.
    assert_eq!(report.errors, 20, "{report}");
    let timeouts = report
        .errors_by_type
        .get("CLIENT_TIMEOUT")
        .copied()
        .unwrap_or(0);
    let not_started = report
        .errors_by_type
        .get("NOT_STARTED")
        .copied()
        .unwrap_or(0);
    assert_eq!(timeouts + not_started, 20, "{report}");
    assert!(timeouts > 0, "{report}");
    assert_eq!(report.timeline.iter().map(|s| s.errors).sum::<u64>(), 20);
}
