//! One ordered stream of deliveries to one peer node (`Relay.DeliverStream`): the frames every
//! connection of this node relays to that peer are queued here, go out in batches on one
//! HTTP/2 stream, and come back answered one status per frame, in order. Owns the queue (its
//! bound: `--forward-queue`), the frames in flight and the stream's reconnects; falls back to
//! one unary `Deliver` per frame for a peer that does not know the stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use signal_proto::relay::{DeliverBatch, DeliverRequest, DeliverStatus, ProbeRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{classify, classify_status, ForwardError, PeerClient, REQUEST_TIMEOUT};

/// Frames sent in one batch at most.
const BATCH: usize = 64;
/// Batches handed to the transport and not yet written.
const OUT_BATCHES: usize = 8;
/// How long a link stays on unary calls before it tries the stream again (the peer may have
/// been upgraded meanwhile).
const UNARY_RETRY: Duration = Duration::from_secs(30);
/// How long a broken stream's link asks whether its peer still accepts connections.
const GONE_PROBE: Duration = Duration::from_millis(300);
/// Between two probes of [`GONE_PROBE`].
const PROBE_PAUSE: Duration = Duration::from_millis(20);

type Reply = oneshot::Sender<Result<DeliverStatus, ForwardError>>;

struct Item {
    req: DeliverRequest,
    reply: Reply,
}

/// The sending side of a link; the link's task ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Link {
    tx: mpsc::Sender<Item>,
}

impl Link {
    /// Starts the link's task. `queue`: frames waiting to be sent at most, and frames sent
    /// and not yet answered at most (each).
    pub fn spawn(client: PeerClient, url: String, queue: usize) -> Link {
        let queue = queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(run(client, url, rx, queue));
        Link { tx }
    }

    /// Queues one frame and waits for the peer's answer (the caller bounds the wait). Frames
    /// are sent in the order queued.
    pub async fn deliver(&self, req: DeliverRequest) -> Result<DeliverStatus, ForwardError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Item { req, reply }).await.is_err() {
            return Err(stopped());
        }
        Answer(answer).await
    }

    /// Queues one frame now, behind every frame queued before it, if the queue has room;
    /// the answer comes later, from the returned future.
    pub fn try_deliver(&self, req: DeliverRequest) -> Option<Answer> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(Item { req, reply }).ok()?;
        Some(Answer(answer))
    }
}

fn stopped() -> ForwardError {
    ForwardError::Transient("the link to the peer stopped".into())
}

/// The peer's answer to one queued frame.
#[derive(Debug)]
pub struct Answer(oneshot::Receiver<Result<DeliverStatus, ForwardError>>);

impl std::future::Future for Answer {
    type Output = Result<DeliverStatus, ForwardError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(stopped())))
    }
}

fn status_of(code: i32) -> Result<DeliverStatus, ForwardError> {
    match DeliverStatus::try_from(code) {
        Ok(DeliverStatus::Invalid) => Err(ForwardError::Refused("invalid delivery request".into())),
        Ok(s) => Ok(s),
        Err(_) => Ok(DeliverStatus::Unspecified),
    }
}

fn fail_all(replies: impl Iterator<Item = Reply>, e: &ForwardError) {
    for r in replies {
        let _ = r.send(Err(e.clone()));
    }
}

/// Moves `items` into one batch, their replies to the back of `pending`.
fn batch(items: &mut Vec<Item>, pending: &mut VecDeque<Reply>) -> DeliverBatch {
    let mut frames = Vec::with_capacity(items.len());
    for it in items.drain(..) {
        frames.push(it.req);
        pending.push_back(it.reply);
    }
    DeliverBatch { frames }
}

