//! Shared helpers of central's integration tests: real `central` and `signal-node` processes
//! on free loopback ports, and HTTP calls with reqwest.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use signal_proto::grpc_auth::{AuthChannel, GrpcKey, Signer};
use signal_proto::registry::registry_client::RegistryClient;
use testkit::{free_port, wait_until, Proc};
use tonic::transport::Channel;

pub const SECRET: &str = "test-cluster-secret";

pub fn central_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_central"))
}

/// The signal-node binary next to central's in the same target dir.
pub fn node_bin() -> PathBuf {
    let p = central_bin().with_file_name("signal-node");
    assert!(
        p.exists(),
        "{} not found: build it first with `cargo build -p signal-node` \
         (run the tests as `cargo build -p signal-node && cargo test -p central`)",
        p.display()
    );
    p
}

/// Timings of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub node_timeout_ms: u64,
    pub probe_ms: u64,
}

impl Timing {
    /// Short timeouts, for eviction and restart tests.
    pub const FAST: Timing = Timing {
        heartbeat_ms: 200,
        node_timeout_ms: 1000,
        probe_ms: 200,
    };
    /// Heartbeats too rare to reset the assignment counters during a test.
    pub const SLOW: Timing = Timing {
        heartbeat_ms: 30_000,
        node_timeout_ms: 90_000,
        probe_ms: 500,
    };
}

/// A central process.
pub struct Central {
    pub proc: Proc,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl Central {
    pub async fn start(timing: Timing, extra: &[&str]) -> Central {
        Self::start_on(free_port(), free_port(), timing, extra).await
    }

    /// Starts central on the given ports. Login is open (`--open-login`) unless `extra`
    /// gives a `--jwt-secret`.
    pub async fn start_on(
        http_port: u16,
        grpc_port: u16,
        timing: Timing,
        extra: &[&str],
    ) -> Central {
        let mut cmd = Command::new(central_bin());
        cmd.args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--secret", SECRET])
            .args(["--heartbeat-interval-ms", &timing.heartbeat_ms.to_string()])
            .args(["--node-timeout-ms", &timing.node_timeout_ms.to_string()])
            .args(["--probe-interval-ms", &timing.probe_ms.to_string()])
            .args(if extra.contains(&"--jwt-secret") {
                &[][..]
            } else {
                &["--open-login"][..]
            })
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("CENTRAL_JWT_SECRET")
            .stdout(Stdio::null());
        let proc = Proc::spawn("central", &mut cmd);
        let c = Central {
            proc,
            http_port,
            grpc_port,
        };
        let url = format!("{}/healthz", c.url());
        wait_until(
            "central to answer /healthz",
            Duration::from_secs(15),
            || {
                let url = url.clone();
                async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
            },
        )
        .await;
        c
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `/v1/nodes` -> the `nodes` array.
    pub async fn nodes(&self) -> Vec<Value> {
        nodes(&self.url()).await
    }

    pub async fn node_ids(&self) -> Vec<String> {
        self.nodes()
            .await
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn login(&self, user: &str) -> (u16, Value) {
        login(&self.url(), Some(user), None).await
    }

    /// Waits until central lists exactly `ids`, each of them reachable (it answered a probe:
    /// only then is it handed out).
    pub async fn wait_nodes(&self, ids: &[&str], timeout: Duration) {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        wait_until(
            &format!("central to list nodes {want:?}, reachable"),
            timeout,
            || {
                let want = want.clone();
                async move {
                    let nodes = self.nodes().await;
                    let mut got: Vec<String> = nodes
                        .iter()
                        .map(|n| n["id"].as_str().unwrap().to_owned())
                        .collect();
                    got.sort();
                    got == want && nodes.iter().all(|n| n["reachable"] == true)
                }
            },
        )
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn nodes(base: &str) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{base}/v1/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// `GET /v1/endpoint` -> (status, JSON body).
pub async fn login(base: &str, user: Option<&str>, bearer: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("{base}/v1/endpoint"));
    if let Some(u) = user {
        req = req.query(&[("user", u)]);
    }
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body)
}

/// A signal-node process registered with a central.
pub struct Node {
    pub proc: Proc,
    pub id: String,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl Node {
    pub fn start(id: &str, central_grpc: &str, weight: u32, extra: &[&str]) -> Node {
        Self::start_with_secret(id, central_grpc, SECRET, weight, extra)
    }

    /// [`Node::start`] with a cluster secret of its own.
    pub fn start_with_secret(
        id: &str,
        central_grpc: &str,
        secret: &str,
        weight: u32,
        extra: &[&str],
    ) -> Node {
        let http_port = free_port();
        let grpc_port = free_port();
        let mut cmd = Command::new(node_bin());
        cmd.args(["--id", id])
            .args(["--listen", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--central", central_grpc])
            .args(["--secret", secret])
            .args(["--weight", &weight.to_string()])
            .args(["--drain-ms", "200"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("CENTRAL_JWT_SECRET")
            .stdout(Stdio::null());
        Node {
            proc: Proc::spawn(&format!("signal-node {id}"), &mut cmd),
            id: id.to_owned(),
            http_port,
            grpc_port,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.http_port)
    }
}

/// A Registry client signing its calls with [`SECRET`], as a node does.
pub async fn registry_client(grpc_url: &str) -> RegistryClient<AuthChannel<Channel>> {
    let channel = Channel::from_shared(grpc_url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    RegistryClient::new(AuthChannel::new(
        channel,
        Signer::new(GrpcKey::new(SECRET.as_bytes())),
    ))
}
