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
        "--open-login",
        "CENTRAL_OPEN_LOGIN",
        "--jwt-audience",
        "CENTRAL_JWT_AUDIENCE",
        "--jwt-issuer",
        "CENTRAL_JWT_ISSUER",
        "--jwt-leeway-secs",
        "--allowed-origins",
        "CENTRAL_ALLOWED_ORIGINS",
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
        .args(["--secret", "s", "--open-login", "--log-json"])
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

#[test]
fn no_jwt_secret_outside_dev_exits_with_one_line_naming_both_flags() {
    for env in [vec![], vec![("CENTRAL_OPEN_LOGIN", "false")]] {
        let out = Command::new(central_bin())
            .args(["--secret", "s", "--http-listen", "127.0.0.1:0"])
            .env_remove("CENTRAL_JWT_SECRET")
            .env_remove("CENTRAL_OPEN_LOGIN")
            .env_remove("CENTRAL_DEV")
            .envs(env.clone())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?}: should refuse to start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{env:?}: one line, got {stderr:?}");
        assert!(
            lines[0].contains("--jwt-secret") && lines[0].contains("--open-login"),
            "{stderr:?} must name both flags"
        );
    }
    run_bad(
        &["--secret", "s", "--jwt-secret", "j", "--open-login"],
        "--open-login",
    );
    run_bad(
        &[
            "--secret",
            "s",
            "--jwt-secret",
            "j",
            "--jwt-leeway-secs",
            "x",
        ],
        "--jwt-leeway-secs",
    );
    run_bad(
        &[
            "--secret",
            "s",
            "--open-login",
            "--allowed-origins",
            "example.com",
        ],
        "--allowed-origins",
    );
}

/// Starts central with `args` (and `env`), stderr captured; returns it and its HTTP base URL.
async fn spawn_logging(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    let port = testkit::free_port();
    let child = Command::new(central_bin())
        .args(args)
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .env_remove("CENTRAL_JWT_SECRET")
        .env_remove("CENTRAL_OPEN_LOGIN")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/healthz");
    testkit::wait_until("central up", Duration::from_secs(15), || {
        let url = url.clone();
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
    (child, base)
}

/// SIGTERM, wait for the exit, the captured stderr.
fn stop_and_read(child: std::process::Child) -> String {
    let _ = Command::new("kill")
        .args(["-15", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn open_login_serves_warns_once_and_says_so_in_readyz() {
    // Through the env var, as the chart and compose pass it.
    let (child, base) = spawn_logging(
        &["--secret", "s", "--log-json"],
        &[("CENTRAL_OPEN_LOGIN", "true")],
    )
    .await;
    let ready: serde_json::Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["openLogin"], true, "{ready}");
    // `?user=` is enough: no node yet, so 503 (not 401).
    let (status, body) = common::login(&base, Some("alice"), None).await;
    assert_eq!(status, 503, "{body}");
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("central_open_login 1"), "{m}");
    let stderr = stop_and_read(child);
    let warnings: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .collect();
    assert_eq!(warnings.len(), 1, "one warning at start: {stderr}");
    let text = warnings[0].to_string();
    assert!(
        text.contains("login is OPEN") && text.contains("--open-login"),
        "{text}"
    );
}

#[tokio::test]
async fn jwt_login_does_not_warn_and_readyz_says_so() {
    let (child, base) = spawn_logging(&["--secret", "s", "--jwt-secret", "j"], &[]).await;
    let ready: serde_json::Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["openLogin"], false, "{ready}");
    let (status, body) = common::login(&base, Some("alice"), None).await;
    assert_eq!(status, 401, "{body}");
    let stderr = stop_and_read(child);
    assert!(!stderr.contains("login is OPEN"), "{stderr}");
}

#[tokio::test]
async fn turn_secret_is_not_logged() {
    const TURN_SECRET: &str = "turn-secret-that-must-not-be-logged";
    let port = testkit::free_port();
    let child = Command::new(central_bin())
        .args(["--secret", "s", "--open-login"])
        .args(["--turn-urls", "turn:127.0.0.1:3478"])
        .args([
            "--turn-secret",
            TURN_SECRET,
            "--stun-urls",
            "stun:127.0.0.1:3478",
        ])
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .env_remove("CENTRAL_JWT_SECRET")
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
