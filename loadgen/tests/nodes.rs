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
