//! TURN credentials from central's login answer against a real coturn (`turnserver` started on
//! loopback with `use-auth-secret`): a TURN Allocate (RFC 8656, long-term credentials with
//! MESSAGE-INTEGRITY) with them succeeds and relays on 127.0.0.1; a credential signed with
//! another secret, or one past its expiry, is refused by coturn with 401; during a rotation
//! (coturn given the old and the new secret) credentials of both work. The STUN/TURN client is
//! the few lines below (test only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use common::{Central, Node, Timing};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use signal_proto::ticket::unix_now;
use testkit::Coturn;
use tokio::net::UdpSocket;

const TURN_SECRET: &str = "coturn-static-auth-secret";
/// The secret a rotation moves to: coturn accepts it already, central does not sign with it yet.
const NEXT_SECRET: &str = "coturn-next-static-auth-secret";

const MAGIC: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x0003;
const ALLOCATE_OK: u16 = 0x0103;
const ALLOCATE_ERR: u16 = 0x0113;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_TRANSPORT: u16 = 0x0019;

/// A decoded STUN message: type, transaction id, attributes in order.
struct Msg {
    ty: u16,
    tid: [u8; 12],
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Msg {
    fn attr(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| v.as_slice())
    }

    fn error_code(&self) -> Option<u16> {
        self.attr(ERROR_CODE)
            .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }
}

/// Encodes a request; with `key`, appends MESSAGE-INTEGRITY (HMAC-SHA1 over the message with
/// the length already counting the MESSAGE-INTEGRITY attribute).
fn encode(ty: u16, tid: &[u8; 12], attrs: &[(u16, &[u8])], key: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let len = body.len() + if key.is_some() { 24 } else { 0 };
    let mut msg = Vec::new();
    msg.extend_from_slice(&ty.to_be_bytes());
    msg.extend_from_slice(&(len as u16).to_be_bytes());
    msg.extend_from_slice(&MAGIC.to_be_bytes());
    msg.extend_from_slice(tid);
    msg.extend_from_slice(&body);
    if let Some(key) = key {
        let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
        mac.update(&msg);
        let sum = mac.finalize().into_bytes();
        msg.extend_from_slice(&MESSAGE_INTEGRITY.to_be_bytes());
        msg.extend_from_slice(&20u16.to_be_bytes());
        msg.extend_from_slice(&sum);
    }
    msg
}

fn decode(buf: &[u8]) -> Msg {
    assert!(buf.len() >= 20, "short STUN message");
    let ty = u16::from_be_bytes([buf[0], buf[1]]);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    assert_eq!(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]), MAGIC);
    let tid: [u8; 12] = buf[8..20].try_into().unwrap();
    let mut attrs = Vec::new();
    let mut rest = &buf[20..20 + len];
    while rest.len() >= 4 {
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let l = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        attrs.push((t, rest[4..4 + l].to_vec()));
        rest = &rest[(4 + l).next_multiple_of(4).min(rest.len())..];
    }
    Msg { ty, tid, attrs }
}

async fn transact(sock: &UdpSocket, req: &[u8]) -> Msg {
    sock.send(req).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("an answer from turnserver within 5 s")
        .unwrap();
    let msg = decode(&buf[..n]);
    assert_eq!(msg.tid, req[8..20], "answer to another transaction");
    msg
}

