//! The server's TCP connections. Each is read by its HTTP connection alone, and written
//! through a [`Writer`] that others may share: socket-push's fan-out writes a frame for an
//! idle WebSocket straight into its socket, without waking the connection's task (ADR 0022).
//!
//! The writer keeps frames whole on the wire. Bytes reach the socket from two sides:
//! - the connection's own writes (hyper, then tungstenite after an upgrade), through
//!   [`Connection`]'s `AsyncWrite`;
//! - [`Writer::try_write_whole`], which writes only while the connection's own writes are
//!   not part way through a buffer (the last one was taken whole), and keeps whatever the
//!   socket would not take, to be written before anything else.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use nix::sys::socket::MsgFlags;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Accepts TCP connections for `axum::serve`, each split into its read half and a shared
/// [`Writer`].
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, address)) => {
                    // Nagle's algorithm stays on, as with axum's own listener: under load it
                    // joins small writes that would each be a segment (measured: group fan-out
                    // lost 5–7 % of its frames per second with `TCP_NODELAY`, ADR 0022).
                    let (read, write) = stream.into_split();
                    let writer = Arc::new(Writer {
                        state: Mutex::new(WriterState {
                            half: write,
                            pending: Vec::new(),
                            part_way: false,
                        }),
                    });
                    return (Connection { read, writer }, address);
                }
                // The peer gave up before we took it: nothing to do.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of files, most likely: wait for some to close instead of spinning.
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// What a handler knows of its TCP connection: `ConnectInfo<Peer>` in every request's
/// extensions, when served through [`Listener`].
#[derive(Clone)]
pub struct Peer {
    pub address: SocketAddr,
    pub writer: Arc<Writer>,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Self {
            address: *stream.remote_addr(),
            writer: stream.io().writer.clone(),
        }
    }
}

/// One accepted connection, as hyper reads and writes it.
pub struct Connection {
    read: OwnedReadHalf,
    writer: Arc<Writer>,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(context, buffer)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.writer.lock()?;
        ready!(state.poll_pending(context))?;
        let written = ready!(Pin::new(&mut state.half).poll_write(context, buffer))?;
        // Taken in part: the caller's next write continues this one, and nothing else may
        // come between.
        state.part_way = written < buffer.len();
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.writer.lock()?;
        ready!(state.poll_pending(context))?;
        Pin::new(&mut state.half).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.writer.lock()?;
        ready!(state.poll_pending(context))?;
        Pin::new(&mut state.half).poll_shutdown(context)
    }
}

/// The write side of one connection, shared by the connection and whoever writes into it
/// from outside.
pub struct Writer {
    state: Mutex<WriterState>,
}

struct WriterState {
    half: OwnedWriteHalf,
    /// What a write from outside left unwritten: it goes out before anything else.
    pending: Vec<u8>,
    /// The connection's last write took only part of its buffer.
    part_way: bool,
}

/// Frames up to this size are written from one buffer, larger ones from their parts.
const JOINED_UP_TO: usize = 2048;

/// What [`Writer::try_write_whole`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// All of it is in the socket.
    Written,
    /// The socket took part of it; the rest waits in the writer until the connection's next
    /// write or flush, which its owner must now make.
    Pending,
    /// Nothing written: the connection is part way through a write of its own, something is
    /// still pending, or the socket is full or failed.
    NotWritten,
}

