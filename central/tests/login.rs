//! The login API against real processes: errors (400/401/503), JWT mode, tickets that only
//! the chosen node accepts, logins spread by weight, CORS, and the demo page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{login, Central, Node, Timing};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use signal_proto::ticket::unix_now;
use testkit::WsClient;

const JWT_SECRET: &str = "app-backend-secret";

fn jwt(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn assert_error(status: u16, body: &serde_json::Value, want: u16) {
    assert_eq!(status, want, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "error body must carry a message: {body}");
}

#[tokio::test]
async fn dev_login_errors() {
    let c = Central::start(Timing::FAST, &[]).await;
    let base = c.url();
    let (s, b) = login(&base, None, None).await;
    assert_error(s, &b, 400);
    for bad in ["", "a b", "tab\there", &"x".repeat(129)] {
        let (s, b) = login(&base, Some(bad), None).await;
        assert_error(s, &b, 400);
    }
    // No node registered yet.
    let (s, b) = login(&base, Some("alice"), None).await;
    assert_error(s, &b, 503);
    assert!(b["error"].as_str().unwrap().contains("no live signal node"));
    // A malformed query string is a 400 with a JSON body too.
    let resp = reqwest::get(format!("{base}/v1/endpoint?user=%ZZ&user=b"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let b: serde_json::Value = resp.json().await.unwrap();
    assert!(b["error"].is_string());
}

#[tokio::test]
async fn jwt_mode() {
    let c = Central::start(Timing::FAST, &["--jwt-secret", JWT_SECRET]).await;
    let _n = Node::start("j1", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["j1"], Duration::from_secs(10)).await;
    let base = c.url();
    let exp = unix_now() + 300;
    let good = jwt(JWT_SECRET, json!({"sub": "carol", "exp": exp}));

    let (s, b) = login(&base, None, Some(&good)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["node"], "j1");
    // A token with an `aud` is fine when central checks no audience.
    let with_aud = jwt(JWT_SECRET, json!({"sub": "carol", "exp": exp, "aud": "x"}));
    let (s, b) = login(&base, None, Some(&with_aud)).await;
    assert_eq!(s, 200, "{b}");
    // The user parameter may be given if it matches the subject.
    let (s, b) = login(&base, Some("carol"), Some(&good)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = login(&base, Some("mallory"), Some(&good)).await;
    assert_error(s, &b, 401);
    // No token: the user parameter alone is not enough.
    let (s, b) = login(&base, Some("carol"), None).await;
    assert_error(s, &b, 401);
    let expired = jwt(JWT_SECRET, json!({"sub": "carol", "exp": unix_now() - 600}));
    let (s, b) = login(&base, None, Some(&expired)).await;
    assert_error(s, &b, 401);
    assert!(b["error"].as_str().unwrap().contains("expired"), "{b}");
    let forged = jwt("some-other-secret", json!({"sub": "carol", "exp": exp}));
    let (s, b) = login(&base, None, Some(&forged)).await;
    assert_error(s, &b, 401);
    assert!(b["error"].as_str().unwrap().contains("signature"), "{b}");
    let (s, b) = login(&base, None, Some("garbage")).await;
    assert_error(s, &b, 401);
    let no_exp = jwt(JWT_SECRET, json!({"sub": "carol"}));
    let (s, b) = login(&base, None, Some(&no_exp)).await;
    assert_error(s, &b, 401);
    let bad_sub = jwt(JWT_SECRET, json!({"sub": "has space", "exp": exp}));
    let (s, b) = login(&base, None, Some(&bad_sub)).await;
    assert_error(s, &b, 400);

    // The ticket from a JWT login names the token's subject.
    let (_, b) = login(&base, None, Some(&good)).await;
    let url = format!(
        "{}?token={}",
        b["url"].as_str().unwrap(),
        b["token"].as_str().unwrap()
    );
    let (_ws, welcome) = WsClient::connect_welcomed(&url).await;
    assert_eq!(welcome["user"], "carol");
    assert_eq!(welcome["node"], "j1");
}

#[tokio::test]
async fn a_ticket_for_node_a_is_refused_by_node_b() {
    let c = Central::start(Timing::FAST, &[]).await;
    let a = Node::start("A", &c.grpc_url(), 1, &[]);
    let b = Node::start("B", &c.grpc_url(), 1, &[]);
    c.wait_nodes(&["A", "B"], Duration::from_secs(10)).await;
    let resp = reqwest::get(format!("{}/v1/endpoint?user=dave", c.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["expiresIn"], 60);
    let token = body["token"].as_str().unwrap();
    let (mine, other) = if body["node"] == "A" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(body["url"], mine.ws_url());
    let refused = WsClient::try_connect(&format!("{}?token={token}", other.ws_url()))
        .await
        .err()
        .expect("the other node must refuse the ticket");
    assert_eq!(refused.status, Some(401), "{refused:?}");
    let (_ws, welcome) =
        WsClient::connect_welcomed(&format!("{}?token={token}", mine.ws_url())).await;
    assert_eq!(welcome["user"], "dave");
    assert_eq!(welcome["node"], mine.id);
}

#[tokio::test]
async fn logins_spread_by_weight() {
    // Heartbeats are rare here, so the assignment counters are not reset during the test.
    let c = Central::start(Timing::SLOW, &[]).await;
    let _light = Node::start("light", &c.grpc_url(), 1, &[]);
    let _heavy = Node::start("heavy", &c.grpc_url(), 3, &[]);
    c.wait_nodes(&["heavy", "light"], Duration::from_secs(10))
        .await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..400 {
        let (s, b) = c.login(&format!("w{i}")).await;
        assert_eq!(s, 200, "{b}");
        *counts
            .entry(b["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(counts["light"].abs_diff(100) <= 1, "{counts:?}");
    assert!(counts["heavy"].abs_diff(300) <= 1, "{counts:?}");
    let nodes = c.nodes().await;
    let assigned: u64 = nodes.iter().map(|n| n["assigned"].as_u64().unwrap()).sum();
    assert_eq!(assigned, 400);
    let m = c.metrics().await;
    assert!(
        m.contains("central_assignments_total{node=\"heavy\"}"),
        "{m}"
    );
    assert!(m.contains("central_login_duration_seconds"), "{m}");
}

#[tokio::test]
async fn cors_health_metrics_and_demo() {
    let c = Central::start(Timing::FAST, &[]).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/v1/endpoint?user=x", c.url()))
        .header("Origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/endpoint", c.url()))
        .header("Origin", "http://example.test")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = client
        .get(format!("{}/healthz", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let r: serde_json::Value = client
        .get(format!("{}/readyz", c.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["ready"], true);
    assert_eq!(r["openLogin"], true);
    assert_eq!(r["registry"]["store"], "memory");
    let m = client
        .get(format!("{}/metrics", c.url()))
        .send()
        .await
        .unwrap();
    assert!(m.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = m.text().await.unwrap();
    assert!(m.contains("central_evictions_total 0"), "{m}");
    assert!(m.contains("central_nodes{state=\"active\"} 0"), "{m}");
    // The demo: `/` is index.html when the web folder has one; unknown paths are 404.
    let root = client.get(format!("{}/", c.url())).send().await.unwrap();
    let has_index = testkit::workspace_root().join("web/index.html").exists();
    assert_eq!(root.status() == 200, has_index);
    if has_index {
        assert_eq!(root.headers()["content-type"], "text/html; charset=utf-8");
    }
    let js = client
        .get(format!("{}/signal-client.js", c.url()))
        .send()
        .await
        .unwrap();
    if testkit::workspace_root()
        .join("web/signal-client.js")
        .exists()
    {
        assert_eq!(js.status(), 200);
        assert_eq!(
            js.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
    }
    let missing = client
        .get(format!("{}/no-such-file.html", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let pkg = client
        .get(format!("{}/package.json", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(pkg.status(), 404);
}

#[tokio::test]
async fn jwt_audience_issuer_and_leeway() {
    let c = Central::start(
        Timing::FAST,
        &[
            "--jwt-secret",
            JWT_SECRET,
            "--jwt-audience",
            "signal",
            "--jwt-issuer",
            "https://app.example",
            "--jwt-leeway-secs",
            "30",
        ],
    )
    .await;
    let base = c.url();
    let now = unix_now();
    let with = |extra: serde_json::Value| {
        let mut claims = json!({"sub": "carol", "exp": now + 300, "aud": "signal", "iss": "https://app.example"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        jwt(JWT_SECRET, claims)
    };
    // Accepted (no node registered: 503 means the token passed).
    for ok in [
        json!({}),
        json!({"aud": ["other", "signal"]}),
        json!({"exp": now - 10}),
    ] {
        let (s, b) = login(&base, None, Some(&with(ok.clone()))).await;
        assert_eq!(s, 503, "{ok}: {b}");
    }
    // Each refusal is a 401 that says why.
    for (claims, why) in [
        (
            json!({"aud": "other"}),
            "audience (`aud`) is not \"signal\"",
        ),
        (json!({"aud": null}), "lacks a valid `aud` claim"),
        (
            json!({"iss": "https://evil.example"}),
            "issuer (`iss`) is not \"https://app.example\"",
        ),
        (json!({"iss": null}), "lacks a valid `iss` claim"),
        (json!({"exp": null}), "lacks a valid `exp` claim"),
        (json!({"exp": now - 120}), "expired"),
        (json!({"nbf": now + 120}), "not valid yet"),
    ] {
        let (s, b) = login(&base, None, Some(&with(claims.clone()))).await;
        assert_error(s, &b, 401);
        let msg = b["error"].as_str().unwrap();
        assert!(msg.contains(why), "{claims}: {msg:?} should say {why:?}");
    }
    let forged = jwt(
        "not-the-secret",
        json!({"sub": "carol", "exp": now + 300, "aud": "signal", "iss": "https://app.example"}),
    );
    let (s, b) = login(&base, None, Some(&forged)).await;
    assert_error(s, &b, 401);
    assert!(b["error"].as_str().unwrap().contains("signature"), "{b}");
    let (s, b) = login(&base, None, Some("not-a-jwt")).await;
    assert_error(s, &b, 401);
    assert!(b["error"].as_str().unwrap().contains("malformed"), "{b}");
    let m = c.metrics().await;
    assert!(
        m.contains("central_jwt_refused_total{reason=\"wrong_audience\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn cors_echoes_only_allowed_origins() {
    let c = Central::start(
        Timing::FAST,
        &[
            "--allowed-origins",
            "https://app.example,http://localhost:3000",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, origin: Option<&str>| {
        let mut req = client.get(format!("{}{path}", c.url()));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send()
    };
    let acao = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // An allowed origin is echoed (no node: 503, but a readable one).
    let r = get("/v1/endpoint?user=alice", Some("https://app.example"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(acao(&r).as_deref(), Some("https://app.example"));
    assert!(r.headers()["vary"].to_str().unwrap().contains("origin"));
    let r = get("/v1/nodes", Some("http://localhost:3000"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(acao(&r).as_deref(), Some("http://localhost:3000"));

    // Another origin: no CORS answer, and the login is refused with 403.
    let r = get("/v1/endpoint?user=alice", Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(acao(&r), None);
    let b: serde_json::Value = r.json().await.unwrap();
    assert!(b["error"].as_str().unwrap().contains("not allowed"), "{b}");
    let r = get("/v1/nodes", Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(acao(&r), None);

    // No Origin header (a server, curl): not a browser, not affected.
    let r = get("/v1/endpoint?user=alice", None).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(acao(&r), None);

    // Preflights: allowed origin gets the answer with the Authorization header; others none.
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{}/v1/endpoint", c.url()))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let r = preflight("https://app.example").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(acao(&r).as_deref(), Some("https://app.example"));
    let allow_headers = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allow_headers.contains("authorization"), "{allow_headers}");
    let r = preflight("https://evil.example").await.unwrap();
    assert_eq!(acao(&r), None);
    assert!(c.metrics().await.contains("central_origin_refused_total 1"));
}
