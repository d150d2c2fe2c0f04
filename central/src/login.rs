//! The login: authenticate the user, pick a node, mint the ticket for it, and add the ICE
//! servers (with the user's TURN credentials, see [`crate::ice`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use signal_proto::ticket::{unix_now, Ticket, TicketKey};

use crate::auth::{authenticate, JwtVerifier};
use crate::error::LoginError;
use crate::ice::{IceConfig, IceServer};
use crate::registry::Registry;

/// What a successful login answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub node: String,
    pub url: String,
    pub token: String,
    #[serde(rename = "expiresIn")]
    pub expires_in: u64,
    /// STUN/TURN servers for the client's RTCPeerConnections (empty when none are configured).
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

/// Login service: cheap to clone.
#[derive(Clone, Debug)]
pub struct Login {
    registry: Registry,
    tickets: TicketKey,
    jwt: Option<JwtVerifier>,
    ttl: Duration,
    ice: Arc<IceConfig>,
}

impl Login {
    /// `jwt`: `None` is the open login (`?user=ID`).
    pub fn new(registry: Registry, secret: &str, jwt: Option<JwtVerifier>, ttl: Duration) -> Self {
        Self {
            registry,
            tickets: TicketKey::new(secret.as_bytes()),
            jwt,
            ttl,
            ice: Arc::new(IceConfig::default()),
        }
    }

    /// The ICE servers every login answer carries.
    pub fn with_ice(mut self, ice: IceConfig) -> Self {
        self.ice = Arc::new(ice);
        self
    }

    /// Whether anyone may log in as anyone (no JWT verifier).
    pub fn is_open(&self) -> bool {
        self.jwt.is_none()
    }

    /// Handles one login; records its latency and outcome in the metrics.
    pub async fn endpoint(
        &self,
        user_param: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Endpoint, LoginError> {
        let started = Instant::now();
        let result = self.endpoint_inner(user_param, authorization).await;
        crate::telemetry::login(started.elapsed(), &result);
        result
    }

    async fn endpoint_inner(
        &self,
        user_param: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Endpoint, LoginError> {
        let user = authenticate(self.jwt.as_ref(), user_param, authorization)?;
        let assignment = self.registry.pick().await?.ok_or(LoginError::NoNode)?;
        let ttl = self.ttl.as_secs().max(1);
        let now = unix_now();
        let ice_servers = self.ice.servers(user.as_str(), now);
        let token = self
            .tickets
            .mint(&Ticket::new(user, assignment.node.clone(), now + ttl));
        Ok(Endpoint {
            node: assignment.node.into_string(),
            url: assignment.ws_url,
            token,
            expires_in: ttl,
            ice_servers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeInfo;
    use signal_proto::ticket::TicketError;
    use signal_proto::NodeId;

    #[tokio::test]
    async fn ticket_names_user_and_node_and_only_that_node_accepts_it() {
        let registry = Registry::memory(Duration::from_secs(60));
        for id in ["n1", "n2"] {
            let info = NodeInfo {
                id: NodeId::new(id).unwrap(),
                instance: "i".into(),
                ws_url: format!("ws://{id}/ws"),
                grpc_url: format!("http://{id}"),
                weight: 1,
            };
            registry.register(info, 0).await.unwrap();
        }
        let login = Login::new(registry, "cluster", None, Duration::from_secs(60));
        let e = login.endpoint(Some("alice"), None).await.unwrap();
        assert_eq!(e.expires_in, 60);
        assert_eq!(e.url, format!("ws://{}/ws", e.node));
        let key = TicketKey::new(b"cluster");
        let node = NodeId::new(e.node.clone()).unwrap();
        let t = key.verify(&e.token, &node, unix_now()).unwrap();
        assert_eq!(t.user.as_str(), "alice");
        assert!(t.expires_at > unix_now() + 55 && t.expires_at <= unix_now() + 60);
        let other = NodeId::new(if e.node == "n1" { "n2" } else { "n1" }).unwrap();
        assert_eq!(
            key.verify(&e.token, &other, unix_now()),
            Err(TicketError::WrongNode(node))
        );
        assert_eq!(
            TicketKey::new(b"not-the-cluster").verify(&e.token, &other, unix_now()),
            Err(TicketError::BadSignature)
        );
        assert!(matches!(
            key.verify(&e.token, &other, unix_now() + 61),
            Err(TicketError::Expired)
        ));
    }

    #[tokio::test]
    async fn answer_carries_ice_servers_for_the_user() {
        let registry = Registry::memory(Duration::from_secs(60));
        let info = NodeInfo {
            id: NodeId::new("n1").unwrap(),
            instance: "i".into(),
            ws_url: "ws://n1/ws".into(),
            grpc_url: "http://n1".into(),
            weight: 1,
        };
        registry.register(info, 0).await.unwrap();
        let login = Login::new(registry.clone(), "cluster", None, Duration::from_secs(60));
        assert!(login
            .endpoint(Some("alice"), None)
            .await
            .unwrap()
            .ice_servers
            .is_empty());
        let login = login.with_ice(IceConfig {
            stun_urls: vec!["stun:s".into()],
            turn: Some(crate::ice::TurnConfig {
                urls: vec!["turn:t".into()],
                secret: "north".into(),
                ttl: Duration::from_secs(3600),
            }),
        });
        let e = login.endpoint(Some("alice"), None).await.unwrap();
        let turn = &e.ice_servers[1];
        let username = turn.username.clone().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "alice");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry > unix_now() + 3590 && expiry <= unix_now() + 3600);
        assert_eq!(
            turn.credential.as_deref(),
            Some(crate::ice::turn_credential(b"north", &username).as_str())
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["iceServers"][0]["urls"][0], "stun:s");
    }

    #[tokio::test]
    async fn no_node_and_bad_user() {
        let login = Login::new(
            Registry::memory(Duration::from_secs(60)),
            "s",
            None,
            Duration::from_secs(60),
        );
        assert_eq!(
            login.endpoint(Some("alice"), None).await,
            Err(LoginError::NoNode)
        );
        assert!(matches!(
            login.endpoint(None, None).await,
            Err(LoginError::BadUser(_))
        ));
    }
}
