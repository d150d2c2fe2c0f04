//! The other nodes: long-lived, lazily connected gRPC channels to each of them (cached by
//! gRPC URL), every call signed with the cluster's internal gRPC credentials, and the set of
//! nodes central last reported alive.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signal_proto::grpc_auth::{AuthChannel, GrpcKey, Signer, DEV_SECRET};
use signal_proto::grpc_tls::GrpcTls;
use signal_proto::registry::NodeInfo;
use signal_proto::relay::relay_client::RelayClient;
use signal_proto::relay::{
    DeliverRequest, DeliverStatus, DisconnectRequest, KickRequest, Location, NotifyRequest,
    NotifyResponse, ProbeRequest, ProbeResponse, RoomEventRequest, RoomEventResponse,
    RoomMessageRequest, RoomMessageResponse, SubmitRequest, SubmitResponse, TakeSessionRequest,
    TakeSessionResponse,
};
use tonic::transport::{Channel, Endpoint};

mod link;

use link::Link;

/// Frames queued for one peer node at most, and frames sent to it and not yet answered at
/// most (`--forward-queue`).
pub const DEFAULT_FORWARD_QUEUE: usize = 4096;
/// HTTP/2 flow-control windows on node-to-node connections (both directions): one delivery
/// stream carries all of a peer's frames, so it needs more than the default 64 KiB in flight.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Time to establish a TCP connection to a peer node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for one relay call, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for one relay call to a node central no longer lists alive (it gets a short chance:
/// it may be a node that registered after our last heartbeat).
pub const GONE_TIMEOUT: Duration = Duration::from_millis(500);
/// Time for a session handover (the new connection waits for it before its Welcome).
pub const TAKE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Largest handover answer accepted (a resume buffer plus protobuf framing).
const MAX_TAKE_BYTES: usize = 64 * 1024 * 1024;
/// Cached channels above this are dropped all at once (URLs come from directory entries).
const MAX_CHANNELS: usize = 1024;

/// Why a call to a peer node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// Connection refused: no process listens there, the node is most likely gone.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The call failed in transport (connection dropped mid-call, HTTP/2 error, keep-alive
    /// timeout under load): the node may be alive and may even have delivered the frame.
    #[error("transport error: {0}")]
    Transient(String),
    /// No answer within the request timeout: the node may be overloaded.
    #[error("node did not answer within {0:?}")]
    Timeout(Duration),
    /// The directory entry names a URL that cannot be dialled.
    #[error("bad gRPC url {0:?}")]
    BadUrl(String),
    /// The node answered with an error.
    #[error("node refused the call: {0}")]
    Refused(String),
}

/// What central says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Listed alive with this instance in a fresh peer list.
    Alive,
    /// Positively dead: this instance was listed before and has left the list (evicted or
    /// deregistered), or the node id is now listed with a newer instance (it restarted).
    Gone,
    /// No fresh peer list (no central, or central silent), or an instance this node has never
    /// seen listed and that is not older than the listed one: it may have registered after
    /// our last heartbeat (a node restarted under the same id while the list still names
    /// its previous instance).
    Unknown,
}

/// A peer's answer to one delivery, waited for at most `timeout` (its time recorded).
async fn answered(
    answer: impl std::future::Future<Output = Result<DeliverStatus, ForwardError>>,
    timeout: Duration,
) -> Result<DeliverStatus, ForwardError> {
    let start = Instant::now();
    let res = tokio::time::timeout(timeout, answer).await;
    metrics::histogram!("signal_grpc_forward_seconds").record(start.elapsed().as_secs_f64());
    res.unwrap_or(Err(ForwardError::Timeout(timeout)))
}

/// A new node instance id: 16 hex digits, the start time in milliseconds (11 digits, good
/// until the year 2527) then 20 random bits, so that of two instances of one node id the
/// later started compares greater (see [`Peers::liveness`]).
pub fn new_instance() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!(
        "{:011x}{:05x}",
        ms & 0xfff_ffff_ffff,
        rand::random::<u32>() & 0xf_ffff
    )
}

/// Whether instance `a` of a node id started before instance `b` (ids of [`new_instance`]'s
/// form compare as strings of equal length; ids of any other form are never called older).
fn started_before(a: &str, b: &str) -> bool {
    a.len() == b.len() && a < b
}

/// How many departed node instances are remembered.
const MAX_DEPARTED: usize = 4096;