async fn run(mut client: PeerClient, url: String, mut rx: mpsc::Receiver<Item>, queue: usize) {
    // Frames taken from the queue and not sent yet: they survive a reconnect (never sent, so
    // never a duplicate).
    let mut items: Vec<Item> = Vec::with_capacity(BATCH);
    let mut open = true;
    loop {
        if items.is_empty() && (!open || rx.recv_many(&mut items, BATCH).await == 0) {
            return;
        }
        let mut pending: VecDeque<Reply> = VecDeque::new();
        let (out_tx, out_rx) = mpsc::channel::<DeliverBatch>(OUT_BATCHES);
        // The first batch leaves with the stream's headers.
        let first = batch(&mut items, &mut pending);
        // Kept until the stream is open: a peer without it never saw these frames.
        let resend = first.frames.clone();
        if out_tx.try_send(first).is_err() {
            return; // cannot happen: a fresh channel has room
        }
        let opened = client.deliver_stream(ReceiverStream::new(out_rx)).await;
        let mut acks = match opened {
            Ok(resp) => resp.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(peer = %url, "peer has no DeliverStream: one Deliver per frame");
                metrics::counter!("signal_forward_streams_total", "result" => "unary").increment(1);
                // The first batch went nowhere: it goes unary, then the rest for a while.
                items.extend(
                    resend
                        .into_iter()
                        .zip(pending.drain(..))
                        .map(|(req, reply)| Item { req, reply }),
                );
                if !unary(&mut client, &mut rx, &mut items).await {
                    return;
                }
                continue;
            }
            Err(status) => {
                let e = classify_status(&status);
                tracing::debug!(peer = %url, error = %e, "cannot open the delivery stream");
                metrics::counter!("signal_forward_streams_total", "result" => "failed")
                    .increment(1);
                fail_all(pending.drain(..), &e);
                // What queued meanwhile would meet the same peer: answer it now.
                while let Ok(it) = rx.try_recv() {
                    let _ = it.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        drop(resend);
        metrics::counter!("signal_forward_streams_total", "result" => "opened").increment(1);
        let err = loop {
            tokio::select! {
                biased;
                ack = acks.message() => match ack {
                    Ok(Some(a)) => {
                        if a.statuses.len() > pending.len() {
                            break ForwardError::Transient("the peer answered frames it was not sent".into());
                        }
                        for s in a.statuses {
                            if let Some(r) = pending.pop_front() {
                                let _ = r.send(status_of(s));
                            }
                        }
                        if !open && pending.is_empty() && items.is_empty() {
                            return;
                        }
                    }
                    Ok(None) => break ForwardError::Transient("the peer ended the delivery stream".into()),
                    Err(status) => break classify_status(&status),
                },
                permit = out_tx.reserve(), if !items.is_empty() => match permit {
                    Ok(p) => p.send(batch(&mut items, &mut pending)),
                    Err(_) => break ForwardError::Transient("the delivery stream closed".into()),
                },
                n = rx.recv_many(&mut items, BATCH), if open && items.is_empty() && pending.len() < queue => {
                    if n == 0 {
                        open = false;
                        if pending.is_empty() {
                            return;
                        }
                    }
                }
            }
        };
        // Sent and unanswered: maybe delivered, maybe not; the senders are told (UNAVAILABLE).
        // A refused connection cannot have delivered anything it was sent on an open stream.
        let e = match err {
            ForwardError::Unreachable(m) => ForwardError::Transient(m),
            e => e,
        };
        // Unless nothing listens at the peer's address any more: a killed node took what it
        // was sent with it, and its users are offline (the router answers OFFLINE, at once
        // rather than after central's node timeout).
        let e = if pending.is_empty() || !matches!(e, ForwardError::Transient(_)) {
            e
        } else if let Some(refused) = refused_now(&mut client).await {
            ForwardError::Unreachable(format!("{e} ({refused})"))
        } else {
            e
        };
        tracing::debug!(peer = %url, error = %e, unanswered = pending.len(), "delivery stream ended");
        fail_all(pending.drain(..), &e);
    }
}

/// Whether the peer now refuses connections (a process killed, not a dropped connection):
/// `Probe` until it answers (alive), is refused (gone) or [`GONE_PROBE`] has passed. A probe
/// that only meets the old connection's end, or a listener the dying process has not closed
/// yet, is tried again after [`PROBE_PAUSE`].
async fn refused_now(client: &mut PeerClient) -> Option<String> {
    let until = tokio::time::Instant::now() + GONE_PROBE;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let res = tokio::time::timeout(left, client.probe(ProbeRequest {})).await;
        match classify(res, left) {
            Err(ForwardError::Unreachable(m)) => return Some(m),
            Err(ForwardError::Transient(_)) => tokio::time::sleep(PROBE_PAUSE).await,
            _ => return None,
        }
    }
}

/// The fallback for a peer without `DeliverStream`: one `Deliver` per frame, each on its own
/// task (a sender waits for each answer before its next frame, so its order holds). Returns
/// after [`UNARY_RETRY`] (`true`: try the stream again) or when the link is dropped (`false`).
async fn unary(
    client: &mut PeerClient,
    rx: &mut mpsc::Receiver<Item>,
    items: &mut Vec<Item>,
) -> bool {
    let since = Instant::now();
    loop {
        for it in items.drain(..) {
            let mut c = client.clone();
            tokio::spawn(async move {
                let res = tokio::time::timeout(REQUEST_TIMEOUT, c.deliver(it.req)).await;
                let out = classify(res, REQUEST_TIMEOUT).and_then(|r| status_of(r.status));
                let _ = it.reply.send(out);
            });
        }
        if since.elapsed() >= UNARY_RETRY {
            return true;
        }
        if rx.recv_many(items, BATCH).await == 0 {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use signal_proto::relay::relay_server::{Relay, RelayServer};
    use signal_proto::relay::*;
    use tonic::{Request, Response, Status};

    use super::*;

    /// A peer of an older version: it answers `Deliver` and knows no `DeliverStream`. With
    /// `stream`, it opens the stream, says when the first batch came, and never answers it
    /// (`end`: it ends the stream with an error right after, and stays up).
    #[derive(Clone, Default)]
    struct OlderPeer {
        got: Arc<Mutex<Vec<(String, String)>>>,
        stream: Option<(mpsc::UnboundedSender<()>, bool)>,
    }

    fn no<T>() -> Result<T, Status> {
        Err(Status::unimplemented("not in this version"))
    }

    #[tonic::async_trait]
    impl Relay for OlderPeer {
        async fn deliver(
            &self,
            req: Request<DeliverRequest>,
        ) -> Result<Response<DeliverResponse>, Status> {
            let req = req.into_inner();
            self.got.lock().unwrap().push((req.from, req.frame));
            Ok(Response::new(DeliverResponse {
                status: DeliverStatus::Delivered as i32,
            }))
        }
        type DeliverStreamStream = ReceiverStream<Result<DeliverAcks, Status>>;
        async fn deliver_stream(
            &self,
            req: Request<tonic::Streaming<DeliverBatch>>,
        ) -> Result<Response<Self::DeliverStreamStream>, Status> {
            let Some((got, end)) = self.stream.clone() else {
                return no();
            };
            let mut inbound = req.into_inner();
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                if let Ok(Some(_)) = inbound.message().await {
                    let _ = got.send(());
                }
                if end {
                    let _ = tx.send(Err(Status::unavailable("stream ended"))).await;
                } else {
                    std::future::pending::<()>().await;
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
        async fn kick(&self, _: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
            no()
        }
        async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
            no()
        }
        async fn take_session(
            &self,
            _: Request<TakeSessionRequest>,
        ) -> Result<Response<TakeSessionResponse>, Status> {
            no()
        }
        async fn submit(
            &self,
            _: Request<SubmitRequest>,
        ) -> Result<Response<SubmitResponse>, Status> {
            no()
        }
        async fn disconnect(
            &self,
            _: Request<DisconnectRequest>,
        ) -> Result<Response<DisconnectResponse>, Status> {
            no()
        }
        async fn notify(
            &self,
            _: Request<NotifyRequest>,
        ) -> Result<Response<NotifyResponse>, Status> {
            no()
        }
        async fn room_message(
            &self,
            _: Request<RoomMessageRequest>,
        ) -> Result<Response<RoomMessageResponse>, Status> {
            no()
        }
        async fn room_event(
            &self,
            _: Request<RoomEventRequest>,
        ) -> Result<Response<RoomEventResponse>, Status> {
            no()
        }
    }

    /// Against a peer without the stream (real gRPC on loopback), a link falls back to one
    /// unary `Deliver` per frame: the first batch, refused with the stream, is not lost; every
    /// frame is answered; each sender's frames arrive in its order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_without_the_stream_gets_one_deliver_per_frame_in_order() {
        const SENDERS: usize = 8;
        const FRAMES: usize = 25;
        let peer = OlderPeer::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RelayServer::new(peer.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = crate::peers::Peers::default().client(&url).unwrap();
        let link = Link::spawn(client, url, 16);
        let senders = (0..SENDERS).map(|s| {
            let link = link.clone();
            tokio::spawn(async move {
                for i in 0..FRAMES {
                    let req = DeliverRequest {
                        to: "bob".into(),
                        from: format!("s{s}"),
                        frame: format!("{i}"),
                        ..DeliverRequest::default()
                    };
                    let status = tokio::time::timeout(Duration::from_secs(5), link.deliver(req))
                        .await
                        .expect("answered in time");
                    assert!(matches!(status, Ok(DeliverStatus::Delivered)), "{status:?}");
                }
            })
        });
        for s in futures::future::join_all(senders).await {
            s.unwrap();
        }
        let got = peer.got.lock().unwrap().clone();
        assert_eq!(got.len(), SENDERS * FRAMES);
        for s in 0..SENDERS {
            let frames: Vec<usize> = got
                .iter()
                .filter(|(from, _)| *from == format!("s{s}"))
                .map(|(_, f)| f.parse().unwrap())
                .collect();
            assert_eq!(frames, (0..FRAMES).collect::<Vec<_>>(), "sender s{s}");
        }
        server.abort();
    }

    fn frame() -> DeliverRequest {
        DeliverRequest {
            to: "bob".into(),
            from: "alice".into(),
            frame: "{}".into(),
            ..DeliverRequest::default()
        }
    }

    /// Serves `peer` on its own runtime (dropping it closes every socket, as a SIGKILL does).
    fn serve_apart(peer: OlderPeer) -> (String, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(RelayServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        (url, rt)
    }

    /// A link to a peer that opens the stream and never answers (`end`: ends it at once),
    /// served apart; and the peer's word when the first batch came.
    fn link_to_stream_peer(
        end: bool,
    ) -> (Link, mpsc::UnboundedReceiver<()>, tokio::runtime::Runtime) {
        let (got_tx, got) = mpsc::unbounded_channel();
        let peer = OlderPeer {
            stream: Some((got_tx, end)),
            ..OlderPeer::default()
        };
        let (url, rt) = serve_apart(peer);
        let client = crate::peers::Peers::default().client(&url).unwrap();
        (Link::spawn(client, url, 16), got, rt)
    }

    /// A frame sent on the stream when the peer is killed: nothing listens there any more,
    /// so it is `Unreachable` (its sender is told OFFLINE), not "maybe delivered".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_in_flight_to_a_killed_peer_is_unreachable() {
        let (link, mut got, rt) = link_to_stream_peer(false);
        let answer = link.try_deliver(frame()).unwrap();
        got.recv().await.expect("the peer got the frame");
        // Every socket of the peer closed, listener included, as at a process exit.
        tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("answered in time");
        assert!(matches!(out, Err(ForwardError::Unreachable(_))), "{out:?}");
    }

    /// The stream ends but the peer is still there: the frame may have been delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_on_a_broken_stream_to_a_live_peer_stays_transient() {
        let (link, _got, rt) = link_to_stream_peer(true);
        let out = tokio::time::timeout(Duration::from_secs(5), link.deliver(frame()))
            .await
            .expect("answered in time");
        assert!(matches!(out, Err(ForwardError::Transient(_))), "{out:?}");
        rt.shutdown_background();
    }
}
