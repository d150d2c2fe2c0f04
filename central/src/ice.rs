//! ICE servers handed out at login (contract section 9): owns the STUN URLs, the TURN URLs and
//! the TURN secret, and mints the short-lived TURN REST API credentials that coturn's
//! `use-auth-secret` checks: username `"<expiry unix seconds>:<user>"`, credential
//! `base64(HMAC-SHA1(secret, username))`.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

/// A bad `--stun-urls` / `--turn-urls` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    #[error("{url:?}: must start with {schemes}")]
    Scheme { url: String, schemes: &'static str },
    #[error("{url:?}: {why}")]
    Malformed { url: String, why: &'static str },
}

/// Which kind of URL a list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    /// `stun:` / `stuns:` (RFC 7064).
    Stun,
    /// `turn:` / `turns:` (RFC 7065).
    Turn,
}

impl UrlKind {
    fn schemes(self) -> &'static [&'static str] {
        match self {
            UrlKind::Stun => &["stun:", "stuns:"],
            UrlKind::Turn => &["turn:", "turns:"],
        }
    }

    fn schemes_text(self) -> &'static str {
        match self {
            UrlKind::Stun => "stun: or stuns:",
            UrlKind::Turn => "turn: or turns:",
        }
    }
}

/// Splits a comma-separated flag value into checked URLs. Blank entries are skipped, so an
/// empty value (e.g. an unset variable in compose) means "none".
pub fn parse_urls(value: &str, kind: UrlKind) -> Result<Vec<String>, IceError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| check_url(s, kind).map(|()| s.to_owned()))
        .collect()
}

/// `scheme:host[:port][?transport=udp|tcp]` (the query only on TURN URLs), host a name, an
/// IPv4 address or a bracketed IPv6 address.
fn check_url(url: &str, kind: UrlKind) -> Result<(), IceError> {
    let malformed = |why| IceError::Malformed {
        url: url.to_owned(),
        why,
    };
    let lower = url.to_ascii_lowercase();
    let Some(scheme) = kind.schemes().iter().find(|s| lower.starts_with(**s)) else {
        return Err(IceError::Scheme {
            url: url.to_owned(),
            schemes: kind.schemes_text(),
        });
    };
    let rest = &url[scheme.len()..];
    if rest.starts_with("//") {
        return Err(malformed(
            "no \"//\" after the scheme (e.g. turn:host:3478)",
        ));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed("contains whitespace or control characters"));
    }
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    if let Some(q) = query {
        if kind == UrlKind::Stun {
            return Err(malformed("a stun: URL takes no query"));
        }
        let transport = q.strip_prefix("transport=").unwrap_or("");
        if !transport.eq_ignore_ascii_case("udp") && !transport.eq_ignore_ascii_case("tcp") {
            return Err(malformed(
                "the only query is ?transport=udp or ?transport=tcp",
            ));
        }
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(malformed("unclosed [ in the IPv6 address"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(malformed("bad IPv6 address"));
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return Err(malformed("unexpected text after the IPv6 address")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(malformed("no host"));
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(malformed("bad host name"));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(malformed("port must be 1 to 65535")),
        }
    }
    Ok(())
}

/// One entry of the login answer's `iceServers` (a WebRTC `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// TURN URLs and the secret shared with the TURN server (coturn's `static-auth-secret`).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnConfig {
    pub urls: Vec<String>,
    pub secret: String,
    /// Lifetime of the credentials handed out.
    pub ttl: Duration,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("secret", &"..")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The ICE servers of the login answer: none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    pub turn: Option<TurnConfig>,
}

impl IceConfig {
    /// True when logins carry TURN credentials.
    pub fn has_turn(&self) -> bool {
        self.turn.is_some()
    }