#[derive(Debug)]
struct LiveSet {
    at: Instant,
    fresh_for: Duration,
    nodes: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct LiveState {
    current: Option<LiveSet>,
    /// (node id, instance) pairs that were listed and then left the list, oldest first.
    departed: VecDeque<(String, String)>,
}

/// A relay client whose calls carry the credentials.
pub type PeerClient = RelayClient<AuthChannel<Channel>>;

/// Channels to peer nodes and central's live set. A cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, PeerClient>>>,
    /// One delivery stream per peer URL (the relay hot path), created at first use.
    links: Arc<Mutex<HashMap<String, Link>>>,
    forward_queue: usize,
    live: Arc<Mutex<LiveState>>,
    signer: Signer,
    tls: Option<GrpcTls>,
}

impl Default for Peers {
    /// Calls signed with the public dev key (see `Config::grpc_key`).
    fn default() -> Self {
        Peers::new(GrpcKey::new(DEV_SECRET.as_bytes()), None)
    }
}

impl Peers {
    /// Peers whose calls are signed with `key` (and use mutual TLS to `https://` URLs when
    /// `tls` is set).
    pub fn new(key: GrpcKey, tls: Option<GrpcTls>) -> Self {
        Peers {
            channels: Arc::default(),
            links: Arc::default(),
            forward_queue: DEFAULT_FORWARD_QUEUE,
            live: Arc::default(),
            signer: Signer::new(key),
            tls,
        }
    }

    /// The same peers with at most `n` frames queued (and `n` unanswered) per peer node.
    pub fn with_forward_queue(mut self, n: usize) -> Self {
        self.forward_queue = n.max(1);
        self
    }

    /// The delivery stream to `grpc_url`, started on first use (on the caller's runtime).
    fn link(&self, grpc_url: &str) -> Result<Link, ForwardError> {
        let mut map = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = map.get(grpc_url) {
            return Ok(l.clone());
        }
        let client = self.client(grpc_url)?;
        let link = Link::spawn(client, grpc_url.to_owned(), self.forward_queue);
        if map.len() >= MAX_CHANNELS {
            map.clear();
        }
        map.insert(grpc_url.to_owned(), link.clone());
        Ok(link)
    }

