//! One simulated user's connection, made like a real client: log in at central (dev login or a
//! minted HS256 JWT), or go straight to a node in dev-auth mode; open the WebSocket from a
//! chosen source address; wait for the Welcome; then send and read ROAP frames.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use signal_proto::{Message, UserId};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::WebSocketStream;

use crate::arrival::Stream;
use crate::config::{BindIps, Target};

/// Name of the extra field carrying the sender's clock (µs), relayed untouched by the nodes.
pub const SENT_FIELD: &str = "lgSent";

/// How users reach the cluster.
#[derive(Debug, Clone)]
enum Access {
    Central { url: String, jwt: Option<JwtMinter> },
    Nodes(Vec<String>),
}

/// Opens connections for every user of the run (shared by all pairs).
pub struct Connector {
    http: reqwest::Client,
    access: Access,
    bind: BindIps,
    next_ip: AtomicU64,
    timeout: Duration,
    permits: Semaphore,
    read_buffer: usize,
    stamps: bool,
}

#[derive(serde::Deserialize)]
struct Endpoint {
    url: String,
    token: String,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

/// Mints the login JWTs the application's backend would: HS256, `sub` = user, and the `aud` /
/// `iss` central expects when it checks them.
#[derive(Clone)]
pub struct JwtMinter {
    key: EncodingKey,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for JwtMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtMinter")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtMinter {
    pub fn new(secret: &str, audience: Option<String>, issuer: Option<String>) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            audience,
            issuer,
        }
    }

    fn mint(&self, user: &str) -> anyhow::Result<String> {
        let now = unix_now();
        let claims = Claims {
            sub: user,
            iat: now,
            exp: now + 3600,
            aud: self.audience.as_deref(),
            iss: self.issuer.as_deref(),
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.key).context("minting JWT")
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Percent-encodes a query parameter value.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Small read buffers: tens of thousands of connections, frames of a few KB. Each read
/// zero-fills this much first (tungstenite), so it is kept small: 16 KiB made the memset the
/// client's largest cost at 60,000 frames/s.
const READ_BUFFER: usize = 4 * 1024;

fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode_query(value))
}

