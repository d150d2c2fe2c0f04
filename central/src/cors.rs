//! Which browser origins may use central's API (`--allowed-origins`): the CORS answers of the
//! API routes (login, `/v1/nodes`, preflights) echo only allowed origins, and a login from a
//! page of another origin is refused with 403. Requests without an `Origin` header (servers,
//! curl, same-origin GETs of the demo page) are not affected. The default allows any origin.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use signal_node::origin::AllowedOrigins;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer of the API routes: permissive (`*`) when any origin is allowed, else one that
/// echoes the request's origin only when it is on the list (and says `Vary: Origin`).
pub fn layer(allowed: &AllowedOrigins) -> CorsLayer {
    if allowed.is_any() {
        return CorsLayer::permissive();
    }
    let list = allowed.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(
            move |origin: &HeaderValue, _parts| origin.to_str().is_ok_and(|o| list.allows(o)),
        ))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// The login's Origin check: `Err` is the 403 to answer (logged once and counted).
pub fn check_login(allowed: &AllowedOrigins, headers: &HeaderMap) -> Result<(), ApiError> {
    allowed.check(headers).map_err(|origin| {
        tracing::info!(origin = %origin, "login refused: origin not allowed");
        crate::telemetry::origin_refused();
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed to log in (--allowed-origins)"),
        )
    })
}
