//! Credentials of the internal gRPC calls (central's `Registry`, the nodes' `Relay`): the
//! header value a caller sends, its check, the client wrapper that adds it to every call and
//! the server layer that refuses calls without it (UNAUTHENTICATED, counted, logged once per
//! peer and minute).
//!
//! Header `x-signal-auth: <unix ms>.<hex HMAC-SHA256(K, "grpc-v1|" ms "|" method path)>`, where
//! `K = HMAC-SHA256(cluster secret, "signal-grpc-key-v1")` (a key of its own, so that no
//! ticket signature is ever a valid credential). Accepted within [`DEFAULT_SKEW`] of the
//! receiver's clock; the MAC is compared in constant time. A credential names one method, so
//! it cannot be replayed on another one, and it stops working after the skew.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{Either, Ready};
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The metadata key carrying the credential.
pub const HEADER: &str = "x-signal-auth";
/// How far a credential's timestamp may be from the receiver's clock.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(30);
/// The secret of nodes started with `--dev-auth` and no `--secret`: public, so it protects
/// nothing. Such nodes talk only to each other and to a central started with this secret.
pub const DEV_SECRET: &str = "signal-dev-insecure-cluster-secret";
/// A client reuses a credential for this long (fewer MACs on the relay path).
const REUSE_MS: u64 = 1000;
/// Peers remembered for the rate-limited refusal log.
const MAX_LOGGED_PEERS: usize = 1024;
/// One log line per peer address and this interval.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a call's credential is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no x-signal-auth credential")]
    Missing,
    #[error("x-signal-auth credential is malformed")]
    Malformed,
    #[error("x-signal-auth credential is outside the allowed clock skew")]
    Stale,
    #[error("x-signal-auth credential has a bad signature (another cluster secret?)")]
    BadSignature,
}

impl AuthError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Stale => "stale",
            AuthError::BadSignature => "bad_signature",
        }
    }
}

/// The key internal calls are signed with, derived from the cluster secret. Cheap to clone.
#[derive(Clone)]
pub struct GrpcKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for GrpcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcKey(..)")
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// Milliseconds since the unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl GrpcKey {
    /// The key of cluster secret `secret`.
    pub fn new(secret: &[u8]) -> GrpcKey {
        let mut derive = hmac(secret);
        derive.update(b"signal-grpc-key-v1");
        GrpcKey {
            mac: hmac(&derive.finalize().into_bytes()),
        }
    }

    fn mac(&self, path: &str, ms: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(b"grpc-v1|");
        mac.update(ms.as_bytes());
        mac.update(b"|");
        mac.update(path.as_bytes());
        mac
    }

    /// The header value for a call of `path` (e.g. `/signal.relay.v1.Relay/Deliver`) at
    /// `now_ms`.
    pub fn sign(&self, path: &str, now_ms: u64) -> String {
        let ms = now_ms.to_string();
        let tag = self.mac(path, &ms).finalize().into_bytes();
        let mut out = String::with_capacity(ms.len() + 1 + 64);
        out.push_str(&ms);
        out.push('.');
        for b in tag {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }

    /// Checks a header value for a call of `path` received at `now_ms`.
    pub fn verify(
        &self,
        path: &str,
        value: Option<&[u8]>,
        now_ms: u64,
        skew: Duration,
    ) -> Result<(), AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        if value.len() > 128 {
            return Err(AuthError::Malformed);
        }
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
        let (ms, hex) = value.split_once('.').ok_or(AuthError::Malformed)?;
        if ms.is_empty() || ms.len() > 20 || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::Malformed);
        }
        let at: u64 = ms.parse().map_err(|_| AuthError::Malformed)?;
        let tag = unhex(hex).ok_or(AuthError::Malformed)?;
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        if at.abs_diff(now_ms) > skew_ms {
            return Err(AuthError::Stale);
        }
        // Constant-time comparison.
        self.mac(path, ms)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Client side.

/// Signs calls, reusing a credential per method for up to a second. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Signer {
    key: GrpcKey,
    cache: Arc<Mutex<Vec<(String, u64, HeaderValue)>>>,
}

impl Signer {
    pub fn new(key: GrpcKey) -> Signer {
        Signer {
            key,
            cache: Arc::default(),
        }
    }

    /// The header value for a call of `path` now.
    pub fn header(&self, path: &str) -> HeaderValue {
        let now = unix_ms();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, at, v)) = cache.iter().find(|(p, _, _)| p == path) {
            if now >= *at && now - *at < REUSE_MS {
                return v.clone();
            }
        }
        let value = match HeaderValue::from_str(&self.key.sign(path, now)) {
            Ok(v) => v,
            // Digits, a dot and hex: always a valid header value.
            Err(_) => HeaderValue::from_static(""),
        };
        let len = cache.len();
        match cache.iter_mut().find(|(p, _, _)| p == path) {
            Some(e) => {
                e.1 = now;
                e.2 = value.clone();
            }
            // Method paths come from generated code: a handful per service.
            None if len < 64 => cache.push((path.to_owned(), now, value.clone())),
            None => {}
        }
        value
    }
}