impl Connector {
    /// `target` must be resolved (an embedded cluster is given as its central URL).
    pub fn new(
        target: &Target,
        jwt: Option<JwtMinter>,
        bind: BindIps,
        timeout: Duration,
        concurrency: usize,
    ) -> anyhow::Result<Connector> {
        let access = match target {
            Target::Central(url) => Access::Central {
                url: url.trim_end_matches('/').to_owned(),
                jwt,
            },
            Target::Nodes(urls) if !urls.is_empty() => Access::Nodes(urls.clone()),
            Target::Nodes(_) => bail!("no node URL"),
            Target::Embedded => bail!("the embedded cluster must be started first"),
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(concurrency.min(512))
            .build()
            .context("HTTP client")?;
        Ok(Connector {
            http,
            access,
            bind,
            next_ip: AtomicU64::new(0),
            timeout,
            permits: Semaphore::new(concurrency.max(1)),
            read_buffer: READ_BUFFER,
            stamps: false,
        })
    }

    /// Reads with a `bytes` buffer instead (tungstenite zero-fills it before every read, also
    /// the one that finds the socket empty: for 1,000 members each reading one short frame per
    /// message, a 4 KiB buffer made that memset the client's largest cost).
    pub fn with_read_buffer(mut self, bytes: usize) -> Connector {
        self.read_buffer = bytes;
        self
    }

    /// Keeps the kernel's receive timestamp of every read ([`Conn::arrival`]).
    pub fn with_arrival_stamps(mut self) -> Connector {
        self.stamps = true;
        self
    }

    /// Logs `user` in and opens its WebSocket (`slot` picks the node with `--node`), waiting
    /// for the Welcome; `resume` (session token, last frame number seen) asks to continue a
    /// session. At most `--connect-concurrency` of these run at once.
    pub async fn connect(
        &self,
        user: &UserId,
        slot: usize,
        resume: Option<(&str, u64)>,
    ) -> anyhow::Result<Conn> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| anyhow!("connector closed"))?;
        let started = Instant::now();
        tokio::time::timeout(
            self.timeout,
            self.connect_inner(user, slot, resume, started),
        )
        .await
        .map_err(|_| anyhow!("no Welcome within {:?}", self.timeout))?
    }

    async fn connect_inner(
        &self,
        user: &UserId,
        slot: usize,
        resume: Option<(&str, u64)>,
        started: Instant,
    ) -> anyhow::Result<Conn> {
        let mut url = match &self.access {
            Access::Nodes(urls) => with_query(&urls[slot % urls.len()], "user", user.as_str()),
            Access::Central { url, jwt } => {
                let ep = self.login(url, jwt.as_ref(), user).await?;
                with_query(&ep.url, "token", &ep.token)
            }
        };
        if let Some((session, last)) = resume {
            url = with_query(&url, "resume", session);
            url = with_query(&url, "last", &last.to_string());
        }
        let stream = self.dial(&url).await?;
        let stream = if self.stamps {
            Stream::stamped(stream).context("receive timestamps")?
        } else {
            Stream::Plain(stream)
        };
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            url.as_str(),
            stream,
            Some(ws_config(self.read_buffer)),
        )
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                anyhow!("upgrade refused: HTTP {}", resp.status())
            }
            e => anyhow!("WebSocket handshake: {e}"),
        })?;
        let welcome = loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => match Message::parse(t.as_str()) {
                    Ok(Message::Welcome(w)) => break w,
                    Ok(other) => bail!("first frame was {} instead of Welcome", other.kind()),
                    Err(e) => bail!("first frame unreadable: {}", e.error),
                },
                Some(Ok(WsMessage::Close(f))) => {
                    bail!("closed before Welcome ({:?})", f.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("before Welcome: {e}"),
                None => bail!("connection ended before Welcome"),
            }
        };
        Ok(Conn {
            ws,
            user: user.clone(),
            node: welcome.node.into_string(),
            session: welcome.session,
            resumed: welcome.resumed.unwrap_or(false),
            took: started.elapsed(),
        })
    }

    async fn login(
        &self,
        central: &str,
        jwt: Option<&JwtMinter>,
        user: &UserId,
    ) -> anyhow::Result<Endpoint> {
        let mut req = self
            .http
            .get(format!("{central}/v1/endpoint"))
            .query(&[("user", user.as_str())]);
        if let Some(minter) = jwt {
            req = req.bearer_auth(minter.mint(user.as_str())?);
        }
        let resp = req.send().await.context("login request")?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            bail!("login refused: HTTP {status}: {msg}");
        }
        resp.json::<Endpoint>().await.context("login response")
    }

    /// Opens the TCP connection, bound to the next source address of `--bind-ips`.
    async fn dial(&self, url: &str) -> anyhow::Result<TcpStream> {
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            url.parse().context("bad WebSocket URL")?;
        let host = uri.host().ok_or_else(|| anyhow!("no host in {url}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let source = self
            .bind
            .nth(self.next_ip.fetch_add(1, Ordering::Relaxed))
            .map(IpAddr::V4);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| source.is_none() || a.is_ipv4())
            .copied()
            .ok_or_else(|| anyhow!("{host} has no usable address"))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding to {ip}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).ok();
        Ok(stream)
    }
}

/// What a connection yielded.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Frames are moved once, straight into a queue.
pub enum Frame {
    /// A ROAP frame, with the moment it was read.
    Msg(Message, Instant),
    /// A frame that is not a valid message (logged once, counted as stale).
    Garbage,
    /// The connection closed (close code, if a close frame came).
    Closed(Option<u16>),
}

/// An open, welcomed connection of one user.
pub struct Conn {
    ws: WebSocketStream<Stream>,
    pub user: UserId,
    /// The node that sent the Welcome.
    pub node: String,
    /// The Welcome's session token (`None` from a node without sessions).
    pub session: Option<String>,
    /// Whether the Welcome continued the session asked for.
    pub resumed: bool,
    /// Login + upgrade + Welcome.
    pub took: Duration,
}

