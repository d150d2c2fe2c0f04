//! The allow-list of browser `Origin`s (`--allowed-origins`) and the WebSocket upgrade's Origin
//! check: a browser page from an origin not on the list gets 403 before the upgrade; a request
//! without an `Origin` header (a non-browser client) passes. Central uses the same list type
//! for its CORS answers.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::http::{header, HeaderMap};

use crate::error::ApiError;

/// Most origins one `--allowed-origins` may list.
pub const MAX_ORIGINS: usize = 256;
/// Longest `Origin` value looked at (longer ones are refused, and logged truncated).
const MAX_ORIGIN_BYTES: usize = 512;

/// Which browser origins may connect: any (the default), or a list of exact
/// `scheme://host[:port]` origins. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// `None`: any origin. Entries are normalised (see [`normalize`]).
    list: Option<Arc<[String]>>,
}

/// Why an `--allowed-origins` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("{0:?} is not an origin: want scheme://host[:port] (e.g. https://app.example.com), or * for any")]
    NotAnOrigin(String),
    #[error("more than {MAX_ORIGINS} origins")]
    TooMany,
}

impl AllowedOrigins {
    /// Any origin may connect.
    pub fn any() -> Self {
        Self { list: None }
    }

    /// Only these origins (each `scheme://host[:port]`).
    pub fn only<I, S>(origins: I) -> Result<Self, OriginError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list: Vec<String> = Vec::new();
        for o in origins {
            let o = o.as_ref().trim();
            let n = normalize(o).ok_or_else(|| OriginError::NotAnOrigin(o.to_owned()))?;
            if !list.contains(&n) {
                list.push(n);
            }
            if list.len() > MAX_ORIGINS {
                return Err(OriginError::TooMany);
            }
        }
        Ok(Self {
            list: Some(list.into()),
        })
    }

    /// Whether every origin is allowed.
    pub fn is_any(&self) -> bool {
        self.list.is_none()
    }

    /// The listed origins (empty when any origin is allowed).
    pub fn origins(&self) -> &[String] {
        self.list.as_deref().unwrap_or(&[])
    }

    /// Whether a browser page from `origin` (an `Origin` header value) may connect.
    pub fn allows(&self, origin: &str) -> bool {
        match &self.list {
            None => true,
            Some(list) => {
                origin.len() <= MAX_ORIGIN_BYTES
                    && normalize(origin).is_some_and(|n| list.contains(&n))
            }
        }
    }

    /// Whether a request with these headers may go on: no `Origin` header (not a browser), or
    /// every `Origin` value allowed. `Err` carries the (truncated) refused value.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        if self.is_any() {
            return Ok(());
        }
        for v in headers.get_all(header::ORIGIN) {
            let allowed = v.to_str().is_ok_and(|s| self.allows(s));
            if !allowed {
                let shown = String::from_utf8_lossy(v.as_bytes());
                return Err(truncate(&shown, 128));
            }
        }
        Ok(())
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.list {
            None => f.write_str("*"),
            Some(list) => f.write_str(&list.join(",")),
        }
    }
}

/// Parses a flag value: comma-separated origins; `*` (or nothing) means any.
impl FromStr for AllowedOrigins {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() || parts.contains(&"*") {
            if parts.len() > 1 {
                return Err(OriginError::NotAnOrigin(
                    "* cannot be combined with other origins".into(),
                ));
            }
            return Ok(Self::any());
        }
        Self::only(parts)
    }
}

/// An origin in the form browsers send it: lowercase `scheme://host[:port]`, without a default
/// port (80 for http, 443 for https), path, query or user info; a trailing `/` is tolerated.
/// `None` when `s` is not such an origin (`null`, a bare host name, a URL with a path, ...).
pub fn normalize(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_suffix('/').unwrap_or(s);
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let authority: http::uri::Authority = rest.parse().ok()?;
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match authority.port_u16() {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The node's upgrade check: `Err` is the 403 to answer instead of upgrading (already logged
/// and counted).
pub fn check_upgrade(
    allowed: &AllowedOrigins,
    headers: &HeaderMap,
    node: &str,
) -> Result<(), ApiError> {
    allowed.check(headers).map_err(|origin| {
        tracing::info!(node, origin = %origin, "upgrade refused: origin not allowed");
        metrics::counter!("signal_origin_refused_total").increment(1);
        metrics::counter!("signal_upgrades_refused_total", "status" => "403").increment(1);
        ApiError::Forbidden(format!(
            "origin {origin:?} is not allowed to connect (--allowed-origins)"
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn normalises_like_browsers_send_it() {
        assert_eq!(
            normalize("https://App.Example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            normalize("https://app.example.com:443/").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            normalize("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            normalize("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
        for bad in [
            "null",
            "app.example.com",
            "https://",
            "https://a/b",
            "https://u@a",
            "https://a?x",
            "://a",
            "",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_the_flag() {
        assert!("*".parse::<AllowedOrigins>().unwrap().is_any());
        assert!("".parse::<AllowedOrigins>().unwrap().is_any());
        let a: AllowedOrigins = "https://a.example, http://localhost:8080/".parse().unwrap();
        assert_eq!(a.origins(), ["https://a.example", "http://localhost:8080"]);
        assert_eq!(a.to_string(), "https://a.example,http://localhost:8080");
        assert!(a.allows("https://A.example"));
        assert!(a.allows("http://localhost:8080"));
        assert!(!a.allows("http://localhost:8081"));
        assert!(!a.allows("https://a.example.evil"));
        assert!(!a.allows("null"));
        assert!("a.example".parse::<AllowedOrigins>().is_err());
        assert!("*,https://a".parse::<AllowedOrigins>().is_err());
        let many = (0..=MAX_ORIGINS)
            .map(|i| format!("https://h{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(many.parse::<AllowedOrigins>(), Err(OriginError::TooMany));
    }

    #[test]
    fn checks_headers() {
        let a: AllowedOrigins = "https://a.example".parse().unwrap();
        let mut h = HeaderMap::new();
        assert!(a.check(&h).is_ok(), "no Origin: not a browser");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert!(a.check(&h).is_ok());
        h.append(
            header::ORIGIN,
            HeaderValue::from_static("https://b.example"),
        );
        assert_eq!(a.check(&h), Err("https://b.example".to_owned()));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"https://\xff").unwrap(),
        );
        assert!(a.check(&h).is_err());
        assert!(AllowedOrigins::any().check(&h).is_ok());
    }
}
