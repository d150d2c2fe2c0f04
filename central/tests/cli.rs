//! The `central` binary's flags and signals: bad values exit at once with one line naming
//! the flag; SIGTERM stops it gracefully with exit code 0; the TURN secret is never logged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{central_bin, Central, Timing};

fn run_bad(args: &[&str], flag: &str) {
    let out = Command::new(central_bin())
        .args(args)
        .env_remove("CENTRAL_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {stderr:?}"
    );
    assert!(
        lines[0].contains(flag),
        "{args:?}: {stderr:?} does not name {flag}"
    );
}

#[test]
fn bad_flags_exit_with_one_line_naming_the_flag() {
    run_bad(&[], "--secret");
    run_bad(
        &["--secret", "s", "--http-listen", "not-an-address"],
        "--http-listen",
    );
    run_bad(
        &["--secret", "s", "--grpc-listen", "1.2.3.4"],
        "--grpc-listen",
    );
    run_bad(
        &["--secret", "s", "--redis-url", "http://nope"],
        "--redis-url",
    );
    run_bad(
        &["--secret", "s", "--node-timeout-ms", "abc"],
        "--node-timeout-ms",
    );
    run_bad(
        &[
            "--secret",
            "s",
            "--heartbeat-interval-ms",
            "5000",
            "--node-timeout-ms",
            "1000",
        ],
        "--node-timeout-ms",
    );
    run_bad(
        &["--secret", "s", "--ticket-ttl-secs", "0"],
        "--ticket-ttl-secs",
    );
    run_bad(
        &["--secret", "s", "--turn-urls", "http://turn.example:3478"],
        "--turn-urls",
    );
    run_bad(&["--secret", "s", "--stun-urls", "turn:x"], "--stun-urls");
    run_bad(&["--secret", "s", "--turn-urls", "turn:x"], "--turn-secret");
    run_bad(
        &[
            "--secret",
            "s",
            "--turn-urls",
            "turn:x",
            "--turn-secret",
            "k",
            "--turn-ttl-secs",
            "abc",
        ],
        "--turn-ttl-secs",
    );
}

#[test]
fn env_vars_are_read() {
    let out = Command::new(central_bin())
        .env("CENTRAL_SECRET", "s")
        .env("CENTRAL_HTTP_LISTEN", "garbage")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http-listen"));
}

#[test]
fn help_lists_every_flag() {
    let out = Command::new(central_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--http-listen",
        "CENTRAL_HTTP_LISTEN",
        "--grpc-listen",
        "--secret",
        "--jwt-secret",
        "--heartbeat-interval-ms",
        "--node-timeout-ms",
        "--redis-url",
        "--dev",
        "CENTRAL_DEV",
        "--log-json",
        "--ticket-ttl-secs",
        "--probe-interval-ms",
        "--stun-urls",
        "CENTRAL_STUN_URLS",
        "--turn-urls",
        "CENTRAL_TURN_URLS",
        "--turn-secret",
        "CENTRAL_TURN_SECRET",
        "--turn-ttl-secs",
        "CENTRAL_TURN_TTL_SECS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_0() {
    let mut c = Central::start(Timing::FAST, &[]).await;
    let ready = reqwest::get(format!("{}/readyz", c.url())).await.unwrap();
    assert_eq!(ready.status(), 200);
    c.proc.signal(15);
    let status = c.proc.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(reqwest::get(format!("{}/healthz", c.url())).await.is_err());
}

#[tokio::test]
async fn log_json_writes_json_lines() {
    let port = testkit::free_port();
    let child = Command::new(central_bin())
        .args(["--secret", "s", "--log-json"])
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    testkit::wait_until("central up", Duration::from_secs(15), || {
        let url = url.clone();
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
    let _ = Command::new("kill")
        .args(["-15", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().expect("some log line");
    let v: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert!(v.get("level").is_some(), "{first}");
}

#[tokio::test]
async fn turn_secret_is_not_logged() {
    const TURN_SECRET: &str = "turn-secret-that-must-not-be-logged";
    let port = testkit::free_port();
    let child = Command::new(central_bin())
        .args(["--secret", "s", "--turn-urls", "turn:127.0.0.1:3478"])
        .args([
            "--turn-secret",
            TURN_SECRET,
            "--stun-urls",
            "stun:127.0.0.1:3478",
        ])
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    testkit::wait_until("central up", Duration::from_secs(15), || {
        let url = format!("{base}/healthz");
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
    // A login (503: no node) and the metrics page go through the logged paths too.
    let (status, _) = common::login(&base, Some("alice"), None).await;
    assert_eq!(status, 503);
    let _ = reqwest::get(format!("{base}/metrics")).await.unwrap();
    let _ = Command::new("kill")
        .args(["-15", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("central serving"), "{logs}");
    assert!(
        !logs.contains(TURN_SECRET),
        "the TURN secret is in the logs:\n{logs}"
    );
}
