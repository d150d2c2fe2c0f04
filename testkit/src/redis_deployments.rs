//! Real Redis deployments beyond one server, on loopback and free ports, cleaned up on drop:
//! a Redis Cluster (3 masters + 3 replicas), a Sentinel setup (1 master, 1 replica, 3
//! sentinels) and a TLS server with a CA made by the test (`openssl` CLI). They are driven with
//! `redis-cli` (administration only; the code under test talks through the `redis` crate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, redis_server_bin, wait_until, Proc};

/// The path of `redis-cli` (installed with redis-server).
pub fn redis_cli_bin() -> PathBuf {
    for p in ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("redis-cli not found: apt-get install redis-tools");
}

/// Runs `redis-cli -p port args...`; `None` when it fails or cannot connect.
pub async fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), out)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "testkit-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` on `port` with its own working directory under `dir`: replicas that share
/// one directory would race on `dump.rdb` during their full syncs and load each other's data.
fn server(name: &str, dir: &Path, port: u16, extra: &[String]) -> Proc {
    let dir = dir.join(format!("server-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    Proc::spawn(
        name,
        Command::new(redis_server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null()),
    )
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
}

/// Waits until every replica of the master on `port` has acknowledged everything it was sent
/// (so a kill of the master loses nothing written before this call).
pub async fn wait_replicated(port: u16) {
    wait_until(
        "replicas to catch up with the master",
        Duration::from_secs(10),
        || async move {
            let Some(info) = cli(port, &["INFO", "replication"]).await else {
                return false;
            };
            let Some(offset) = field(&info, "master_repl_offset") else {
                return false;
            };
            let replicas: Vec<&str> = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("offset="))
                .collect();
            !replicas.is_empty()
                && replicas
                    .iter()
                    .all(|l| l.contains(&format!("offset={offset},")))
        },
    )
    .await;
}

/// One `redis-server --cluster-enabled yes` process.
struct ClusterNode {
    port: u16,
    proc: Option<Proc>,
}

/// A real Redis Cluster: 3 masters, 3 replicas, `cluster-node-timeout` 1 s (a dead master's
/// replica takes over within a few seconds).
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    _dir: Scratch,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = Scratch::new("cluster");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let port = free_port();
            let bus = free_port();
            let proc = server(
                &format!("redis-cluster-{i}"),
                &dir.0,
                port,
                &[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-port".into(),
                    bus.to_string(),
                    "--cluster-config-file".into(),
                    format!("nodes-{port}.conf"),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--cluster-replica-validity-factor".into(),
                    "0".into(),
                ],
            );
            nodes.push(ClusterNode {
                port,
                proc: Some(proc),
            });
        }
        for n in &nodes {
            let port = n.port;
            wait_until(
                "cluster node to answer",
                Duration::from_secs(10),
                || async move {
                    cli(port, &["PING"])
                        .await
                        .is_some_and(|s| s.contains("PONG"))
                },
            )
            .await;
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = tokio::process::Command::new(redis_cli_bin());
        create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let status = create.status().await.unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    /// The seed URLs, comma-separated (the `--redis-url` of `--redis-mode cluster`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Waits until every live node says `cluster_state:ok` and every master has a replica
    /// whose link is up.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let ports = self.live_ports();
        wait_until("the cluster to be ok", timeout, || {
            let ports = ports.clone();
            async move {
                for p in &ports {
                    let Some(info) = cli(*p, &["CLUSTER", "INFO"]).await else {
                        return false;
                    };
                    if field(&info, "cluster_state") != Some("ok") {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }

    /// The port of the master serving `key`'s slot.
    pub async fn master_for(&self, key: &str) -> u16 {
        self.try_master_for(key)
            .await
            .unwrap_or_else(|| panic!("no live master serves {key:?}"))
    }

    /// The port of the master serving `key`'s slot, if one does (not during a failover).
    pub async fn try_master_for(&self, key: &str) -> Option<u16> {
        let port = self.live_ports()[0];
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .await?
            .trim()
            .parse()
            .ok()?;
        let shards = cli(port, &["CLUSTER", "NODES"]).await?;
        for line in shards.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        let addr = f[1].split('@').next()?;
                        return addr.rsplit(':').next()?.parse().ok();
                    }
                }
            }
        }
        None
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        for n in &mut self.nodes {
            if n.port == port {
                n.proc = None;
            }
        }
    }

    /// Waits until a live master serves `key` again after its master on `old` died.
    pub async fn wait_failover(&self, key: &str, old: u16, timeout: Duration) {
        let ports = self.live_ports();
        let key = key.to_owned();
        wait_until("a replica to take over", timeout, || {
            let (ports, key) = (ports.clone(), key.clone());
            async move {
                let Some(info) = cli(ports[0], &["CLUSTER", "INFO"]).await else {
                    return false;
                };
                if field(&info, "cluster_state") != Some("ok") {
                    return false;
                }
                let Some(role) = cli(ports[0], &["CLUSTER", "NODES"]).await else {
                    return false;
                };
                // The dead node is marked failed and someone else is master of its slots.
                role.lines()
                    .any(|l| l.contains(&format!(":{old}@")) && l.contains("fail"))
                    && self.try_master_for(&key).await.is_some_and(|p| p != old)
            }
        })
        .await;
    }
}