/// A TURN Allocate (UDP relay) with long-term credentials, on a fresh 5-tuple: the first
/// request gets 401 with REALM and NONCE, the second carries USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY keyed with MD5(username ":" realm ":" password). Ok(relayed address) or
/// Err(the error code of the second answer).
async fn allocate(server: SocketAddr, username: &str, password: &str) -> Result<SocketAddr, u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let udp: &[u8] = &[17, 0, 0, 0];
    let tid: [u8; 12] = rand::random();
    let first = transact(
        &sock,
        &encode(ALLOCATE, &tid, &[(REQUESTED_TRANSPORT, udp)], None),
    )
    .await;
    assert_eq!(first.ty, ALLOCATE_ERR);
    assert_eq!(first.error_code(), Some(401), "unauthenticated Allocate");
    let realm = first.attr(REALM).expect("REALM in the 401").to_vec();
    let nonce = first.attr(NONCE).expect("NONCE in the 401").to_vec();

    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(&realm);
    md5.update(b":");
    md5.update(password.as_bytes());
    let key = md5.finalize();
    let tid: [u8; 12] = rand::random();
    let req = encode(
        ALLOCATE,
        &tid,
        &[
            (REQUESTED_TRANSPORT, udp),
            (USERNAME, username.as_bytes()),
            (REALM, &realm),
            (NONCE, &nonce),
        ],
        Some(&key),
    );
    let answer = transact(&sock, &req).await;
    match answer.ty {
        ALLOCATE_OK => {
            let v = answer
                .attr(XOR_RELAYED_ADDRESS)
                .expect("XOR-RELAYED-ADDRESS");
            assert_eq!(v[1], 0x01, "an IPv4 relay");
            let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
            let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        ALLOCATE_ERR => Err(answer.error_code().expect("ERROR-CODE")),
        other => panic!("unexpected STUN message type {other:#06x}"),
    }
}

fn credential(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn coturn_accepts_the_login_credentials_and_refuses_wrong_or_expired_ones() {
    let Some(bin) = testkit::turnserver_bin() else {
        eprintln!(
            "SKIPPED: turnserver not found (apt-get install coturn; CI=true makes this fail)"
        );
        return;
    };
    let turn = Coturn::start(&bin, &[TURN_SECRET, NEXT_SECRET]).await;
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let stun_url = format!("stun:127.0.0.1:{}", turn.port);
    let c = Central::start(
        Timing::FAST,
        &[
            "--stun-urls",
            &stun_url,
            "--turn-urls",
            &turn_url,
            "--turn-secret",
            TURN_SECRET,
            "--turn-ttl-secs",
            "600",
        ],
    )
    .await;
    let _n = Node::start("t1", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["t1"], Duration::from_secs(10)).await;

    let (status, body) = c.login("alice").await;
    assert_eq!(status, 200, "{body}");
    let servers = body["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers.len(), 2, "{body}");
    assert_eq!(servers[0], serde_json::json!({ "urls": [stun_url] }));
    assert_eq!(servers[1]["urls"], serde_json::json!([turn_url]));
    let username = servers[1]["username"].as_str().unwrap().to_owned();
    let password = servers[1]["credential"].as_str().unwrap().to_owned();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    let now = unix_now();
    assert!(
        expiry > now + 590 && expiry <= now + 600,
        "{expiry} vs {now}"
    );

    // The login's credential: coturn allocates a relay.
    let relayed = allocate(turn.addr(), &username, &password)
        .await
        .unwrap_or_else(|code| panic!("Allocate refused with {code}; coturn log:\n{}", turn.log()));
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    // Another secret: refused.
    let wrong = credential("not-the-turn-secret", &username);
    assert_eq!(allocate(turn.addr(), &username, &wrong).await, Err(401));
    // Right secret, but past its expiry: refused.
    let expired = format!("{}:alice", now - 60);
    let expired_pw = credential(TURN_SECRET, &expired);
    assert_eq!(allocate(turn.addr(), &expired, &expired_pw).await, Err(401));
    // Someone else's name with alice's credential: refused.
    let other = format!("{expiry}:mallory");
    assert_eq!(allocate(turn.addr(), &other, &password).await, Err(401));

    // Rotation, step 1 done (coturn has both secrets): credentials signed with the next secret
    // work as well, so central can be switched to it without refusing anyone.
    let next = credential(NEXT_SECRET, &username);
    assert!(allocate(turn.addr(), &username, &next).await.is_ok());

    // A second login (as on reconnect) gets a fresh credential that works too.
    let (_, again) = c.login("bob").await;
    let u = again["iceServers"][1]["username"].as_str().unwrap();
    let p = again["iceServers"][1]["credential"].as_str().unwrap();
    assert!(u.ends_with(":bob"));
    assert!(allocate(turn.addr(), u, p).await.is_ok());

    let metrics = c.metrics().await;
    let issued = metrics
        .lines()
        .find(|l| l.starts_with("central_turn_credentials_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(issued, Some(2.0), "{metrics}");
}
