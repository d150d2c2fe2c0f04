//! loadgen's `run` against an embedded cluster (`central::dev::DevCluster`: central + 2 real
//! nodes on loopback, real gRPC): the setup, JWT login, churn, mass-reconnect and rolling
//! restart scenarios.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loadgen::{Config, Scenario};

fn small() -> Config {
    let mut c = Config::embedded();
    c.pairs = 20;
    c.rate = 40.0;
    c.warmup = Duration::from_millis(500);
    c.duration = Duration::from_secs(2);
    c.candidates = 2;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_scenario_covers_both_routes_without_errors() {
    let dir = std::env::temp_dir().join(format!("loadgen-embedded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = small();
    config.json = Some(dir.join("report.json"));
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    assert_eq!(report.connections, 40, "{report}");
    assert!(report.setups > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.warmup_errors, 0, "{report}");
    assert!(report.errors_by_type.is_empty(), "{report}");
    // Central spreads the users over both nodes: both routes occur.
    assert!(report.same_node.setups > 0, "{report}");
    assert!(report.cross_node.setups > 0, "{report}");
    assert_eq!(
        report.same_node.setups + report.cross_node.setups,
        report.setups
    );
    assert!(
        report.messages > 0 && report.messages_per_s > 0.0,
        "{report}"
    );
    // The JSON file says the same.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(v["setups"], report.setups);
    assert_eq!(v["errors"], 0);
    assert!(v["cross_node"]["setups"].as_u64().unwrap() > 0);
    assert!(
        v["same_node"]["p99_us"].as_u64().unwrap() >= v["same_node"]["p50_us"].as_u64().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_with_jwt_login_and_churn() {
    let mut config = small();
    config.rate = 0.0;
    config.scenario = Scenario::Churn;
    config.churn_rate = 20.0;
    config.pairs = 6;
    config.duration = Duration::from_secs(1);
    config.jwt_secret = Some("test-jwt-secret".into());
    // Central checks the audience and issuer; loadgen's tokens carry them.
    config.jwt_audience = Some("signal".into());
    config.jwt_issuer = Some("https://app.example".into());
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    assert_eq!(report.connections, 12, "{report}");
    assert!(report.setups > 0, "{report}");
    assert!(!report.open_loop);
    // Churned users logged in again through central with a fresh JWT.
    assert!(report.churn_logins > 0, "{report}");
    // Only the nodes' per-connection rate limit may refuse messages in a closed loop.
    for kind in report.errors_by_type.keys() {
        assert_eq!(kind, "RATELIMITED", "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_logs_users_out_and_in_while_calls_run() {
    let mut config = small();
    config.scenario = Scenario::Churn;
    config.churn_rate = 20.0;
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    assert!(report.churn_logouts > 0, "{report}");
    assert!(report.churn_logins > 0, "{report}");
    assert!(report.setups > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_sends_its_users_back_through_central() {
    let mut config = small();
    config.scenario = Scenario::Reconnect;
    config.duration = Duration::from_secs(4);
    config.drain_window = Duration::from_millis(500);
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    let r = report.reconnect.clone().expect("reconnect figures");
    assert_eq!(r.node, "node-1");
    assert!(r.users_on_node > 0, "{report}");
    assert_eq!(r.closed_1012, r.users_on_node, "{report}");
    assert_eq!(r.back, r.closed_1012, "{report}");
    assert!(r.all_back_ms.is_some(), "{report}");
    assert_eq!(r.reconnect.count, r.back);
    // Calls go on after the drain, all on the remaining node.
    assert!(report.setups > 0, "{report}");
    let last = report.timeline.iter().rev().find(|s| s.setups > 0).unwrap();
    assert!(last.setups > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_setup_and_loses_no_frame() {
    let mut config = small();
    config.scenario = Scenario::Rolling;
    config.pairs = 10;
    config.rate = 20.0;
    // node-1: drain (0.5 s) + restart, pause, node-2: the same; all within the run.
    config.duration = Duration::from_secs(5);
    config.drain_window = Duration::from_millis(500);
    config.roll_pause = Duration::from_millis(300);
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    let roll = report.rolling.clone().expect("rolling figures");
    assert_eq!(roll.nodes, 2, "{report}");
    let restarted: Vec<&str> = roll.restarted.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(restarted, ["node-1", "node-2"], "{report}");
    assert!(report.setups > 0, "{report}");
    assert_eq!(report.failed_setups(), 0, "{report}");
    let s = &report.sessions;
    assert!(s.frames > 0, "{report}");
    assert_eq!(s.lost, 0, "{report}");
    assert_eq!(s.duplicated, 0, "{report}");
    assert_eq!(s.reordered, 0, "{report}");
    // Every user was on one of the two nodes: each reconnected at least once, resuming.
    assert!(s.resumed >= 20, "{report}");
    assert_eq!(s.fresh, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_scenario_on_the_embedded_cluster() {
    let mut config = small();
    config.scenario = Scenario::Messages;
    config.rate = 200.0;
    config.churn_rate = 5.0;
    config.chat.users = 16;
    config.chat.offline_delay = Duration::from_millis(500);
    let report = loadgen::run(config).await.unwrap();
    println!("{report}");
    let m = report.chat.clone().unwrap();
    assert!(m.accepted > 0, "{report}");
    assert_eq!(
        (m.lost, m.duplicated, m.reordered, m.unanswered),
        (0, 0, 0, 0),
        "{report}"
    );
    let json = report.to_json();
    assert!(json.contains("\"deliver_live\""), "{json}");
}