    /// The relay client for `grpc_url`, creating a lazily connected channel on first use.
    pub fn client(&self, grpc_url: &str) -> Result<PeerClient, ForwardError> {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(grpc_url) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(grpc_url.to_owned())
            .map_err(|_| ForwardError::BadUrl(grpc_url.to_owned()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let endpoint = signal_proto::grpc_tls::endpoint(endpoint, self.tls.as_ref())
            .map_err(|_| ForwardError::BadUrl(grpc_url.to_owned()))?;
        let client = RelayClient::new(AuthChannel::new(
            endpoint.connect_lazy(),
            self.signer.clone(),
        ));
        if map.len() >= MAX_CHANNELS {
            map.clear();
        }
        map.insert(grpc_url.to_owned(), client.clone());
        Ok(client)
    }

    /// Records central's list of live nodes, considered fresh for `fresh_for`. Instances that
    /// were in the previous list and are not in this one are remembered as departed; those
    /// that departed with this list are returned (node id, instance).
    pub fn set_live(&self, peers: &[NodeInfo], fresh_for: Duration) -> Vec<(String, String)> {
        let nodes: HashMap<String, String> = peers
            .iter()
            .map(|p| (p.node_id.clone(), p.instance.clone()))
            .collect();
        let mut st = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut gone = Vec::new();
        if let Some(prev) = st.current.take() {
            for (id, instance) in prev.nodes {
                if nodes.get(&id) != Some(&instance) {
                    gone.push((id.clone(), instance.clone()));
                    st.departed.push_back((id, instance));
                }
            }
        }
        // An instance listed again (re-registered after an eviction) is alive again.
        st.departed
            .retain(|(id, instance)| nodes.get(id) != Some(instance));
        while st.departed.len() > MAX_DEPARTED {
            st.departed.pop_front();
        }
        st.current = Some(LiveSet {
            at: Instant::now(),
            fresh_for,
            nodes,
        });
        gone
    }

    /// What central's recent lists say about the node instance of `loc`.
    pub fn liveness(&self, loc: &Location) -> Liveness {
        let st = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let departed = || {
            st.departed
                .iter()
                .any(|(id, instance)| *id == loc.node_id && *instance == loc.instance)
        };
        match &st.current {
            Some(set) if set.at.elapsed() <= set.fresh_for => match set.nodes.get(&loc.node_id) {
                Some(instance) if *instance == loc.instance => Liveness::Alive,
                Some(instance) if departed() || started_before(&loc.instance, instance) => {
                    Liveness::Gone
                }
                Some(_) => Liveness::Unknown,
                None if departed() => Liveness::Gone,
                None => Liveness::Unknown,
            },
            _ => Liveness::Unknown,
        }
    }

    /// The node ids of the last fresh peer list, if there is one (for `/readyz`).
    pub fn live_nodes(&self) -> Option<Vec<String>> {
        let st = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match &st.current {
            Some(set) if set.at.elapsed() <= set.fresh_for => {
                let mut ids: Vec<String> = set.nodes.keys().cloned().collect();
                ids.sort();
                Some(ids)
            }
            _ => None,
        }
    }

    /// Asks the node at `loc` to deliver one frame, waiting at most `timeout`. Frames to one
    /// node go out in the order of the calls, on that node's delivery stream.
    pub async fn deliver(
        &self,
        loc: &Location,
        req: DeliverRequest,
        timeout: Duration,
    ) -> Result<DeliverStatus, ForwardError> {
        let link = self.link(&loc.grpc_url)?;
        answered(link.deliver(req), timeout).await
    }

    /// Queues one frame for the node at `loc` now, behind every frame queued for that node
    /// before it, when its delivery stream has room: the returned future is the node's
    /// answer, waited for at most `timeout`. What lets a connection relay its next frame
    /// before this one is answered.
    pub fn start_deliver(
        &self,
        loc: &Location,
        req: DeliverRequest,
        timeout: Duration,
    ) -> Option<impl std::future::Future<Output = Result<DeliverStatus, ForwardError>>> {
        let answer = self.link(&loc.grpc_url).ok()?.try_deliver(req)?;
        Some(answered(answer, timeout))
    }

    /// Asks the node at `loc` to close the user's connection `loc.conn` (4409).
    pub async fn kick(&self, user: &str, loc: &Location) -> Result<bool, ForwardError> {
        let mut client = self.client(&loc.grpc_url)?;
        let req = KickRequest {
            user: user.to_owned(),
            location: Some(loc.clone()),
        };
        let res = tokio::time::timeout(REQUEST_TIMEOUT, client.kick(req)).await;
        Ok(classify(res, REQUEST_TIMEOUT)?.closed)
    }

    /// Asks the node at `loc` to hand over the user's session (a resume on this node).
    /// Answers can be up to a resume buffer large: the caller's channel accepts them.
    pub async fn take_session(
        &self,
        loc: &Location,
        req: TakeSessionRequest,
    ) -> Result<TakeSessionResponse, ForwardError> {
        let client = self.client(&loc.grpc_url)?;
        let mut client = client.max_decoding_message_size(MAX_TAKE_BYTES);
        let res = tokio::time::timeout(TAKE_TIMEOUT, client.take_session(req)).await;
        classify(res, TAKE_TIMEOUT)
    }

    /// Central's server API: runs the chat Message path on the node at `grpc_url`.
    pub async fn submit(
        &self,
        grpc_url: &str,
        req: SubmitRequest,
    ) -> Result<SubmitResponse, ForwardError> {
        let mut client = self.client(grpc_url)?;
        let res = tokio::time::timeout(REQUEST_TIMEOUT, client.submit(req)).await;
        classify(res, REQUEST_TIMEOUT)
    }

    /// Central's server API: ends the user's session at `loc` (close 4403). `false`: no such
    /// session there.
    pub async fn disconnect(&self, user: &str, loc: &Location) -> Result<bool, ForwardError> {
        let mut client = self.client(&loc.grpc_url)?;
        let req = DisconnectRequest {
            user: user.to_owned(),
            location: Some(loc.clone()),
        };
        let res = tokio::time::timeout(REQUEST_TIMEOUT, client.disconnect(req)).await;
        Ok(classify(res, REQUEST_TIMEOUT)?.ended)
    }

    /// Sends presence changes to the node at `grpc_url` (one call per node and tick).
    pub async fn notify(
        &self,
        grpc_url: &str,
        req: NotifyRequest,
    ) -> Result<NotifyResponse, ForwardError> {
        let mut client = self.client(grpc_url)?;
        let res = tokio::time::timeout(REQUEST_TIMEOUT, client.notify(req)).await;
        classify(res, REQUEST_TIMEOUT)
    }

    /// Hands one room message to the node at `grpc_url` (rooms: once per node).
    pub async fn room_message(
        &self,
        grpc_url: &str,
        req: RoomMessageRequest,
        timeout: Duration,
    ) -> Result<RoomMessageResponse, ForwardError> {
        let mut client = self.client(grpc_url)?;
        let start = Instant::now();
        let res = tokio::time::timeout(timeout, client.room_message(req)).await;
        metrics::histogram!("signal_grpc_forward_seconds").record(start.elapsed().as_secs_f64());
        classify(res, timeout)
    }

    /// Hands one room membership event to the node at `grpc_url`.
    pub async fn room_event(
        &self,
        grpc_url: &str,
        req: RoomEventRequest,
        timeout: Duration,
    ) -> Result<RoomEventResponse, ForwardError> {
        let mut client = self.client(grpc_url)?;
        let res = tokio::time::timeout(timeout, client.room_event(req)).await;
        classify(res, timeout)
    }

    /// Probes the node at `grpc_url`.
    pub async fn probe(&self, grpc_url: &str) -> Result<ProbeResponse, ForwardError> {
        let mut client = self.client(grpc_url)?;
        let res = tokio::time::timeout(REQUEST_TIMEOUT, client.probe(ProbeRequest {})).await;
        classify(res, REQUEST_TIMEOUT)
    }
}

fn classify<T>(
    res: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<T, ForwardError> {
    match res {
        Err(_) => Err(ForwardError::Timeout(timeout)),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            Err(ForwardError::Timeout(timeout))
        }
        Ok(Err(status)) => Err(classify_status(&status)),
    }
}

/// What a failed call's status means (a deadline is reported with [`REQUEST_TIMEOUT`]).
fn classify_status(status: &tonic::Status) -> ForwardError {
    match status.code() {
        tonic::Code::DeadlineExceeded => ForwardError::Timeout(REQUEST_TIMEOUT),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            if is_connection_refused(status) {
                ForwardError::Unreachable(status.message().to_owned())
            } else {
                ForwardError::Transient(status.message().to_owned())
            }
        }
        _ => ForwardError::Refused(status.message().to_owned()),
    }
}

/// Whether the call failed because nothing accepted the TCP connection.
fn is_connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    // Some transport errors carry the cause only in their text.
    status
        .message()
        .to_ascii_lowercase()
        .contains("connection refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_transient() {
        // A port that nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let peers = Peers::default();
        let loc = Location {
            node_id: "gone".into(),
            instance: "i".into(),
            conn: 1,
            grpc_url: format!("http://127.0.0.1:{port}"),
        };
        let err = peers
            .deliver(&loc, DeliverRequest::default(), REQUEST_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Unreachable(_)), "{err:?}");
    }

    fn info(id: &str, instance: &str) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            instance: instance.into(),
            ..NodeInfo::default()
        }
    }

    fn at(id: &str, instance: &str) -> Location {
        Location {
            node_id: id.into(),
            instance: instance.into(),
            conn: 1,
            grpc_url: "http://x:1".into(),
        }
    }

    #[test]
    fn only_a_node_seen_leaving_is_gone() {
        let peers = Peers::default();
        let fresh = Duration::from_secs(60);
        assert_eq!(peers.liveness(&at("a", "1")), Liveness::Unknown);
        // b registered after our last list: unknown, not gone.
        peers.set_live(&[info("a", "1")], fresh);
        assert_eq!(peers.liveness(&at("a", "1")), Liveness::Alive);
        assert_eq!(peers.liveness(&at("b", "1")), Liveness::Unknown);
        peers.set_live(&[info("a", "1"), info("b", "1")], fresh);
        assert_eq!(peers.liveness(&at("b", "1")), Liveness::Alive);
        // b evicted: gone. a restarted with a new instance: the old one is gone.
        peers.set_live(&[info("a", "2")], fresh);
        assert_eq!(peers.liveness(&at("b", "1")), Liveness::Gone);
        assert_eq!(peers.liveness(&at("a", "1")), Liveness::Gone);
        assert_eq!(peers.liveness(&at("a", "2")), Liveness::Alive);
        // b re-registered with the same instance (central had forgotten it): alive again.
        peers.set_live(&[info("a", "2"), info("b", "1")], fresh);
        assert_eq!(peers.liveness(&at("b", "1")), Liveness::Alive);
        // a restarted again, and our list still names the previous instance: the newer one
        // is not gone (it registered after our last heartbeat), the older ones are.
        assert_eq!(peers.liveness(&at("a", "3")), Liveness::Unknown);
        assert_eq!(peers.liveness(&at("a", "1")), Liveness::Gone);
        let (older, newer) = (new_instance(), {
            std::thread::sleep(Duration::from_millis(2));
            new_instance()
        });
        assert!(started_before(&older, &newer), "{older} {newer}");
        assert_eq!(older.len(), 16);
        peers.set_live(&[info("a", &older)], fresh);
        assert_eq!(peers.liveness(&at("a", &newer)), Liveness::Unknown);
        peers.set_live(&[info("a", &newer)], fresh);
        assert_eq!(peers.liveness(&at("a", &older)), Liveness::Gone);
        peers.set_live(&[info("a", "2"), info("b", "1")], fresh);
        // A stale list says nothing.
        peers.set_live(&[info("a", "2")], Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(peers.liveness(&at("b", "1")), Liveness::Unknown);
    }

    #[test]
    fn other_transport_errors_are_transient() {
        let status = tonic::Status::unavailable("connection closed before message completed");
        assert!(!is_connection_refused(&status));
        let status =
            tonic::Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert!(is_connection_refused(&status));
    }
}