impl Conn {
    /// Queues a message without flushing (see [`flush`](Self::flush)).
    pub async fn feed(&mut self, msg: &Message) -> anyhow::Result<()> {
        self.ws
            .feed(WsMessage::text(msg.to_json()))
            .await
            .context("send")
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.ws.flush().await.context("send")
    }

    pub async fn send(&mut self, msg: &Message) -> anyhow::Result<()> {
        self.ws
            .send(WsMessage::text(msg.to_json()))
            .await
            .context("send")
    }

    /// The next frame (pings are answered by the WebSocket layer). Cancel-safe.
    pub async fn next(&mut self) -> Frame {
        loop {
            return match self.ws.next().await {
                Some(Ok(WsMessage::Text(t))) => match Message::parse(t.as_str()) {
                    Ok(m) => Frame::Msg(m, Instant::now()),
                    Err(e) => {
                        tracing::warn!(user = %self.user, error = %e.error, "unreadable frame from the node");
                        Frame::Garbage
                    }
                },
                Some(Ok(WsMessage::Binary(_))) => {
                    tracing::warn!(user = %self.user, "binary frame from the node");
                    Frame::Garbage
                }
                Some(Ok(WsMessage::Close(f))) => {
                    Frame::Closed(Some(f.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                Some(Err(_)) | None => Frame::Closed(None),
            };
        }
    }

    /// The next text frame as it came (`Err` with the close code when the connection ended).
    /// Cancel-safe.
    pub async fn next_text(&mut self) -> Result<String, Option<u16>> {
        loop {
            return match self.ws.next().await {
                Some(Ok(WsMessage::Text(t))) => Ok(t.as_str().to_owned()),
                Some(Ok(WsMessage::Close(f))) => Err(Some(f.map_or(1005, |f| u16::from(f.code)))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Err(None),
            };
        }
    }

    /// When the bytes of the last read reached this connection's socket (with
    /// [`Connector::with_arrival_stamps`]; a frame read together with a later one gets the
    /// later one's stamp).
    pub fn arrival(&self) -> Option<std::time::SystemTime> {
        self.ws.get_ref().arrival()
    }

    /// The next text frame as it came, with the moment it was read (`Err` with the close
    /// code when the connection ended). No copy and no parse: for a hot loop that reads only a
    /// few fields (`--scenario rooms`). Cancel-safe.
    pub async fn next_text_at(&mut self) -> Result<(Utf8Bytes, Instant), Option<u16>> {
        loop {
            return match self.ws.next().await {
                Some(Ok(WsMessage::Text(t))) => Ok((t, Instant::now())),
                Some(Ok(WsMessage::Close(f))) => Err(Some(f.map_or(1005, |f| u16::from(f.code)))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Err(None),
            };
        }
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(WsMessage::text(text)).await.context("send")
    }

    /// Acknowledges every frame up to `n` (contract section 5).
    pub async fn ack(&mut self, n: u64) -> anyhow::Result<()> {
        self.send(&Message::Ack(signal_proto::roap::Ack { n }))
            .await
    }

    /// After the node's close frame (`next_text` gave `Err`): sends the close reply now, as a
    /// browser does. (tungstenite queues it and writes it on the next read or flush; a client
    /// that goes on to reconnect without one leaves the node's reader waiting for it, and a
    /// takeover of the session waits for that reader: 0.8 s per resume.)
    pub async fn reply_close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ws.flush()).await;
    }

    /// Logs out: a normal close, waiting briefly for the node's close reply.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            with_query("ws://h:1/ws", "user", "a b&c"),
            "ws://h:1/ws?user=a%20b%26c"
        );
        assert_eq!(
            with_query("ws://h:1/ws?x=1", "token", "t.K-_~"),
            "ws://h:1/ws?x=1&token=t.K-_~"
        );
    }

    #[test]
    fn jwt_has_the_user_as_subject() {
        let token = JwtMinter::new("s3cret", Some("signal".into()), Some("https://app".into()))
            .mint("alice")
            .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["sub", "exp", "aud", "iss"]);
        v.set_audience(&["signal"]);
        v.set_issuer(&["https://app"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
    }
}
