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
//!
//! After an upgrade, [`Writer::watch_frames`] has the writer follow the WebSocket frames the
//! connection writes itself: nothing from outside goes in the middle of one, nor after a close
//! frame (RFC 6455 §5.5.1: no data frame after a close). tungstenite answers a client's close
//! while it reads, before the connection's task learns of it; the writer sees that answer.

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
                            frames: None,
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
        if let Some(frames) = &mut state.frames {
            frames.follow(buffer.get(..written).unwrap_or(buffer));
        }
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
    /// The WebSocket frames the connection writes itself, once it has been upgraded.
    frames: Option<Frames>,
}

/// Where the connection's own bytes stand in its WebSocket frames (server frames: unmasked,
/// though a mask would be skipped as well).
#[derive(Debug, Default)]
struct Frames {
    /// The header read so far of the next frame (at most 14 bytes).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// A close frame has been written: nothing may follow it.
    closed: bool,
}

impl Frames {
    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.remaining -= skip as u64;
                bytes = bytes.get(skip..).unwrap_or_default();
                continue;
            }
            let Some((&byte, rest)) = bytes.split_first() else {
                break;
            };
            self.header.push(byte);
            bytes = rest;
            if let Some(payload) = self.header_complete() {
                if self.header.first().is_some_and(|first| first & 0x0f == 0x8) {
                    self.closed = true;
                }
                self.header.clear();
                self.remaining = payload;
            }
        }
    }

    /// The payload length once the header is whole.
    fn header_complete(&self) -> Option<u64> {
        let second = *self.header.get(1)?;
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let (extended, length) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            short => (0, Some(u64::from(short))),
        };
        if self.header.len() < 2 + extended + mask {
            return None;
        }
        let length = length.unwrap_or_else(|| {
            self.header
                .get(2..2 + extended)
                .unwrap_or_default()
                .iter()
                .fold(0u64, |length, byte| (length << 8) | u64::from(*byte))
        });
        Some(length)
    }

    /// Between two frames, and no close sent.
    fn open_between_frames(&self) -> bool {
        !self.closed && self.remaining == 0 && self.header.is_empty()
    }
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

    /// From now on, follows the WebSocket frames the connection writes: called right after
    /// the upgrade, between two frames (before the first).
    pub fn watch_frames(&self) {
        if let Ok(mut state) = self.lock() {
            state.frames = Some(Frames::default());
        }
    }

    /// Writes `parts` (one whole frame) now, without waiting, if it may go out whole after
    /// everything written before it: not while the connection is part way through a write
    /// or a frame of its own, while something is pending, or once it has written a close.
    pub fn try_write_whole(&self, parts: &[&[u8]]) -> WriteOutcome {
        let Ok(mut state) = self.lock() else {
            return WriteOutcome::NotWritten;
        };
        if state.part_way
            || !state.pending.is_empty()
            || state
                .frames
                .as_ref()
                .is_some_and(|frames| !frames.open_between_frames())
        {
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

    /// A server frame: FIN, `opcode`, unmasked, with the length in the form its size needs.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            length @ 0..=125 => frame.push(length as u8),
            length @ 126..=65_535 => {
                frame.push(126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn frames_are_followed_whatever_the_writes_cut_them_into() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (opcode, length) in [(0x1, 5), (0x9, 0), (0x1, 300), (0x2, 70_000), (0x1, 125)] {
            stream.extend(server_frame(opcode, &vec![b'x'; length]));
            ends.push(stream.len());
        }
        for cut in [1, 2, 3, 7, 126, 4096, stream.len()] {
            let mut frames = Frames::default();
            let mut at = 0;
            for chunk in stream.chunks(cut) {
                frames.follow(chunk);
                at += chunk.len();
                assert_eq!(
                    frames.open_between_frames(),
                    ends.contains(&at),
                    "cut {cut}, after byte {at}"
                );
            }
        }
        let mut frames = Frames::default();
        frames.follow(&server_frame(0x8, &1000u16.to_be_bytes()));
        assert!(frames.closed && !frames.open_between_frames());
    }

    #[tokio::test]
    async fn nothing_from_outside_goes_into_a_frame_of_the_connection_or_after_its_close() {
        let (mut connection, writer, mut client) = pair().await;
        writer.watch_frames();
        let own = server_frame(0x1, b"own frame");
        let (head, tail) = own.split_at(4);
        let outside = server_frame(0x1, b"outside");
        // The connection wrote half a frame (each write taken whole): not now.
        connection
            .write_all(head)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            writer.try_write_whole(&[&outside]),
            WriteOutcome::NotWritten
        );
        connection
            .write_all(tail)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(writer.try_write_whole(&[&outside]), WriteOutcome::Written);
        // A close, as tungstenite answers a client's: nothing after it.
        let close = server_frame(0x8, &1000u16.to_be_bytes());
        connection
            .write_all(&close)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            writer.try_write_whole(&[&outside]),
            WriteOutcome::NotWritten
        );
        let expected = [own, outside, close].concat();
        let mut received = vec![0; expected.len()];
        client
            .read_exact(&mut received)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(received, expected);
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
