//! The HTTP listener's sockets, read ahead: one `recv` of up to [`READ_AHEAD`] bytes per
//! wake-up, the bytes beyond what the caller asked for kept until it asks again, and no memory
//! kept once they are read.
//!
//! tungstenite reads at most its read buffer per call (1 KiB here, `http::WS_BUFFER_BYTES`,
//! because every idle connection keeps it): a 2.5 KB Offer and its Candidates took four
//! `recv`s, and a same-node call setup ten where a relay with a 4 KiB buffer needs three
//! (docs/benchmarks.md, "Read ahead"). Reading ahead gives the syscalls of a large buffer at
//! the idle memory of a small one: the read goes into a per-thread scratch buffer, and only
//! bytes not yet asked for are copied to the connection (an allocation that lives until the
//! next reads take them).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Most bytes one read takes from a socket.
pub const READ_AHEAD: usize = 8 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_AHEAD].into_boxed_slice());
}

/// A stream whose small reads are served from one larger read.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read from the socket, not yet by the caller (empty, with no allocation, when idle).
    pending: BytesMut,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: BytesMut::new(),
        }
    }

    /// Bytes read from the socket and not yet taken.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.pending.is_empty() {
            let n = this.pending.len().min(out.remaining());
            out.put_slice(&this.pending[..n]);
            this.pending.advance(n);
            if this.pending.is_empty() {
                // Give the memory back: an idle connection keeps none.
                this.pending = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                // Not reentered in practice; read unbuffered rather than fail.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            };
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let got = buf.filled();
            let n = got.len().min(out.remaining());
            out.put_slice(&got[..n]);
            if got.len() > n {
                this.pending = BytesMut::from(&got[n..]);
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The node's HTTP listener: accepted sockets get `TCP_NODELAY` and are read ahead.
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = ReadAhead<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop: retries, and backs off on errors such as EMFILE.
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (ReadAhead::new(tcp), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ReadAhead<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (ReadAhead::new(server), client)
    }

    /// Small reads get every byte in order, one socket read serves several of them, and
    /// nothing stays allocated once they are taken.
    #[tokio::test]
    async fn small_reads_are_served_from_one_read_in_order() {
        let (mut r, mut w) = pair().await;
        let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&sent).await.unwrap();
        let mut chunk = [0u8; 1024];
        // On loopback the bytes are in the socket once write_all returns: the first read
        // takes all of them and keeps what was not asked for.
        let n = r.read(&mut chunk).await.unwrap();
        assert_eq!((n, r.pending()), (1024, sent.len() - 1024));
        let mut got = chunk[..n].to_vec();
        while got.len() < sent.len() {
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.pending.capacity(), 0, "no memory kept once read");
    }

    /// Larger reads go straight to the caller's buffer; the end of the stream and writes pass
    /// through.
    #[tokio::test]
    async fn large_reads_writes_and_the_end_pass_through() {
        let (mut r, mut w) = pair().await;
        w.write_all(b"hello").await.unwrap();
        let mut big = vec![0u8; READ_AHEAD * 2];
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        r.write_all(b"back").await.unwrap();
        let mut four = [0u8; 4];
        w.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"back");
        drop(w);
        assert_eq!(r.read(&mut big).await.unwrap(), 0);
        let mut small = [0u8; 8];
        assert_eq!(r.read(&mut small).await.unwrap(), 0);
    }
}