    /// The `iceServers` for `user` at unix time `now`: the STUN entry (if any), then the TURN
    /// entry with a credential that expires at `now + ttl`.
    pub fn servers(&self, user: &str, now: u64) -> Vec<IceServer> {
        let mut out = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            out.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(turn) = &self.turn {
            let username = turn_username(now.saturating_add(turn.ttl.as_secs()), user);
            let credential = turn_credential(turn.secret.as_bytes(), &username);
            out.push(IceServer {
                urls: turn.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
            crate::telemetry::turn_credential();
        }
        out
    }
}

/// The TURN REST API username: `"<expiry unix seconds>:<user>"`.
pub fn turn_username(expires_at: u64, user: &str) -> String {
    format!("{expires_at}:{user}")
}

/// The TURN REST API password: `base64(HMAC-SHA1(secret, username))`, standard alphabet with
/// padding, as coturn computes it for `use-auth-secret`.
pub fn turn_credential(secret: &[u8], username: &str) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hmac_sha1_known_vectors() {
        // RFC 2202 test case 2, base64 of effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            turn_credential(b"Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        // `echo -n 1700003600:alice | openssl dgst -sha1 -hmac north -binary | base64`
        assert_eq!(
            turn_credential(b"north", "1700003600:alice"),
            "wjwSXO2ch1B6VaLTLMy2Avn5O9o="
        );
        // The example of docs/protocol.md section 9.
        assert_eq!(
            turn_credential(b"example-secret", "1767225600:alice"),
            "5WfIj48HgplQ7zHyAZ47whjDCXs="
        );
    }

    #[test]
    fn servers_carry_stun_then_turn_with_expiring_credential() {
        let ice = IceConfig {
            stun_urls: vec!["stun:stun.example.org:3478".into()],
            turn: Some(TurnConfig {
                urls: vec![
                    "turn:turn.example.org:3478?transport=udp".into(),
                    "turns:turn.example.org:5349".into(),
                ],
                secret: "north".into(),
                ttl: Duration::from_secs(3600),
            }),
        };
        let s = ice.servers("alice", 1_700_000_000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].urls, ["stun:stun.example.org:3478"]);
        assert!(s[0].username.is_none() && s[0].credential.is_none());
        assert_eq!(s[1].username.as_deref(), Some("1700003600:alice"));
        assert_eq!(
            s[1].credential.as_deref(),
            Some("wjwSXO2ch1B6VaLTLMy2Avn5O9o=")
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"urls": ["stun:stun.example.org:3478"]})
        );
        assert_eq!(json[1]["username"], "1700003600:alice");
        assert!(IceConfig::default().servers("alice", 1).is_empty());
    }

    #[test]
    fn secret_is_not_in_debug() {
        let t = TurnConfig {
            urls: vec!["turn:x".into()],
            secret: "hunter2-secret".into(),
            ttl: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn url_checks() {
        let ok = parse_urls(
            " turn:a.example:3478 , turns:b.example?transport=tcp,TURN:[::1]:3478?transport=udp,,",
            UrlKind::Turn,
        )
        .unwrap();
        assert_eq!(
            ok,
            [
                "turn:a.example:3478",
                "turns:b.example?transport=tcp",
                "TURN:[::1]:3478?transport=udp"
            ]
        );
        assert!(parse_urls("", UrlKind::Turn).unwrap().is_empty());
        assert_eq!(
            parse_urls("stun:127.0.0.1:3478,stuns:h", UrlKind::Stun)
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "http://turn.example",
            "stun:turn.example",
            "turn://turn.example",
            "turn:",
            "turn::3478",
            "turn:host:0",
            "turn:host:99999",
            "turn:host?transport=sctp",
            "turn:ho st",
            "turn:[::1",
            "turn:user@host",
        ] {
            assert!(parse_urls(bad, UrlKind::Turn).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_urls("turn:host", UrlKind::Stun),
            Err(IceError::Scheme { .. })
        ));
        assert!(parse_urls("stun:host?transport=udp", UrlKind::Stun).is_err());
    }
}
