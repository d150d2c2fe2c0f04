//! Central, the coordinator of the signaling cluster: the node registry (gRPC), weighted least
//! connections, the login API that hands each user a node and a ticket, and the dev cluster.
//!
//! `main.rs` parses the flags into a [`Config`], binds the [`Listeners`] and calls [`run`].

pub mod api;
pub mod assets;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod config;
pub mod cors;
pub mod dev;
pub mod error;
pub mod grpc;
pub mod http;
pub mod ice;
pub mod liveness;
pub mod login;
pub mod registry;
pub mod telemetry;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_proto::grpc_auth::{AuthLayer, GrpcKey, Signer};
use signal_proto::registry::registry_server::RegistryServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::CentralError;

use crate::grpc::RegistryService;
use crate::http::AppState;
use crate::login::Login;
use crate::registry::Registry;

/// How long in-flight requests get to finish after shutdown began.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The bound sockets central serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Login API, /v1/nodes, health, metrics, demo.
    pub http: TcpListener,
    /// Node registry (gRPC).
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds both listeners; the error names the address that failed.
    pub async fn bind(http: SocketAddr, grpc: SocketAddr) -> Result<Listeners, CentralError> {
        let bind = |flag: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| CentralError::Config(format!("{flag} {addr}: cannot listen: {e}")))
        };
        Ok(Listeners {
            http: bind("--http-listen", http).await?,
            grpc: bind("--grpc-listen", grpc).await?,
        })
    }
}

/// Serves until `shutdown` resolves; then `/readyz` answers 503, the servers stop accepting,
/// finish the requests in flight (up to [`SHUTDOWN_GRACE`]) and `run` returns `Ok`.
///
/// A Redis that is down is not an error: logins answer 503 and `/readyz` shows it until it is
/// back.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CentralError> {
    let registry = match &config.redis {
        Some(cfg) => Registry::redis(cfg, config.ticket_ttl)?,
        None => Registry::memory(config.ticket_ttl),
    };
    serve(config, listeners, registry, shutdown).await
}

