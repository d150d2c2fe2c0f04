//! `--scenario rooms` against an embedded cluster (central + 2 real nodes, real gRPC, one
//! shared membership store): every message reaches every other member, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loadgen::{Config, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_scenario_delivers_everything_in_order_over_both_nodes() {
    let mut c = Config::embedded();
    c.scenario = Scenario::Rooms;
    c.rooms = 8;
    c.room_members = 6;
    c.room_rate = 5.0;
    c.warmup = Duration::from_millis(500);
    c.duration = Duration::from_secs(2);
    let r = loadgen::rooms::run(&c).await.unwrap();
    println!("{r}");
    assert_eq!(r.nodes.values().sum::<usize>(), 48, "{r}");
    assert_eq!(r.nodes.len(), 2, "members on both nodes: {r}");
    assert!(r.sent >= 8 * 10, "{r}");
    assert_eq!(r.accepted, r.sent, "{r}");
    assert_eq!(r.delivered, r.sent * 5, "{r}");
    assert_eq!(
        (r.lost, r.reordered, r.duplicates, r.refused, r.stray),
        (0, 0, 0, 0, 0),
        "{r}"
    );
    assert!(
        r.deliveries_per_s > 0.0 && r.last_member_p99_ms >= r.last_member_p50_ms,
        "{r}"
    );
    // Deliveries carry the kernel's arrival stamp (but the first ones, while the kernel turns
    // stamping on), and a frame arrives before it is read (slack for the histogram's
    // precision and the two clocks read one after the other).
    assert!(r.unstamped < r.delivered / 2, "{r}");
    assert!(r.each_member_arrived_p50_ms > 0.0, "{r}");
    assert!(
        r.last_member_arrived_p99_ms >= r.last_member_arrived_p50_ms
            && r.last_member_arrived_max_ms <= r.last_member_max_ms + 0.5
            && r.each_member_arrived_p99_ms <= r.each_member_p99_ms + 0.5,
        "{r}"
    );
}
