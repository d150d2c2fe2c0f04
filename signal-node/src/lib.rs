//! Signal node: the stateless WebSocket relay of the signaling cluster. Holds its users'
//! connections, relays ROAP messages to peers on the same node or over gRPC to the node that
//! holds the peer (found in the directory), registers with central, drains gracefully.
//!
//! Entry point: [`run`] with a [`Config`] and bound [`Listeners`].

pub mod cli;
pub mod config;
pub mod connection;
pub mod directory;
pub mod error;
pub mod http;
pub mod hub;
pub mod liveness;
pub mod mailbox;
pub mod node;
pub mod origin;
pub mod outbound;
pub mod outlet;
pub mod peers;
pub mod presence;
pub mod ratelimit;
pub mod readahead;
pub mod redis_link;
pub mod registration;
pub mod relay;
pub mod rooms;
pub mod router;
pub mod session;
pub mod telemetry;
pub mod tickets;
pub mod webhooks;

use std::future::{Future, IntoFuture};
use std::time::Duration;

use signal_proto::grpc_auth::AuthLayer;
use signal_proto::relay::relay_server::RelayServer;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use config::{Config, DirectoryConfig};
pub use directory::Directory;
pub use error::NodeError;
pub use node::Node;

/// The node's bound sockets (bind port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// WebSocket `/ws`, `/healthz`, `/readyz`, `/metrics`.
    pub http: tokio::net::TcpListener,
    /// The `Relay` gRPC service.
    pub grpc: tokio::net::TcpListener,
}

/// Time given to the servers to stop after the drain.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Time given to the webhook queue to empty at shutdown.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(2);
/// Streams a peer may reset before the server accepted them, per HTTP/2 connection (see the
/// gRPC server below).
const GRPC_MAX_PENDING_RESETS: usize = 4096;