impl Writer {
    fn lock(&self) -> io::Result<MutexGuard<'_, WriterState>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("a socket writer's lock is poisoned"))
    }

    /// Writes `parts` (one whole frame) now, without waiting, if it may go out whole after
    /// everything written before it.
    pub fn try_write_whole(&self, parts: &[&[u8]]) -> WriteOutcome {
        let Ok(mut state) = self.lock() else {
            return WriteOutcome::NotWritten;
        };
        if state.part_way || !state.pending.is_empty() {
            return WriteOutcome::NotWritten;
        }
        let total: usize = parts.iter().map(|part| part.len()).sum();
        // A small frame is copied into one buffer: one `send`, which costs less in the kernel
        // than `writev` (measured, ADR 0022). It goes straight to the socket, past tokio's
        // readiness record (one more cold cache line per frame in a broadcast): a socket that
        // turns out full only makes tokio's next write try once more before it waits.
        let mut joined = [0u8; JOINED_UP_TO];
        let outcome = if total <= JOINED_UP_TO {
            let mut at = 0;
            for part in parts {
                joined[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            let socket: &tokio::net::TcpStream = state.half.as_ref();
            nix::sys::socket::send(
                socket.as_raw_fd(),
                &joined[..total],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
            .map_err(io::Error::from)
        } else {
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part)).collect();
            state.half.try_write_vectored(&slices)
        };
        match outcome {
            Ok(written) if written == total => WriteOutcome::Written,
            Ok(0) | Err(_) => WriteOutcome::NotWritten,
            Ok(mut written) => {
                for part in parts {
                    let skip = written.min(part.len());
                    written -= skip;
                    state.pending.extend_from_slice(&part[skip..]);
                }
                WriteOutcome::Pending
            }
        }
    }
}

impl WriterState {
    /// Writes what is pending; ready once nothing is.
    fn poll_pending(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.half).poll_write(context, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Connection, Arc<Writer>, tokio::net::TcpStream) {
        let mut listener = Listener::new(
            TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let address =
            axum::serve::Listener::local_addr(&listener).unwrap_or_else(|e| panic!("{e}"));
        let client = tokio::net::TcpStream::connect(address);
        let ((connection, _), client) =
            tokio::join!(axum::serve::Listener::accept(&mut listener), client);
        let writer = connection.writer.clone();
        (connection, writer, client.unwrap_or_else(|e| panic!("{e}")))
    }

    #[tokio::test]
    async fn frames_from_outside_and_from_the_connection_arrive_whole_and_in_order() {
        let (mut connection, writer, mut client) = pair().await;
        connection
            .write_all(b"own-1;")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            writer.try_write_whole(&[b"out", b"side;"]),
            WriteOutcome::Written
        );
        connection
            .write_all(b"own-2;")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut received = vec![0; 20];
        client
            .read_exact(&mut received)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&received, b"own-1;outside;own-2;");
    }

    #[tokio::test]
    async fn what_a_full_socket_leaves_goes_out_first_and_nothing_comes_between() {
        // Small frames go out from one joined buffer, large ones from their parts.
        for size in [1_500, 64 * 1024] {
            a_full_socket_with_frames_of(size).await;
        }
    }

    async fn a_full_socket_with_frames_of(size: usize) {
        let (mut connection, writer, mut client) = pair().await;
        // Fill the socket until it takes a write from outside only in part.
        let frame = vec![b'x'; size];
        let mut outside = 0;
        let outcome = loop {
            match writer.try_write_whole(&[b"[", &frame, b"]"]) {
                WriteOutcome::Written => outside += 1,
                outcome => break outcome,
            }
            assert!(outside < 1_000_000, "the socket never filled");
        };
        let expected_frames = outside + usize::from(outcome == WriteOutcome::Pending);
        // Nothing more from outside while anything is pending.
        if outcome == WriteOutcome::Pending {
            assert_eq!(writer.try_write_whole(&[b"late"]), WriteOutcome::NotWritten);
        }
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            client
                .read_to_end(&mut received)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            received
        });
        // The connection's own write waits for the rest, then goes after it.
        connection
            .write_all(b"own")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        connection
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(connection);
        drop(writer);
        let received = reader.await.unwrap_or_else(|e| panic!("{e}"));
        let mut expected = Vec::new();
        for _ in 0..expected_frames {
            expected.push(b'[');
            expected.extend_from_slice(&frame);
            expected.push(b']');
        }
        expected.extend_from_slice(b"own");
        assert_eq!(received.len(), expected.len());
        assert!(received == expected);
    }
}
