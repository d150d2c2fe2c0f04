//! Trust inside the cluster, on a node: the Relay gRPC service refuses calls without the
//! cluster's credentials (or signed with another secret) and they have no effect: no frame
//! reaches a user, no connection is kicked, no session is taken over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use signal_proto::grpc_auth::{AuthChannel, GrpcKey, Signer};
use signal_proto::relay::relay_client::RelayClient;
use signal_proto::relay::{
    DeliverRequest, DeliverStatus, KickRequest, Location, ProbeRequest, TakeSessionRequest,
};
use tonic::transport::Channel;

const SECRET: &str = "cluster-secret";

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn signed(addr: std::net::SocketAddr, secret: &str) -> RelayClient<AuthChannel<Channel>> {
    RelayClient::new(AuthChannel::new(
        channel(addr).await,
        Signer::new(GrpcKey::new(secret.as_bytes())),
    ))
}

fn forged(to: &str) -> DeliverRequest {
    DeliverRequest {
        to: to.into(),
        from: "forged".into(),
        session_id: "s1".into(),
        frame: json!({"type":"Offer","from":"forged","to":to,"sessionID":"s1","sdp":"v=0"})
            .to_string(),
        expect: None,
        mail_entry: String::new(),
    }
}

#[tokio::test]
async fn relay_calls_without_the_cluster_credentials_are_refused_and_do_nothing() {
    let mut cfg = dev("node-1");
    cfg.secret = Some(SECRET.into());
    let node = TestNode::start(cfg).await;
    let mut alice = node.connect("alice").await;

    let mut good = signed(node.grpc, SECRET).await;
    let probe = good.probe(ProbeRequest {}).await.unwrap().into_inner();
    // Alice's session is the node's first one: id 2 (her connection took id 1).
    let alice_at = Location {
        node_id: "node-1".into(),
        instance: probe.instance.clone(),
        conn: 2,
        grpc_url: format!("http://{}", node.grpc),
    };
    let kick = || KickRequest {
        user: "alice".into(),
        location: Some(alice_at.clone()),
    };

    let mut plain = RelayClient::new(channel(node.grpc).await);
    let mut other = signed(node.grpc, "another-cluster").await;
    let e = plain.deliver(forged("alice")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = other.deliver(forged("alice")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = plain.kick(kick()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = other.kick(kick()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = plain.probe(ProbeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // TakeSession too: a takeover with a wrong token would end her session if it got through.
    let take = || TakeSessionRequest {
        user: "alice".into(),
        expect: Some(alice_at.clone()),
        session: "00000000000000000000000000000000".into(),
        last: 0,
    };
    let e = plain.take_session(take()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = other.take_session(take()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // A stale credential (signed two minutes ago) is refused too.
    let mut stale = tonic::Request::new(forged("alice"));
    let old = signal_proto::grpc_auth::unix_ms() - 120_000;
    let value = GrpcKey::new(SECRET.as_bytes()).sign("/signal.relay.v1.Relay/Deliver", old);
    stale
        .metadata_mut()
        .insert("x-signal-auth", value.parse().unwrap());
    let e = plain.deliver(stale).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // Nothing reached alice and her session is intact: the first frame she gets is the one
    // delivered with credentials.
    let marker = json!({"type":"Offer","from":"bob","to":"alice","sessionID":"marker","sdp":"v=0"});
    let r = good
        .deliver(DeliverRequest {
            to: "alice".into(),
            from: "bob".into(),
            session_id: "marker".into(),
            frame: marker.to_string(),
            expect: None,
            mail_entry: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, DeliverStatus::Delivered as i32);
    // Frames are numbered per session (contract section 5): the marker is her first.
    let mut numbered = marker.clone();
    numbered["n"] = json!(1);
    assert_eq!(alice.next_json().await, numbered);
    // Her connection is still open, and it was the one the refused kicks named.
    assert!(good.kick(kick()).await.unwrap().into_inner().closed);
    assert_eq!(alice.expect_close().await, 4409);

    let text = metrics_text(&node).await;
    assert!(
        text.contains(r#"signal_grpc_auth_refused_total{reason="missing"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"signal_grpc_auth_refused_total{reason="bad_signature"}"#),
        "{text}"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_without_a_secret_checks_the_public_dev_key() {
    // Dev-auth nodes without --secret sign and check with the public dev key (the cluster
    // tests relay between such nodes): still no call without credentials.
    let a = TestNode::start(dev("a")).await;
    let mut plain = RelayClient::new(channel(a.grpc).await);
    let e = plain.probe(ProbeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut dev_signed = signed(a.grpc, signal_proto::grpc_auth::DEV_SECRET).await;
    let p = dev_signed
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.node_id, "a");
    a.shutdown().await.unwrap();
}
