//! loadgen against two real in-process signal nodes (shared in-memory directory, real gRPC
//! between them), reached directly with `--node` in dev-auth mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::start_node;

use std::time::Duration;

use loadgen::{Config, Target};
use signal_node::Directory;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_nodes_directly_on_both_routes() {
    let directory = Directory::memory();
    let stop = CancellationToken::new();
    let n1 = start_node("node-1", directory.clone(), stop.clone()).await;
    let n2 = start_node("node-2", directory.clone(), stop.clone()).await;
    for url in [&n1, &n2] {
        let addr = url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .unwrap();
        testkit::wait_for_port(addr, Duration::from_secs(10)).await;
    }
    let dir = std::env::temp_dir().join(format!("loadgen-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::embedded();
    config.target = Target::Nodes(vec![n1, n2]);
    config.pairs = 8;
    config.rate = 40.0;
    config.duration = Duration::from_secs(2);
    config.warmup = Duration::from_millis(500);
    config.candidates = 3;
    config.bind_ips = loadgen::config::BindIps::parse("127.0.0.1-127.0.0.4").unwrap();
    config.plot = Some(dir.join("plot.svg"));
    let report = loadgen::run(config).await.unwrap();
    stop.cancel();
    println!("{report}");

    assert_eq!(report.connections, 16, "{report}");
    assert!(report.setups > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.warmup_errors, 0, "{report}");
    assert!(report.same_node.setups > 0, "{report}");
    assert!(report.cross_node.setups > 0, "{report}");
    // Offer, Answer, Ok, 3 + 3 candidates, Shutdown: 10 relayed messages per call.
    assert!(report.messages >= (report.setups - 8) * 10, "{report}");
    assert!(report.same_node.p50_us > 0 && report.same_node.max_us >= report.same_node.p50_us);
    let svg = std::fs::read_to_string(dir.join("plot.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.contains("<svg"),
        "not an SVG"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--scenario messages` against two real nodes sharing a real redis-server (directory and
/// mailbox): users offline at the start, drops (resumed) and logouts (new sessions) while
/// messages flow; nothing lost, duplicated within a session or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_through_the_redis_mailbox_lose_nothing() {
    let redis = testkit::Redis::start().await;
    let stop = CancellationToken::new();
    let mut urls = Vec::new();
    for id in ["node-1", "node-2"] {
        let dir = signal_node::DirectoryConfig::Redis(redis.url().into());
        urls.push(common::start_node_with(id, dir, stop.clone()).await);
    }
    for url in &urls {
        let addr = url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .unwrap();
        testkit::wait_for_port(addr, Duration::from_secs(10)).await;
    }
    let mut config = Config::embedded();
    config.target = Target::Nodes(urls);
    config.scenario = loadgen::Scenario::Messages;
    config.rate = 300.0;
    config.churn_rate = 8.0;
    config.duration = Duration::from_secs(3);
    config.warmup = Duration::from_millis(500);
    config.chat.users = 24;
    config.chat.offline_share = 0.25;
    config.chat.offline_delay = Duration::from_secs(1);
    let report = loadgen::run(config).await.unwrap();
    stop.cancel();
    println!("{report}");
    let m = report.chat.clone().expect("a messages report");
    assert!(m.accepted > 300, "{report}");
    assert_eq!(m.accepted, m.sent, "{report}");
    assert_eq!(
        (m.lost, m.duplicated, m.reordered, m.unanswered),
        (0, 0, 0, 0),
        "{report}"
    );
    assert!(m.refused.is_empty(), "{report}");
    assert_eq!((m.frames_lost, m.frames_duplicated), (0, 0), "{report}");
    assert!(m.deliver_live.count > 0, "{report}");
    assert!(
        m.deliver_stored.count > 0,
        "the offline users got theirs from the mailbox"
    );
    assert!(m.resumed > 0 && m.fresh_sessions > 0, "{report}");
    assert!(m.delivered_notices > 0, "{report}");
    assert_eq!(report.failed_setups(), 0);
}
