//! The `loadgen` binary: bad flags exit non-zero with one line naming the flag, and a run
//! with `--json` writes the report file with the keys tools rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::start_node;

use std::process::Stdio;

use serde_json::Value;
use signal_node::Directory;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

fn loadgen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    c.stdin(Stdio::null()).kill_on_drop(true);
    // Flags only: no LOADGEN_* from the environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("LOADGEN_") {
            c.env_remove(k);
        }
    }
    c
}

#[tokio::test]
async fn bad_values_exit_non_zero_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (vec!["--embedded", "--rate", "fast"], "--rate"),
        (vec!["--embedded", "--rate", "-5"], "--rate"),
        (vec!["--central", "ftp://example"], "--central"),
        (vec!["--node", "not a url"], "--node"),
        (vec!["--embedded", "--pairs", "0"], "--pairs"),
        (vec!["--embedded", "--duration", "-1"], "--duration"),
        (vec!["--embedded", "--candidates", "x"], "--candidates"),
        (
            vec!["--embedded", "--bind-ips", "127.0.0.9-127.0.0.1"],
            "--bind-ips",
        ),
        (vec![], "--embedded"),
        (
            vec!["--node", "ws://127.0.0.1:1/ws", "--scenario", "reconnect"],
            "--scenario reconnect",
        ),
    ] {
        let out = loadgen().args(&args).output().await.unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // The env var is read like the flag.
    let out = loadgen()
        .env("LOADGEN_RATE", "nope")
        .arg("--embedded")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
    // Boolean env vars take 1/0 as well as true/false.
    let out = loadgen()
        .env("LOADGEN_EMBEDDED", "1")
        .env("LOADGEN_NO_PROGRESS", "1")
        .env("LOADGEN_PAIRS", "0")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pairs"), "{err}");
}

#[tokio::test]
async fn help_lists_the_flags() {
    let out = loadgen().arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--central",
        "--node",
        "--embedded",
        "--pairs",
        "--rate",
        "--duration",
        "--warmup",
        "--candidates",
        "--bind-ips",
        "--json",
        "--plot",
        "--fail-on-errors",
        "--scenario",
        "--jwt-secret",
        "LOADGEN_RATE",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

fn assert_report_keys(v: &Value) {
    for key in [
        "setups",
        "errors",
        "errors_by_type",
        "setups_per_s",
        "messages_per_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    for route in ["same_node", "cross_node"] {
        for key in ["setups", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(v[route].get(key).is_some(), "missing {route}.{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_against_nodes() {
    let directory = Directory::memory();
    let stop = CancellationToken::new();
    let n1 = start_node("node-a", directory.clone(), stop.clone()).await;
    let n2 = start_node("node-b", directory.clone(), stop.clone()).await;
    let dir = std::env::temp_dir().join(format!("loadgen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = loadgen()
        .args(["--node", &n1, "--node", &n2, "--pairs", "4", "--rate", "20"])
        .args([
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--fail-on-errors",
            "--json",
        ])
        .arg(&json)
        .output()
        .await
        .unwrap();
    stop.cancel();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("setups"), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_report_keys(&v);
    assert!(v["setups"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn embedded_one_liner_writes_json_and_plot() {
    let dir = std::env::temp_dir().join(format!("loadgen-cli-emb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    let out = loadgen()
        .args([
            "--embedded",
            "--pairs",
            "6",
            "--rate",
            "30",
            "--duration",
            "1",
        ])
        .args(["--warmup", "0.3", "--candidates", "2", "--fail-on-errors"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("embedded cluster"), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_report_keys(&v);
    assert!(v["setups"].as_u64().unwrap() > 0, "{v}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.contains("<svg") && plot.contains("call setup latency"),
        "not the plot"
    );
    std::fs::remove_dir_all(&dir).ok();
}