/// Serves until `shutdown` resolves, then drains: tells central it is draining (no new
/// logins; still listed for the other nodes), answers 503 on `/readyz` and new upgrades,
/// closes the connections with 1012 spread over `config.drain`, lets in-flight forwards
/// finish, deregisters from central, stops gRPC, returns `Ok`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let http_addr = listeners.http.local_addr()?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let ws_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("ws://{http_addr}/ws"));
    let grpc_url = config.grpc_advertise.clone().unwrap_or_else(|| {
        let scheme = if config.grpc_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{grpc_addr}")
    });
    let directory = match &config.directory {
        DirectoryConfig::Memory(d) => d.clone(),
        DirectoryConfig::Redis(url) => Directory::redis(url)?,
    };
    let metrics = config
        .metrics
        .clone()
        .unwrap_or_else(telemetry::metrics_handle);
    let central = config.central.clone();
    let drain = config.drain;
    let grpc_auth = AuthLayer::new(config.grpc_key(), telemetry::GRPC_AUTH_REFUSED);
    // h2 closes the whole connection when more than this many streams are reset by the
    // client before the server accepted them (its Rapid Reset guard, default 20). Between
    // nodes a burst of takeovers whose callers time out does exactly that and would drop
    // every call on the connection; the callers are other nodes that sign their calls.
    let mut grpc_server = tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(GRPC_MAX_PENDING_RESETS))
        // Each peer's frames arrive on one delivery stream: with HTTP/2's default 64 KiB
        // window it would carry one window per round trip, and a busy node would starve its
        // cross-node pairs (see peers/link.rs).
        .initial_stream_window_size(Some(peers::STREAM_WINDOW))
        .initial_connection_window_size(Some(peers::CONNECTION_WINDOW));
    if let Some(tls) = &config.grpc_tls {
        grpc_server = grpc_server
            .tls_config(tls.server())
            .map_err(|e| NodeError::Serve {
                server: "gRPC",
                reason: format!("--grpc-tls-cert/--grpc-tls-key: {e}"),
            })?;
    }
    let store = match (&config.mailbox_store, &config.directory) {
        (Some(s), _) => s.clone(),
        (None, DirectoryConfig::Redis(url)) => mailbox::MailboxStore::redis(url)?,
        (None, DirectoryConfig::Memory(_)) => mailbox::MailboxStore::memory(),
    };
    let mailbox = mailbox::Mailbox::new(store, config.mailbox);
    let hooks = match &config.webhooks {
        Some(w) => webhooks::Webhooks::start(w.clone()).map_err(|e| NodeError::Serve {
            server: "webhook client",
            reason: e.to_string(),
        })?,
        None => webhooks::Webhooks::disabled(),
    };
    let presence_store = match (&config.presence_store, &config.directory) {
        (Some(s), _) => s.clone(),
        (None, DirectoryConfig::Redis(redis)) => {
            presence::store::PresenceStore::redis(redis.clone())?
        }
        (None, DirectoryConfig::Memory(_)) => presence::store::PresenceStore::memory(),
    };
    let presence = presence::Presence::new(presence_store, config.presence);
    let room_store = match (&config.room_store, &config.directory) {
        (Some(s), _) => s.clone(),
        (None, DirectoryConfig::Redis(redis)) => rooms::RoomStore::redis(redis.clone())?,
        (None, DirectoryConfig::Memory(_)) => rooms::RoomStore::memory(),
    };
    let rooms = rooms::Rooms::new(room_store, config.rooms);
    let features = node::Features {
        directory,
        mailbox,
        webhooks: hooks,
        presence,
        rooms,
    };
    let node = Node::new(config, features, ws_url, grpc_url);
    metrics::gauge!("signal_draining").set(0.0);

    let grpc_stop = CancellationToken::new();
    // The relay server runs on the main runtime: it is the cross-node hot path (a Deliver
    // pushes into a session whose writer runs here; from another runtime every frame would
    // cost a cross-thread wake-up). The heartbeat has a thread of its own (below).
    let grpc =
        {
            let router = grpc_server.layer(grpc_auth).add_service(RelayServer::new(
                relay::RelayService::new(node.clone(), grpc_stop.clone()),
            ));
            let stop = grpc_stop.clone();
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listeners.grpc),
                        stop.cancelled_owned(),
                    )
                    .await
                    .map_err(|e| e.to_string())
            })
        };
    let http_stop = CancellationToken::new();
    let app = http::router(node.clone(), metrics);
    let listener = readahead::Listener(listeners.http);
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
    );
    let reg_stop = CancellationToken::new();
    let reg_draining = CancellationToken::new();
    let registration = match central {
        Some(url) => {
            let (node, draining, stop) = (node.clone(), reg_draining.clone(), reg_stop.clone());
            Some(liveness::on_own_thread("signal-heartbeat", move || {
                registration::run(node, url, draining, stop)
            })?)
        }
        None => None,
    };
    let expiry_stop = CancellationToken::new();
    let expiry = {
        let node = node.clone();
        tokio::spawn(
            node.expiry()
                .clone()
                .run(expiry_stop.clone(), move |id, user| node.expire(id, &user)),
        )
    };
    let reassert = {
        let node = node.clone();
        let mut changes = node.directory().reconnects();
        tokio::spawn(async move {
            let mut reconnects = true;
            loop {
                tokio::select! {
                    changed = changes.changed(), if reconnects => {
                        if changed.is_err() {
                            reconnects = false;
                            continue;
                        }
                    }
                    _ = node.reassert_requested() => {}
                }
                node.reassert().await;
            }
        })
    };
    let presence_stop = CancellationToken::new();
    let presence_flush = tokio::spawn(
        node.presence()
            .clone()
            .run(node.clone(), presence_stop.clone()),
    );
    tracing::info!(
        node = %node.id(),
        instance = node.instance(),
        http = %http_addr,
        grpc = %grpc_addr,
        ws_url = node.ws_url(),
        grpc_url = node.grpc_url(),
        "signal node serving"
    );

    shutdown.await;
    tracing::info!(node = %node.id(), "shutting down");
    node.set_draining();
    // Central hears "draining" at once (no new logins land here) but keeps the node in the
    // peer list while it drains: the other nodes go on relaying to its sessions, presence
    // notifications included, until each has moved. It deregisters once the drain is over.
    reg_draining.cancel();
    node.drain(drain).await;
    reg_stop.cancel();
    if let Some(reg) = registration {
        let _ = reg.await;
    }
    // The user.offline events of the drain get a short chance to go out (the queue is in
    // memory: what is left is lost, see docs/architecture.md).
    node.webhooks().shutdown(WEBHOOK_FLUSH).await;
    presence_stop.cancel();
    let _ = tokio::time::timeout(STOP_GRACE, presence_flush).await;
    http_stop.cancel();
    grpc_stop.cancel();
    reassert.abort();
    expiry_stop.cancel();
    let _ = expiry.await;
    let mut result = Ok(());
    match tokio::time::timeout(STOP_GRACE, grpc).await {
        Ok(Ok(Err(e))) => {
            result = Err(NodeError::Serve {
                server: "gRPC",
                reason: e.to_string(),
            })
        }
        Ok(Err(e)) => {
            result = Err(NodeError::Serve {
                server: "gRPC",
                reason: e.to_string(),
            })
        }
        Err(_) => tracing::warn!("gRPC server did not stop in time"),
        Ok(Ok(Ok(()))) => {}
    }
    match tokio::time::timeout(STOP_GRACE, http).await {
        Ok(Ok(Err(e))) => {
            result = Err(NodeError::Serve {
                server: "HTTP",
                reason: e.to_string(),
            })
        }
        Ok(Err(e)) => {
            result = Err(NodeError::Serve {
                server: "HTTP",
                reason: e.to_string(),
            })
        }
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
        Ok(Ok(Ok(()))) => {}
    }
    tracing::info!(node = %node.id(), "stopped");
    result
}
