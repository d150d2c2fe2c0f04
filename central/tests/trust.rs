//! Trust inside the cluster, at central, with real processes: the Registry refuses calls
//! without the cluster's credentials (or signed with another secret) and they have no effect;
//! a node with another secret cannot join; a registered node is handed out only after it
//! answered a probe, and that first probe comes at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Central, Node, Timing};
use signal_proto::grpc_auth::{AuthChannel, GrpcKey, Signer};
use signal_proto::registry::registry_client::RegistryClient;
use signal_proto::registry::{HeartbeatRequest, NodeInfo, RegisterRequest};
use testkit::{free_port, wait_until};
use tonic::transport::Channel;

fn evil(grpc_port: u16) -> RegisterRequest {
    RegisterRequest {
        node: Some(NodeInfo {
            node_id: "evil".into(),
            instance: "e1".into(),
            ws_url: "ws://attacker.example:1/ws".into(),
            grpc_url: format!("http://127.0.0.1:{grpc_port}"),
            weight: 1000,
        }),
        connections: 0,
    }
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unauthenticated_register_is_refused_and_never_handed_out() {
    let c = Central::start(Timing::FAST, &[]).await;
    let good = Node::start("good", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["good"], Duration::from_secs(10)).await;

    let mut plain = RegistryClient::new(channel(&c.grpc_url()).await);
    let e = plain.register(evil(free_port())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut other = RegistryClient::new(AuthChannel::new(
        channel(&c.grpc_url()).await,
        Signer::new(GrpcKey::new(b"another-cluster")),
    ));
    let e = other.register(evil(free_port())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // Nor can it heartbeat as the good node (e.g. to report it draining).
    let e = plain
        .heartbeat(HeartbeatRequest {
            node_id: "good".into(),
            instance: "x".into(),
            connections: 0,
            draining: true,
            accepted: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    assert_eq!(c.node_ids().await, vec!["good"]);
    for i in 0..20 {
        let (status, body) = c.login(&format!("u{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node"], "good", "{body}");
    }
    let m = c.metrics().await;
    assert!(
        m.contains(r#"central_grpc_auth_refused_total{reason="missing"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"central_grpc_auth_refused_total{reason="bad_signature"} 1"#),
        "{m}"
    );
    drop(good);
}

#[tokio::test]
async fn a_node_with_another_secret_cannot_join() {
    let c = Central::start(Timing::FAST, &[]).await;
    let good = Node::start("good", &c.grpc_url(), 1, &[]);
    let stranger = Node::start_with_secret("stranger", &c.grpc_url(), "not-ours", 1, &[]);
    c.wait_nodes(&["good"], Duration::from_secs(10)).await;
    let ready = format!("http://127.0.0.1:{}/readyz", stranger.http_port);
    wait_until(
        "the stranger to report central's refusal",
        Duration::from_secs(10),
        || {
            let ready = ready.clone();
            async move {
                let Ok(r) = reqwest::get(&ready).await else {
                    return false;
                };
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                body["central"]["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("credentials"))
            }
        },
    )
    .await;
    assert_eq!(c.node_ids().await, vec!["good"]);
    drop((good, stranger));
}

#[tokio::test]
async fn a_registered_node_is_handed_out_only_after_answering_a_probe() {
    // Probes every 20 s: the first one still comes at once.
    let timing = Timing {
        heartbeat_ms: 200,
        node_timeout_ms: 60_000,
        probe_ms: 20_000,
    };
    let c = Central::start(timing, &[]).await;
    let started = Instant::now();
    let real = Node::start("real", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["real"], Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "first probe took {:?}",
        started.elapsed()
    );
    let (status, body) = c.login("alice").await;
    assert_eq!(status, 200, "{body}");

    // A node with the credentials whose probe fails: nothing answers its gRPC URL, or the
    // node there is another one (it claims the real node's URL).
    let mut rpc = common::registry_client(&c.grpc_url()).await;
    rpc.register(evil(free_port())).await.unwrap();
    let mut impostor = evil(real.grpc_port);
    if let Some(n) = impostor.node.as_mut() {
        n.node_id = "impostor".into();
    }
    rpc.register(impostor).await.unwrap();
    let mut ids = c.node_ids().await;
    ids.sort();
    assert_eq!(ids, vec!["evil", "impostor", "real"]);
    for i in 0..30 {
        let (status, body) = c.login(&format!("u{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node"], "real", "{body}");
    }
    for n in c.nodes().await {
        assert_eq!(n["reachable"], n["id"] == "real", "{n}");
    }
    drop(real);
}

/// A CA and one certificate it signed for 127.0.0.1 (PEM: ca, cert, key).
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_node_registers_over_mutual_tls_and_a_peer_without_a_client_certificate_is_refused() {
    let dir = std::env::temp_dir().join(format!("signal-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = pki();
    let (rogue_ca, rogue_cert, rogue_key) = pki();
    let path = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let (ca_path, cert_path, key_path) = (
        path("ca.pem", &ca),
        path("cert.pem", &cert),
        path("key.pem", &key),
    );
    let tls = [
        "--grpc-tls-cert",
        cert_path.as_str(),
        "--grpc-tls-key",
        key_path.as_str(),
        "--grpc-tls-ca",
        ca_path.as_str(),
    ];
    let c = Central::start(Timing::FAST, &tls).await;
    let central_tls = format!("https://127.0.0.1:{}", c.grpc_port);
    // The node advertises https://(grpc-listen) by itself; central probes it over mTLS.
    let node = Node::start("tls-node", &central_tls, 1, &tls);
    c.wait_nodes(&["tls-node"], Duration::from_secs(15)).await;
    let (status, body) = c.login("alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"], "tls-node");

    // Peers with the cluster's credentials but no client certificate of the CA: refused in
    // the TLS handshake (or at the first call), nothing registered.
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let signer = Signer::new(GrpcKey::new(common::SECRET.as_bytes()));
    let attempts = [
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)),
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .identity(Identity::from_pem(&rogue_cert, &rogue_key)),
    ];
    for tls in attempts {
        let endpoint = Endpoint::from_shared(central_tls.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap();
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        let mut rpc = RegistryClient::new(AuthChannel::new(channel, signer.clone()));
        let e = rpc.register(evil(free_port())).await.unwrap_err();
        assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");
    }
    // Plain HTTP/2 to the TLS port: refused too.
    if let Ok(ch) = Endpoint::from_shared(format!("http://127.0.0.1:{}", c.grpc_port))
        .unwrap()
        .connect()
        .await
    {
        let mut rpc = RegistryClient::new(AuthChannel::new(ch, signer.clone()));
        assert!(rpc.register(evil(free_port())).await.is_err());
    }
    assert_eq!(c.node_ids().await, vec!["tls-node"]);
    let _ = rogue_ca;
    drop(node);
    std::fs::remove_dir_all(&dir).ok();
}
