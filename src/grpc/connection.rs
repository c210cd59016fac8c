//! Limits on the client-facing connections that tonic's `Server` builder does not have: a connection must send
//! the HTTP/2 preface and the header of its first frame within `server.handshake_timeout_ms`, or it is closed.
//!
//! hyper's HTTP/2 server waits for the preface without a deadline, and its keepalive PINGs only start once the
//! handshake is done, so without this a TCP connection that sends nothing (or half a preface) would hold its socket
//! and its task forever. Everything after the handshake is bounded by tonic's own settings (see
//! [`crate::node`]): `max_concurrent_streams`, HTTP/2 keepalive, the request timeout and the message size limit.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// The HTTP/2 client connection preface (RFC 9113 §3.4) is 24 bytes, and it must be followed by a SETTINGS frame,
/// whose 9-byte header is the least a live client sends next.
pub const HANDSHAKE_BYTES: usize = 24 + 9;

/// A stream that fails its reads once `deadline` passes before [`HANDSHAKE_BYTES`] bytes have been read.
pub struct HandshakeDeadline<T> {
    inner: T,
    /// `None` once the handshake bytes have arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<T> HandshakeDeadline<T> {
    /// Wraps `inner`, which must deliver its first [`HANDSHAKE_BYTES`] bytes within `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        // `sleep`, not `sleep_until(now + timeout)`: it saturates instead of panicking on overflow.
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep(timeout))), received: 0 }
    }

    /// Whether the handshake bytes arrived in time.
    pub fn handshake_done(&self) -> bool {
        self.deadline.is_none()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HandshakeDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            if let Poll::Ready(Ok(())) = &result {
                this.received += buf.filled().len() - before;
                if this.received >= HANDSHAKE_BYTES {
                    this.deadline = None;
                    return result;
                }
            }
            // Polling the timer registers the waker, so a peer that sends nothing is woken up and closed too.
            if deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    received = this.received,
                    "closing a connection that did not finish the HTTP/2 handshake"
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the HTTP/2 handshake did not complete in time (server.handshake_timeout_ms)",
                )));
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HandshakeDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for HandshakeDeadline<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// The accepted connections of `incoming`, each with a handshake deadline of `timeout`.
pub fn with_handshake_deadline(
    incoming: TcpIncoming,
    timeout: Duration,
) -> impl Stream<Item = io::Result<HandshakeDeadline<TcpStream>>> {
    incoming.map(move |accepted| accepted.map(|stream| HandshakeDeadline::new(stream, timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_is_cut_off_at_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = HandshakeDeadline::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.expect_err("the deadline fails the read");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn half_a_preface_is_cut_off_too() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = HandshakeDeadline::new(server, Duration::from_millis(100));
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 16);
        let err = server.read(&mut buf).await.expect_err("the deadline fails the read");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_finished_handshake_lifts_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = HandshakeDeadline::new(server, Duration::from_millis(100));
        client.write_all(&[0u8; HANDSHAKE_BYTES]).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < HANDSHAKE_BYTES {
            got += server.read(&mut buf).await.unwrap();
        }
        assert!(server.handshake_done());
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5, "no deadline after the handshake");
    }
}