/// A real Sentinel setup: master `mymaster`, one replica, 3 sentinels (quorum 2) with
/// `down-after-milliseconds` 1000 and `failover-timeout` 3000.
pub struct RedisSentinel {
    pub master_port: u16,
    pub replica_port: u16,
    sentinel_ports: Vec<u16>,
    master: Option<Proc>,
    _replica: Proc,
    _sentinels: Vec<Proc>,
    _dir: Scratch,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinel {
    pub async fn start() -> RedisSentinel {
        let dir = Scratch::new("sentinel");
        let master_port = free_port();
        let replica_port = free_port();
        let master = server("redis-sentinel-master", &dir.0, master_port, &[]);
        let replica = server(
            "redis-sentinel-replica",
            &dir.0,
            replica_port,
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ],
        );
        wait_until(
            "the replica to sync",
            Duration::from_secs(15),
            || async move {
                cli(replica_port, &["INFO", "replication"])
                    .await
                    .is_some_and(|i| field(&i, "master_link_status") == Some("up"))
            },
        )
        .await;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir = dir.0.display()
                ),
            )
            .unwrap();
            sentinels.push(Proc::spawn(
                &format!("redis-sentinel-{i}"),
                Command::new(redis_server_bin())
                    .arg(&conf)
                    .args(["--sentinel", "--loglevel", "warning"])
                    .stdout(Stdio::null()),
            ));
            sentinel_ports.push(port);
        }
        for &p in &sentinel_ports {
            wait_until(
                "every sentinel to see the others and the replica",
                Duration::from_secs(30),
                || async move {
                    cli(p, &["SENTINEL", "CKQUORUM", SENTINEL_MASTER])
                        .await
                        .is_some_and(|s| s.contains("3 usable"))
                        && cli(p, &["SENTINEL", "REPLICAS", SENTINEL_MASTER])
                            .await
                            .is_some_and(|s| s.contains(&replica_port.to_string()))
                },
            )
            .await;
        }
        RedisSentinel {
            master_port,
            replica_port,
            sentinel_ports,
            master: Some(master),
            _replica: replica,
            _sentinels: sentinels,
            _dir: dir,
        }
    }

    /// The sentinels' URLs, comma-separated (the `--redis-url` of `--redis-mode sentinel`).
    pub fn urls(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the master.
    pub fn kill_master(&mut self) {
        self.master = None;
    }

    /// Waits until every sentinel names the replica as the master and it acts as one.
    pub async fn wait_failover(&self, timeout: Duration) {
        let ports = self.sentinel_ports.clone();
        let replica = self.replica_port;
        wait_until("sentinel to promote the replica", timeout, || {
            let ports = ports.clone();
            async move {
                for p in ports {
                    let named = cli(p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])
                        .await
                        .is_some_and(|s| s.lines().any(|l| l.trim() == replica.to_string()));
                    if !named {
                        return false;
                    }
                }
                cli(replica, &["INFO", "replication"])
                    .await
                    .is_some_and(|i| field(&i, "role") == Some("master"))
            }
        })
        .await;
    }
}

/// A `redis-server` that speaks only TLS (`--port 0 --tls-port`), with a CA and a server
/// certificate for 127.0.0.1 made at start with the `openssl` CLI.
pub struct RedisTls {
    pub port: u16,
    _proc: Proc,
    dir: Scratch,
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl not found: apt-get install openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

impl RedisTls {
    pub async fn start() -> RedisTls {
        let dir = Scratch::new("tls");
        let d = &dir.0;
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=testkit-ca",
            ],
            d,
        );
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
            d,
        );
        std::fs::write(
            d.join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
            d,
        );
        let port = free_port();
        let proc = Proc::spawn(
            "redis-server-tls",
            Command::new(redis_server_bin())
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .arg("--tls-cert-file")
                .arg(d.join("server.pem"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.pem"))
                .args(["--tls-auth-clients", "no"])
                .stdout(Stdio::null()),
        );
        let ca = d.join("ca.pem");
        wait_until("the TLS redis to answer", Duration::from_secs(10), || {
            let ca = ca.clone();
            async move {
                let out = tokio::process::Command::new(redis_cli_bin())
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "--tls",
                        "--cacert",
                    ])
                    .arg(&ca)
                    .arg("PING")
                    .stdin(Stdio::null())
                    .output()
                    .await;
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            }
        })
        .await;
        RedisTls {
            port,
            _proc: proc,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }
}