/// [`run`] with a registry made by the caller (the dev cluster keeps a handle on it).
pub async fn serve(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CentralError> {
    serve_with(config, listeners, registry, None, None, shutdown).await
}

/// [`serve`] for the dev cluster: the HTTP API also serves the dev-only routes
/// (`POST /v1/dev/nodes/{id}/drain`), which drain the cluster's in-process nodes, and the
/// server API reads the cluster's in-memory `directory`.
pub async fn serve_dev(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    nodes: dev::DevNodes,
    stores: (
        signal_node::Directory,
        signal_node::presence::store::PresenceStore,
    ),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CentralError> {
    serve_with(
        config,
        listeners,
        registry,
        Some(nodes),
        Some(stores),
        shutdown,
    )
    .await
}

/// The server API, when `--api-key` enables it: its directory is the dev cluster's
/// (`dev_stores`) or the Redis at `--api-redis-url` / `--redis-url`.
fn server_api(
    config: &Config,
    registry: &Registry,
    grpc_key: &GrpcKey,
    dev_stores: Option<(
        signal_node::Directory,
        signal_node::presence::store::PresenceStore,
    )>,
) -> Result<Option<api::ServerApi>, CentralError> {
    let Some(api_config) = &config.api else {
        return Ok(None);
    };
    let stores = match (dev_stores, &api_config.redis) {
        (Some(s), _) => s,
        (None, Some(redis)) => (
            signal_node::Directory::redis(redis.clone())
                .map_err(|e| CentralError::Config(format!("--api-redis-url: {e}")))?,
            signal_node::presence::store::PresenceStore::redis(redis.clone())
                .map_err(|e| CentralError::Config(format!("--api-redis-url: {e}")))?,
        ),
        (None, None) => {
            return Err(CentralError::Config(
                "--api-key (CENTRAL_API_KEYS) needs the nodes' directory: --api-redis-url or --redis-url"
                    .into(),
            ))
        }
    };
    let peers = signal_node::peers::Peers::new(grpc_key.clone(), config.grpc_tls.clone());
    tracing::info!(keys = api_config.keys.len(), "server API enabled");
    Ok(Some(api::ServerApi::new(
        api_config,
        stores,
        peers,
        registry.clone(),
    )))
}

/// The login's verifier (`None`: open login). Outside dev mode an open login needs
/// `config.open_login` (`--open-login`), and then says so once at start.
fn login_policy(config: &Config) -> Result<Option<auth::JwtVerifier>, CentralError> {
    let Some(secret) = &config.jwt_secret else {
        if !config.dev && !config.open_login {
            return Err(CentralError::Config(format!(
                "--jwt-secret (CENTRAL_JWT_SECRET) {}",
                cli::OPEN_LOGIN_REFUSED
            )));
        }
        if !config.dev {
            tracing::warn!(
                "login is OPEN (--open-login): anyone who reaches central can log in as any \
                 user id; use --jwt-secret for anything public"
            );
        }
        telemetry::open_login(true);
        return Ok(None);
    };
    telemetry::open_login(false);
    Ok(Some(auth::JwtVerifier::new(
        secret.as_bytes(),
        auth::JwtRules {
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway_secs: config.jwt_leeway.as_secs(),
        },
    )))
}

async fn serve_with(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    dev_nodes: Option<dev::DevNodes>,
    dev_stores: Option<(
        signal_node::Directory,
        signal_node::presence::store::PresenceStore,
    )>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CentralError> {
    telemetry::describe();
    let jwt = login_policy(&config)?;
    let http_addr = listeners.http.local_addr()?;
    let grpc_addr = listeners.grpc.local_addr()?;

    // Internal gRPC credentials: the registry accepts only calls signed with the cluster
    // secret, and central's probes of the nodes are signed with it.
    let grpc_key = GrpcKey::new(config.secret.as_bytes());
    let server_api = server_api(&config, &registry, &grpc_key, dev_stores)?;
    let probe_now = liveness::ProbeNow::default();
    let background = CancellationToken::new();
    let sweeper = tokio::spawn(liveness::sweep(
        registry.clone(),
        config.node_timeout,
        background.clone(),
    ));
    let prober = tokio::spawn(liveness::probe(
        registry.clone(),
        liveness::ProbeConfig {
            interval: config.probe_interval,
            node_timeout: config.node_timeout,
            signer: Signer::new(grpc_key.clone()),
            now: probe_now.clone(),
            tls: config.grpc_tls.clone(),
        },
        background.clone(),
    ));

    let ready = Arc::new(AtomicBool::new(true));
    let state = AppState {
        login: Login::new(registry.clone(), &config.secret, jwt, config.ticket_ttl)
            .with_ice(config.ice.clone()),
        allowed_origins: config.allowed_origins.clone(),
        registry: registry.clone(),
        ready: ready.clone(),
        metrics: config.metrics.clone(),
        dev_nodes,
        api: server_api,
        api_max_body_bytes: config
            .api
            .as_ref()
            .map_or(api::DEFAULT_MAX_BODY_BYTES, |a| a.max_body_bytes),
    };

    let stop = CancellationToken::new();
    let mut http = tokio::spawn(
        axum::serve(listeners.http, http::router(state))
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let service = RegistryService::new(
        registry.clone(),
        config.heartbeat_interval,
        config.node_timeout,
        probe_now,
    );
    let mut grpc_server = tonic::transport::Server::builder();
    if let Some(tls) = &config.grpc_tls {
        grpc_server = grpc_server
            .tls_config(tls.server())
            .map_err(|e| CentralError::Config(format!("--grpc-tls-cert/--grpc-tls-key: {e}")))?;
    }
    let mut grpc = tokio::spawn(
        grpc_server
            .layer(AuthLayer::new(grpc_key, telemetry::GRPC_AUTH_REFUSED))
            .add_service(RegistryServer::new(service))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listeners.grpc),
                stop.clone().cancelled_owned(),
            ),
    );
    tracing::info!(
        http = %http_addr,
        grpc = %grpc_addr,
        registry = ?registry,
        jwt = config.jwt_secret.is_some(),
        allowed_origins = %config.allowed_origins,
        stun = config.ice.stun_urls.len(),
        turn = config.ice.has_turn(),
        heartbeat_ms = config.heartbeat_interval.as_millis() as u64,
        node_timeout_ms = config.node_timeout.as_millis() as u64,
        "central serving"
    );

    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut http => Some(match r {
            Ok(Ok(())) => CentralError::Task("http server stopped unexpectedly".into()),
            Ok(Err(e)) => CentralError::Http(e),
            Err(e) => CentralError::Task(e.to_string()),
        }),
        r = &mut grpc => Some(match r {
            Ok(Ok(())) => CentralError::Task("grpc server stopped unexpectedly".into()),
            Ok(Err(e)) => CentralError::Grpc(e),
            Err(e) => CentralError::Task(e.to_string()),
        }),
    };
    ready.store(false, Ordering::SeqCst);
    stop.cancel();
    background.cancel();
    if let Some(e) = early {
        http.abort();
        grpc.abort();
        return Err(e);
    }
    tracing::info!("central shutting down: finishing requests in flight");
    let servers = async {
        let _ = (&mut http).await;
        let _ = (&mut grpc).await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, servers).await.is_err() {
        tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "requests still in flight after the grace period: stopping anyway"
        );
        http.abort();
        grpc.abort();
    }
    let _ = sweeper.await;
    let _ = prober.await;
    tracing::info!("central stopped");
    Ok(())
}
