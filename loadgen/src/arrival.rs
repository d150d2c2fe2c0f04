//! When a frame's bytes reached a simulated client's socket (the kernel's receive timestamp,
//! `SO_TIMESTAMPNS`), as opposed to when this process got around to reading them.
//!
//! A thousand members of one room share this process and the machine's two cores with the
//! nodes: the last member's socket is read several milliseconds after its frame arrived, only
//! because the client reads 999 other sockets first. A real member has its own machine, so
//! the server's delivery latency ends at the arrival; both are reported.

use std::io::{self, IoSliceMut, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client's TCP stream, plain or with receive timestamps.
pub enum Stream {
    Plain(TcpStream),
    Stamped(Stamped),
}

/// A TCP stream that reads with `recvmsg` and keeps the kernel's timestamp of the last read.
pub struct Stamped {
    fd: AsyncFd<std::net::TcpStream>,
    cmsg: Vec<u8>,
    last: Option<SystemTime>,
}

impl Stream {
    /// Turns on receive timestamps for `stream`.
    pub fn stamped(stream: TcpStream) -> io::Result<Stream> {
        let std = stream.into_std()?;
        setsockopt(&std, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may hand out an fd it
        // does not own; this one owns its socket for the AsyncFd's whole life (`register`,
        // the replacement, is `unsafe` and the workspace forbids unsafe code).
        #[allow(deprecated)]
        let fd = AsyncFd::new(std)?;
        Ok(Stream::Stamped(Stamped {
            fd,
            cmsg: nix::cmsg_space!(TimeSpec),
            last: None,
        }))
    }

    /// When the bytes of the last read reached the socket (stamped streams only; `None` for
    /// bytes the kernel did not stamp).
    pub fn arrival(&self) -> Option<SystemTime> {
        match self {
            Stream::Plain(_) => None,
            Stream::Stamped(s) => s.last,
        }
    }
}

fn wall(ts: &TimeSpec) -> Option<SystemTime> {
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u32::try_from(ts.tv_nsec()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

impl Stamped {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let want = unfilled.len();
            let cmsg = &mut self.cmsg;
            let read = guard.try_io(|fd| {
                let mut iov = [IoSliceMut::new(unfilled)];
                let msg = recvmsg::<()>(
                    fd.get_ref().as_raw_fd(),
                    &mut iov,
                    Some(cmsg),
                    MsgFlags::empty(),
                )
                .map_err(io::Error::from)?;
                let mut at = None;
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        at = wall(&ts);
                    }
                }
                Ok((msg.bytes, at))
            });
            match read {
                Ok(Ok((n, at))) => {
                    // A short read emptied the socket: wait for the next edge instead of
                    // asking again (as tokio's own TcpStream does).
                    if n < want {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    // `None` when the kernel did not stamp these bytes (it turns stamping on
                    // shortly after the first socket asks), never an older read's stamp.
                    if n > 0 {
                        self.last = at;
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| {
                let mut socket: &std::net::TcpStream = fd.get_ref();
                socket.write(buf)
            }) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Stamped(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Stamped(s) => s.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Stamped(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Stamped(s) => Poll::Ready(s.fd.get_ref().shutdown(std::net::Shutdown::Write)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stamped stream reads what was written, and the stamp lies between the write and the
    /// read.
    #[tokio::test]
    async fn stamps_lie_between_the_write_and_the_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut client = Stream::stamped(client).unwrap();
        assert!(client.arrival().is_none());
        let mut got = [0u8; 16];
        // The kernel turns stamping on (a static key, set from a work queue) a moment after
        // the first socket of the machine asks for it: the first bytes may come unstamped.
        let mut stamped = None;
        for _ in 0..200 {
            let before = SystemTime::now();
            server.write_all(b"hello").await.unwrap();
            let n = client.read(&mut got).await.unwrap();
            let after = SystemTime::now();
            assert_eq!(&got[..n], b"hello");
            if let Some(at) = client.arrival() {
                stamped = Some((before, at, after));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (before, at, after) = stamped.expect("the kernel stamps received bytes");
        assert!(
            before <= at && at <= after,
            "{before:?} <= {at:?} <= {after:?}"
        );
        // Writes go through too, and a closed peer reads as the end.
        client.write_all(b"back").await.unwrap();
        let n = server.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"back");
        drop(server);
        assert_eq!(client.read(&mut got).await.unwrap(), 0);
    }
}