/// A gRPC channel (any tower service of HTTP requests) that adds the credential to every
/// call: wrap the `Channel` of a generated client with it.
#[derive(Clone, Debug)]
pub struct AuthChannel<S> {
    inner: S,
    signer: Signer,
}

impl<S> AuthChannel<S> {
    pub fn new(inner: S, signer: Signer) -> Self {
        AuthChannel { inner, signer }
    }
}

impl<S, B> tower::Service<http::Request<B>> for AuthChannel<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let value = self.signer.header(req.uri().path());
        req.headers_mut().insert(HEADER, value);
        self.inner.call(req)
    }
}

// ---------------------------------------------------------------------------------------------
// Server side.

/// The tower layer every internal gRPC server puts in front of its services
/// (`Server::builder().layer(..)`).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    key: GrpcKey,
    skew: Duration,
    metric: &'static str,
    log: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

impl AuthLayer {
    /// Refused calls count in the counter `metric` (label `reason`).
    pub fn new(key: GrpcKey, metric: &'static str) -> AuthLayer {
        AuthLayer {
            key,
            skew: DEFAULT_SKEW,
            metric,
            log: Arc::default(),
        }
    }

    fn refused(&self, peer: Option<SocketAddr>, path: &str, err: AuthError) {
        metrics::counter!(self.metric, "reason" => err.reason()).increment(1);
        let Some(peer) = peer else {
            tracing::warn!(path, error = %err, "internal gRPC call refused");
            return;
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let due = log
            .get(&peer.ip())
            .is_none_or(|last| now.duration_since(*last) >= LOG_EVERY);
        if due {
            if log.len() >= MAX_LOGGED_PEERS {
                log.retain(|_, last| now.duration_since(*last) < LOG_EVERY);
                if log.len() >= MAX_LOGGED_PEERS {
                    log.clear();
                }
            }
            log.insert(peer.ip(), now);
            drop(log);
            tracing::warn!(%peer, path, error = %err, "internal gRPC call refused (UNAUTHENTICATED); further refusals of this peer are not logged for a minute");
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

fn peer_of<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let value = req.headers().get(HEADER).map(HeaderValue::as_bytes);
        let path = req.uri().path();
        match self
            .layer
            .key
            .verify(path, value, unix_ms(), self.layer.skew)
        {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => {
                self.layer.refused(peer_of(&req), path, e);
                let status = tonic::Status::unauthenticated(e.to_string());
                Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const P: &str = "/signal.relay.v1.Relay/Deliver";

    #[test]
    fn sign_and_verify() {
        let k = GrpcKey::new(b"secret");
        let v = k.sign(P, 1_000_000);
        let skew = DEFAULT_SKEW;
        assert_eq!(k.verify(P, Some(v.as_bytes()), 1_000_000, skew), Ok(()));
        assert_eq!(k.verify(P, Some(v.as_bytes()), 1_029_000, skew), Ok(()));
        assert_eq!(k.verify(P, Some(v.as_bytes()), 971_000, skew), Ok(()));
        assert_eq!(
            k.verify(P, Some(v.as_bytes()), 1_031_000, skew),
            Err(AuthError::Stale)
        );
        assert_eq!(
            k.verify(
                "/signal.relay.v1.Relay/Kick",
                Some(v.as_bytes()),
                1_000_000,
                skew
            ),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            GrpcKey::new(b"other").verify(P, Some(v.as_bytes()), 1_000_000, skew),
            Err(AuthError::BadSignature)
        );
        assert_eq!(k.verify(P, None, 0, skew), Err(AuthError::Missing));
        for bad in ["", "1.", ".ab", "x.00", "12", &"9".repeat(200)] {
            assert_eq!(
                k.verify(P, Some(bad.as_bytes()), 1_000_000, skew),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        // The timestamp is signed: moving it breaks the MAC.
        let (_, tag) = v.split_once('.').unwrap();
        let moved = format!("1000001.{tag}");
        assert_eq!(
            k.verify(P, Some(moved.as_bytes()), 1_000_000, skew),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn signer_reuses_within_a_second() {
        let s = Signer::new(GrpcKey::new(b"s"));
        let a = s.header(P);
        let b = s.header(P);
        let k = GrpcKey::new(b"s");
        assert_eq!(
            k.verify(P, Some(a.as_bytes()), unix_ms(), DEFAULT_SKEW),
            Ok(())
        );
        assert!(
            a == b
                || k.verify(P, Some(b.as_bytes()), unix_ms(), DEFAULT_SKEW)
                    .is_ok()
        );
    }
}
