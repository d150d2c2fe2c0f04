//! Node tickets: minted by central at login, verified by the signal node at upgrade.
//!
//! Form: `base64url(payload) "." base64url(HMAC-SHA256(secret, "v1." base64url(payload)))`,
//! payload = `{"u":user,"n":node,"e":expiry unix seconds,"i":ticket id}`. Compact and URL-safe.
//! The id is random per login, so that two logins of one user in one second get two tickets:
//! a ticket is single-use (the node it names remembers the used ones until they expire).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::{NodeId, UserId};

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted before any work is done on it.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// What a ticket grants: `user` may connect to `node` until `expires_at` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "u")]
    pub user: UserId,
    #[serde(rename = "n")]
    pub node: NodeId,
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// Random per ticket (empty in tickets of older centrals).
    #[serde(rename = "i", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
}

impl Ticket {
    /// A ticket with a fresh random id.
    pub fn new(user: UserId, node: NodeId, expires_at: u64) -> Ticket {
        let id: [u8; 12] = rand::random();
        Ticket {
            user,
            node,
            expires_at,
            id: URL_SAFE_NO_PAD.encode(id),
        }
    }
}

/// What identifies a ticket among the used ones: its signature part (the text after the last
/// `.`), unique per minted ticket.
pub fn ticket_signature(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(_, sig)| sig)
}

/// Why a ticket is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket is malformed")]
    Malformed,
    #[error("ticket signature is invalid")]
    BadSignature,
    #[error("ticket expired")]
    Expired,
    #[error("ticket is for node {0}, not this one")]
    WrongNode(NodeId),
}

/// The cluster secret, ready to sign and verify tickets. Cheap to clone.
#[derive(Clone)]
pub struct TicketKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of every length; `new_from_slice` cannot fail for it.
        let mac = match HmacSha256::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        Self { mac }
    }

    fn sign(&self, payload_b64: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(b"v1.");
        mac.update(payload_b64.as_bytes());
        mac
    }

    /// Signs a ticket into its compact string form.
    pub fn mint(&self, ticket: &Ticket) -> String {
        let payload = serde_json::to_vec(ticket).unwrap_or_default();
        let payload_b64 = URL_SAFE_NO_PAD.encode(payload);
        let sig = self.sign(&payload_b64).finalize().into_bytes();
        format!("{payload_b64}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Checks signature, expiry (against `now_unix` seconds) and that the ticket names `node`.
    pub fn verify(&self, token: &str, node: &NodeId, now_unix: u64) -> Result<Ticket, TicketError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TicketError::Malformed);
        }
        let (payload_b64, sig_b64) = token.split_once('.').ok_or(TicketError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TicketError::Malformed)?;
        self.sign(payload_b64)
            .verify_slice(&sig)
            .map_err(|_| TicketError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TicketError::Malformed)?;
        let ticket: Ticket =
            serde_json::from_slice(&payload).map_err(|_| TicketError::Malformed)?;
        if ticket.expires_at <= now_unix {
            return Err(TicketError::Expired);
        }
        if &ticket.node != node {
            return Err(TicketError::WrongNode(ticket.node));
        }
        Ok(ticket)
    }
}

/// Seconds since the unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(exp: u64) -> Ticket {
        Ticket {
            user: UserId::new("alice").unwrap(),
            node: NodeId::new("node-1").unwrap(),
            expires_at: exp,
            id: String::new(),
        }
    }

    #[test]
    fn round_trip() {
        let key = TicketKey::new(b"secret");
        let t = key.mint(&ticket(1000));
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert_eq!(
            key.verify(&t, &NodeId::new("node-1").unwrap(), 999),
            Ok(ticket(1000))
        );
    }

    #[test]
    fn ids_make_tickets_unique() {
        let key = TicketKey::new(b"secret");
        let t = |_| {
            Ticket::new(
                UserId::new("alice").unwrap(),
                NodeId::new("node-1").unwrap(),
                1000,
            )
        };
        let (a, b) = (key.mint(&t(0)), key.mint(&t(1)));
        assert_ne!(ticket_signature(&a), ticket_signature(&b));
        let n1 = NodeId::new("node-1").unwrap();
        assert_eq!(key.verify(&a, &n1, 1).unwrap().id.len(), 16);
    }

    #[test]
    fn refusals() {
        let key = TicketKey::new(b"secret");
        let n1 = NodeId::new("node-1").unwrap();
        let t = key.mint(&ticket(1000));
        assert_eq!(key.verify(&t, &n1, 1000), Err(TicketError::Expired));
        assert_eq!(
            key.verify(&t, &NodeId::new("node-2").unwrap(), 1),
            Err(TicketError::WrongNode(n1.clone()))
        );
        assert_eq!(
            TicketKey::new(b"other").verify(&t, &n1, 1),
            Err(TicketError::BadSignature)
        );
        assert_eq!(key.verify("", &n1, 1), Err(TicketError::Malformed));
        assert_eq!(key.verify("abc", &n1, 1), Err(TicketError::Malformed));
        assert_eq!(key.verify("a.b!", &n1, 1), Err(TicketError::Malformed));
        assert_eq!(
            key.verify(&"a".repeat(5000), &n1, 1),
            Err(TicketError::Malformed)
        );
        // A tampered payload fails the signature.
        let (p, s) = t.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Ticket {
                user: UserId::new("mallory").unwrap(),
                ..ticket(1000)
            })
            .unwrap(),
        );
        assert_ne!(p, forged);
        assert_eq!(
            key.verify(&format!("{forged}.{s}"), &n1, 1),
            Err(TicketError::BadSignature)
        );
    }
}
