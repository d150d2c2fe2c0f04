//! What central measures, under which metric names (rendered by `/metrics`).

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::error::LoginError;
use crate::login::Endpoint;

pub const NODES: &str = "central_nodes";
pub const ASSIGNMENTS: &str = "central_assignments_total";
pub const LOGINS: &str = "central_logins_total";
pub const LOGIN_SECONDS: &str = "central_login_duration_seconds";
pub const EVICTIONS: &str = "central_evictions_total";
pub const REGISTRATIONS: &str = "central_registrations_total";
pub const PROBE_FAILURES: &str = "central_probe_failures_total";
pub const REGISTRY_UP: &str = "central_registry_up";
pub const GRPC_AUTH_REFUSED: &str = "central_grpc_auth_refused_total";
pub const TURN_CREDENTIALS: &str = "central_turn_credentials_total";
pub const JWT_REFUSED: &str = "central_jwt_refused_total";
pub const ORIGIN_REFUSED: &str = "central_origin_refused_total";
pub const OPEN_LOGIN: &str = "central_open_login";
pub const API_REQUESTS: &str = "central_api_requests_total";
pub const API_SECONDS: &str = "central_api_request_seconds";

/// Describes every metric once (idempotent) and zeroes the counters so that they show up
/// before the first event.
pub fn describe() {
    describe_gauge!(
        NODES,
        "Registered signal nodes by state (active, draining, down)."
    );
    describe_counter!(ASSIGNMENTS, "Logins handed to each node by this replica.");
    describe_counter!(LOGINS, "Login requests by result.");
    describe_histogram!(LOGIN_SECONDS, "Time to answer a login request, in seconds.");
    describe_counter!(EVICTIONS, "Nodes evicted for missing heartbeats.");
    describe_counter!(
        REGISTRATIONS,
        "Node registrations by kind (new, again, replaced)."
    );
    describe_counter!(PROBE_FAILURES, "Failed probes of a node's Relay.Probe.");
    describe_gauge!(
        REGISTRY_UP,
        "1 when the registry's store (Redis) answers, else 0."
    );
    describe_counter!(
        GRPC_AUTH_REFUSED,
        "Registry gRPC calls refused for missing or invalid credentials, by reason."
    );
    describe_counter!(
        TURN_CREDENTIALS,
        "TURN credentials handed out in login answers."
    );
    describe_counter!(
        JWT_REFUSED,
        "Login JWTs refused, by reason (expired, bad_signature, wrong_audience, ...)."
    );
    describe_counter!(
        ORIGIN_REFUSED,
        "Logins refused because their Origin is not on --allowed-origins."
    );
    describe_gauge!(
        OPEN_LOGIN,
        "1 when anyone may log in as anyone (--dev or --open-login), 0 with JWT login."
    );
    describe_counter!(
        API_REQUESTS,
        "Server API requests by route and HTTP status (401: bad key, 404: API disabled)."
    );
    describe_histogram!(
        API_SECONDS,
        "Time to answer a server API request, in seconds."
    );
    counter!(EVICTIONS).absolute(0);
    counter!(TURN_CREDENTIALS).absolute(0);
    counter!(ORIGIN_REFUSED).absolute(0);
    for state in ["active", "draining", "down"] {
        gauge!(NODES, "state" => state).set(0.0);
    }
}

pub fn login(elapsed: Duration, result: &Result<Endpoint, LoginError>) {
    histogram!(LOGIN_SECONDS).record(elapsed.as_secs_f64());
    match result {
        Ok(e) => {
            counter!(LOGINS, "result" => "ok").increment(1);
            counter!(ASSIGNMENTS, "node" => e.node.clone()).increment(1);
        }
        Err(e) => counter!(LOGINS, "result" => e.label()).increment(1),
    }
}

pub fn turn_credential() {
    counter!(TURN_CREDENTIALS).increment(1);
}

pub fn evicted(n: usize) {
    counter!(EVICTIONS).increment(n as u64);
}

pub fn registered(kind: &'static str) {
    counter!(REGISTRATIONS, "kind" => kind).increment(1);
}

pub fn probe_failed(node: &str) {
    counter!(PROBE_FAILURES, "node" => node.to_owned()).increment(1);
}

pub fn nodes(active: usize, draining: usize, down: usize) {
    gauge!(NODES, "state" => "active").set(active as f64);
    gauge!(NODES, "state" => "draining").set(draining as f64);
    gauge!(NODES, "state" => "down").set(down as f64);
}

/// `central_registry_up`, and `redis_up{mode=...}` when the registry is in Redis.
pub fn registry_up(up: bool, mode: Option<signal_node::redis_link::RedisMode>) {
    let up = if up { 1.0 } else { 0.0 };
    gauge!(REGISTRY_UP).set(up);
    if let Some(mode) = mode {
        gauge!("redis_up", "mode" => mode.as_str()).set(up);
    }
}

pub fn jwt_refused(reason: &'static str) {
    counter!(JWT_REFUSED, "reason" => reason).increment(1);
}

pub fn origin_refused() {
    counter!(ORIGIN_REFUSED).increment(1);
}

pub fn open_login(open: bool) {
    gauge!(OPEN_LOGIN).set(if open { 1.0 } else { 0.0 });
}
