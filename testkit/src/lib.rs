//! Test support for the workspace's integration tests: free ports, a real `redis-server`, a
//! real coturn `turnserver`, child processes that are killed when dropped, a JSON WebSocket client, and waiting on
//! conditions instead of sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod redis_deployments;
pub use redis_deployments::{RedisCluster, RedisSentinel, RedisTls};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A TCP port free on 127.0.0.1 for a server a test starts.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), so that no outgoing
/// connection takes it between this pick and the server's bind (a port from `bind(0)` is an
/// ephemeral one, and the tests open thousands of connections: `Address already in use` now
/// and then), each port once per test process (a counter from a random start), and checked
/// free. Falls back to `bind(0)` when the ephemeral range leaves no room below it.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    const LOW: u32 = 10_000;
    static RANGE: OnceLock<(u32, u32, AtomicU32)> = OnceLock::new();
    let (low, span, next) = RANGE.get_or_init(|| {
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32_768);
        let span = ephemeral.saturating_sub(LOW);
        let start = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        (
            LOW,
            span,
            AtomicU32::new((start % u64::from(span.max(1))) as u32),
        )
    });
    for _ in 0..*span.min(&4096) {
        let port = low + next.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(port) = u16::try_from(port) {
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 20 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    wait_until(&format!("port {addr} to accept"), timeout, || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// Root of the cargo workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by number (e.g. 15 for SIGTERM, 9 for SIGKILL).
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {} failed", self.name);
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `redis-server`, or a panic telling how to install it.
pub fn redis_server_bin() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("redis-server not found: run ./scripts/test.sh (installs it) or apt-get install redis-server");
}

/// A real `redis-server` on a free loopback port, without persistence, killed on drop.
pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    /// While the server is killed: its port, kept from other tests (see [`Redis::kill`]).
    hold: Option<PortHold>,
}

/// Keeps a loopback port taken while its server is down: every connection is accepted and
/// closed at once, so a client sees the outage as a broken connection, and no other test's
/// `free_port` gets the port meanwhile (one did: an HTTP server took a killed Redis's port and
/// central spoke Redis to it until its test timed out).
struct PortHold {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortHold {
    /// `None` if the port cannot be bound (then it is simply free, as before).
    fn take(port: u16) -> Option<PortHold> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind(("127.0.0.1", port)).ok()?;
        listener.set_nonblocking(true).ok()?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Some(PortHold {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PortHold {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Redis {
    pub async fn start() -> Redis {
        let port = free_port();
        let mut r = Redis {
            port,
            proc: None,
            hold: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL), as an outage would. Its port stays taken until
    /// [`Redis::restart`] (connections are accepted and closed at once).
    pub fn kill(&mut self) {
        self.proc = None;
        self.hold = PortHold::take(self.port);
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        self.proc = None;
        self.hold = None;
        let proc = Proc::spawn(
            "redis-server",
            Command::new(redis_server_bin())
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .stdout(Stdio::null()),
        );
        self.proc = Some(proc);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || async move { redis_ping(addr).await },
        )
        .await;
    }
}

async fn redis_ping(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// The path of coturn's `turnserver` (`TURNSERVER_BIN` or the Debian package's), or `None`.
/// Under `CI=true` a missing one is a panic telling how to install it, so that a TURN test
/// never passes by skipping on a machine that should run it.
pub fn turnserver_bin() -> Option<PathBuf> {
    let env = std::env::var_os("TURNSERVER_BIN").map(PathBuf::from);
    let found = env
        .into_iter()
        .chain(["/usr/bin/turnserver", "/usr/local/bin/turnserver"].map(PathBuf::from))
        .find(|p| p.exists());
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("turnserver not found (CI=true): run ./scripts/test.sh (installs it) or apt-get install coturn");
    }
    found
}

/// A real coturn `turnserver` on a free loopback port (UDP and TCP), relaying on 127.0.0.1,
/// checking TURN REST API credentials (`use-auth-secret`) against any of `secrets` (several:
/// as during a rotation), no TLS/DTLS; killed on drop. Ready once it answers a STUN Binding
/// request over UDP.
pub struct Coturn {
    pub port: u16,
    pub realm: String,
    dir: PathBuf,
    _proc: Proc,
}

impl Coturn {
    pub async fn start(bin: &Path, secrets: &[&str]) -> Coturn {
        let port = free_port();
        let realm = "signal.test".to_owned();
        let dir =
            std::env::temp_dir().join(format!("testkit-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let proc = Proc::spawn(
            "turnserver",
            Command::new(bin)
                .arg("-n") // no configuration file
                .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
                .args(["--listening-port", &port.to_string()])
                .args(["--min-port", "40000", "--max-port", "60000"])
                .arg("--use-auth-secret")
                .args(secrets.iter().map(|s| format!("--static-auth-secret={s}")))
                .args(["--realm", &realm])
                .args([
                    "--no-tls",
                    "--no-dtls",
                    "--no-cli",
                    "--no-stdout-log",
                    "--simple-log",
                ])
                .arg(format!("--log-file={}", dir.join("turn.log").display()))
                .arg(format!("--pidfile={}", dir.join("turn.pid").display()))
                .arg(format!("--db={}", dir.join("turndb").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(
            "turnserver to answer a STUN Binding request",
            Duration::from_secs(15),
            || async move { stun_binding(addr).await },
        )
        .await;
        Coturn {
            port,
            realm,
            dir,
            _proc: proc,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What it logged so far (for failure messages).
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One STUN Binding request over UDP: true on a Binding success response.
async fn stun_binding(addr: SocketAddr) -> bool {
    let Ok(sock) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(b"testkit-ping");
    if sock.send_to(&req, addr).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await,
        Ok(Ok((n, _))) if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == req[8..20]
    )
}

/// What a [`WsClient`] received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Json(Value),
    /// A close frame with its code (1005 when none was given).
    Closed(u16),
    /// The stream ended without a close frame.
    Ended,
}

/// A real WebSocket client that speaks JSON text frames.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Why a WebSocket connection was refused: the HTTP status, if there was a response.
#[derive(Debug)]
pub struct Refused {
    pub status: Option<u16>,
    pub error: String,
}

impl WsClient {
    /// Connects; `Err` carries the HTTP status of a refused upgrade.
    pub async fn try_connect(url: &str) -> Result<WsClient, Refused> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(WsClient { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
                status: Some(resp.status().as_u16()),
                error: format!("{resp:?}"),
            }),
            Err(e) => Err(Refused {
                status: None,
                error: e.to_string(),
            }),
        }
    }

    pub async fn connect(url: &str) -> WsClient {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e:?}"))
    }

    /// Connects and consumes the Welcome frame, returning it.
    pub async fn connect_welcomed(url: &str) -> (WsClient, Value) {
        let mut c = Self::connect(url).await;
        let w = c.next_json().await;
        assert_eq!(w["type"], "Welcome", "first frame must be Welcome: {w}");
        (c, w)
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.ws
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(WsMessage::Text(s.to_owned().into()))
            .await
            .unwrap();
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(WsMessage::Binary(b.into())).await.unwrap();
    }

    /// Next JSON frame, close or end, within 10 s (panics on timeout). Pings are skipped.
    pub async fn recv(&mut self) -> Received {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("nothing received within 10 s")
    }

    /// Like [`recv`](Self::recv) with a timeout; `None` when nothing came.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None => Received::Ended,
                Some(Err(_)) => Received::Ended,
                Some(Ok(WsMessage::Text(t))) => Received::Json(
                    serde_json::from_str(t.as_str()).expect("node sent invalid JSON"),
                ),
                Some(Ok(WsMessage::Close(frame))) => {
                    Received::Closed(frame.map(|f| u16::from(f.code)).unwrap_or(1005))
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                Some(Ok(WsMessage::Binary(_))) => panic!("node sent a binary frame"),
            });
        }
    }

    /// Next JSON frame (panics on close, end or timeout).
    pub async fn next_json(&mut self) -> Value {
        match self.recv().await {
            Received::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Waits for the close code (skipping JSON frames in between).
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.recv().await {
                Received::Json(_) => continue,
                Received::Closed(code) => return code,
                Received::Ended => return 1006,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}
