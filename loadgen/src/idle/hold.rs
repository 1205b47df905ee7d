//! The sockets one loadgen process holds: opened from their source addresses to their
//! socket-push nodes, then read until the process ends, noting when the broadcast arrives on
//! each. The parent and every worker process run this same code on their share.

use anyhow::{Context, bail};
use futures::StreamExt;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::wire;

/// One connection's plan: indexes into the share's nodes, source addresses and tokens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Planned {
    pub node: usize,
    pub source: usize,
    pub user: usize,
}

/// What one process opens and holds: the parent hands each worker its share on stdin.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Share {
    /// The WebSocket endpoints of the socket-push nodes (`ws://host:port/api/v1/ws`).
    pub ws_urls: Vec<String>,
    /// Access tokens, one per user.
    pub tokens: Vec<String>,
    pub source_addresses: Vec<IpAddr>,
    pub connections: Vec<Planned>,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// Connections not open this long after the start of the share count as failed.
    pub connect_seconds: f64,
    /// The text of the broadcast message: a frame holding it is the broadcast.
    pub broadcast_text: String,
}

/// How opening a share went.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Connected {
    /// Connections open to each node (indexes as in `Share::ws_urls`).
    pub opened_per_node: Vec<usize>,
    pub failed: usize,
    /// A few of the errors, each with how often it happened.
    pub error_samples: Vec<String>,
    pub seconds: f64,
}

impl Connected {
    pub fn opened(&self) -> usize {
        self.opened_per_node.iter().sum()
    }
}

/// When the broadcast reached this process's sockets.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Arrivals {
    /// Wall-clock arrival of the broadcast on each socket it reached (Unix ns).
    pub arrivals_unix_ns: Vec<u64>,
    /// The node (index into `Share::ws_urls`) of each arrival's socket, in the same order.
    pub arrival_nodes: Vec<usize>,
    /// Sockets that closed without receiving it.
    pub closed: usize,
    /// Sockets still open that had not received it when the wait ended.
    pub missing: usize,
}

enum SocketEvent {
    Arrived(u64, usize),
    Closed,
}

/// One connection's handshake and `ready`, together, must take no longer than this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Error messages kept per share.
const ERROR_SAMPLES: usize = 5;
/// How long the reader thread waits for readable sockets before it looks for new ones.
const READER_TICK_MS: u8 = 50;
/// Readable sockets taken per `epoll_wait`.
const READER_EVENTS: usize = 1024;
/// The reader thread's one read buffer: every frame an idle connection gets fits in it.
const READ_BUFFER: usize = 64 * 1024;

/// An open connection, once its `ready` arrived: the socket in non-blocking mode and the bytes
/// that came after `ready` in the same read.
pub struct Opened {
    stream: std::net::TcpStream,
    leftover: Vec<u8>,
}

/// The sockets of this process and what their reader saw. One thread reads them all (see
/// [`wire`]); it stops, closing every socket, when this is dropped.
pub struct Holding {
    events: mpsc::UnboundedReceiver<SocketEvent>,
    poller: Arc<Epoll>,
    handed: std::sync::mpsc::Sender<(u64, Watched)>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Sockets handed to the reader.
    watched: usize,
    arrivals: Vec<u64>,
    arrival_nodes: Vec<usize>,
    closed: usize,
}

impl Holding {
    pub fn new(broadcast_text: &str) -> anyhow::Result<Self> {
        let (sender, events) = mpsc::unbounded_channel();
        let poller = Arc::new(
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("creating the reader's epoll")?,
        );
        let (handed, taken) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            poller: poller.clone(),
            taken,
            stop: stop.clone(),
            events: sender,
            broadcast_text: broadcast_text.to_owned(),
            sockets: Vec::new(),
        };
        let reader = std::thread::Builder::new()
            .name("idle-reader".to_owned())
            .spawn(move || reader.run())
            .context("starting the reader thread")?;
        Ok(Self {
            events,
            poller,
            handed,
            stop,
            reader: Some(reader),
            watched: 0,
            arrivals: Vec::new(),
            arrival_nodes: Vec::new(),
            closed: 0,
        })
    }

    /// Opens the share's connections, `connect_concurrency` at a time, and starts reading each
    /// as soon as it is open (so nothing piles up in the server while the others connect).
    /// Failures are counted, not fatal; whatever is not open by `deadline` counts as failed.
    pub async fn open(&mut self, share: &Share, deadline: Instant) -> Connected {
        let started = Instant::now();
        let mut connected = Connected {
            opened_per_node: vec![0; share.ws_urls.len()],
            ..Connected::default()
        };
        let mut errors = ErrorSamples::default();
        let mut targets = Vec::with_capacity(share.ws_urls.len());
        for url in &share.ws_urls {
            targets.push(resolve(url).await.map_err(|error| format!("{error:#}")));
        }
        let targets = &targets;
        let attempts = futures::stream::iter(share.connections.iter().copied())
            .map(|planned| async move {
                let outcome = match (
                    targets.get(planned.node),
                    share.source_addresses.get(planned.source),
                    share.tokens.get(planned.user),
                ) {
                    (Some(Ok(target)), Some(source), Some(token)) => tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        connect(&share.ws_urls[planned.node], target, *source, token),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "not open with ready within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        ))
                    }),
                    (Some(Err(error)), _, _) => Err(anyhow::anyhow!("{error}")),
                    _ => Err(anyhow::anyhow!(
                        "the plan names a missing node, address or user"
                    )),
                };
                (planned.node, outcome)
            })
            .buffer_unordered(share.connect_concurrency.max(1));
        tokio::pin!(attempts);
        let mut done = 0;
        loop {
            match tokio::time::timeout_at(deadline.into(), attempts.next()).await {
                Ok(Some((node, Ok(opened)))) => match self.watch(opened, node) {
                    Ok(()) => connected.opened_per_node[node] += 1,
                    Err(error) => {
                        connected.failed += 1;
                        errors.add(format!("{error:#}"));
                    }
                },
                Ok(Some((_, Err(error)))) => {
                    connected.failed += 1;
                    errors.add(format!("{error:#}"));
                }
                Ok(None) => break,
                Err(_) => {
                    let left = share.connections.len() - done;
                    connected.failed += left;
                    errors.add(format!(
                        "the connect deadline passed with {left} connections not open"
                    ));
                    break;
                }
            }
            done += 1;
        }
        connected.error_samples = errors.into_lines();
        connected.seconds = started.elapsed().as_secs_f64();
        connected
    }

    /// Waits until every socket has received the broadcast or closed, or until `deadline`.
    pub async fn collect(&mut self, deadline: Instant) -> Arrivals {
        while self.arrivals.len() + self.closed < self.watched {
            match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                Ok(Some(SocketEvent::Arrived(at, node))) => {
                    self.arrivals.push(at);
                    self.arrival_nodes.push(node);
                }
                Ok(Some(SocketEvent::Closed)) => self.closed += 1,
                // The sender half lives in `self`: the channel cannot close.
                Ok(None) | Err(_) => break,
            }
        }
        Arrivals {
            arrivals_unix_ns: self.arrivals.clone(),
            arrival_nodes: self.arrival_nodes.clone(),
            closed: self.closed,
            missing: self.watched - self.arrivals.len() - self.closed,
        }
    }

    /// Hands the socket to the reader thread: it reads it until it closes, answering pings
    /// and timing the broadcast.
    fn watch(&mut self, opened: Opened, node: usize) -> anyhow::Result<()> {
        let token = self.watched as u64;
        // Registered first, handed over second: the reader looks for a socket it has not been
        // handed yet when one turns readable.
        self.poller
            .add(
                &opened.stream,
                EpollEvent::new(
                    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET,
                    token,
                ),
            )
            .context("adding the socket to the reader's epoll")?;
        let watched = Watched {
            stream: opened.stream,
            node,
            incoming: wire::Incoming::default(),
            pending: opened.leftover,
            arrived: false,
        };
        if self.handed.send((token, watched)).is_err() {
            bail!("the reader thread has ended");
        }
        self.watched += 1;
        Ok(())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A socket the reader thread reads.
struct Watched {
    stream: std::net::TcpStream,
    node: usize,
    incoming: wire::Incoming,
    /// Bytes of a frame not complete yet.
    pending: Vec<u8>,
    arrived: bool,
}

/// The reader thread: one `epoll` over every socket of the process, edge-triggered (a socket
/// read is not polled again by the next wait), each readable socket read until a read comes
/// back short: usually one read per frame.
struct Reader {
    poller: Arc<Epoll>,
    taken: std::sync::mpsc::Receiver<(u64, Watched)>,
    stop: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<SocketEvent>,
    broadcast_text: String,
    /// Indexed by token; `None` once closed.
    sockets: Vec<Option<Watched>>,
}

impl Reader {
    fn run(mut self) {
        let mut ready = vec![EpollEvent::empty(); READER_EVENTS];
        let mut buffer = vec![0u8; READ_BUFFER];
        let mut replies = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            self.take_handed(&mut buffer, &mut replies);
            let count = match self.poller.wait(&mut ready, READER_TICK_MS) {
                Ok(count) => count,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    eprintln!("loadgen: the reader's epoll failed: {error}");
                    return;
                }
            };
            for event in &ready[..count] {
                let token = event.data() as usize;
                if self.sockets.get(token).is_none() {
                    self.take_handed(&mut buffer, &mut replies);
                }
                let open = match self.sockets.get_mut(token) {
                    Some(Some(socket)) => socket.read(
                        &mut buffer,
                        &mut replies,
                        &self.events,
                        &self.broadcast_text,
                    ),
                    // Closed already, or not handed over yet: its first read comes then.
                    _ => continue,
                };
                if !open {
                    self.close(token);
                }
            }
        }
    }

    /// Takes the sockets handed over since the last look, the frames that came with them and
    /// whatever they have received since: an edge before the handover found no socket.
    fn take_handed(&mut self, buffer: &mut [u8], replies: &mut Vec<u8>) {
        while let Ok((token, mut socket)) = self.taken.try_recv() {
            let token = token as usize;
            if self.sockets.len() <= token {
                self.sockets.resize_with(token + 1, || None);
            }
            let open = socket.consume(replies, &self.events, &self.broadcast_text)
                && socket.read(buffer, replies, &self.events, &self.broadcast_text);
            self.sockets[token] = Some(socket);
            if !open {
                self.close(token);
            }
        }
    }

    fn close(&mut self, token: usize) {
        if let Some(socket) = self.sockets.get_mut(token).and_then(Option::take) {
            let _ = self.poller.delete(&socket.stream);
            if !socket.arrived {
                let _ = self.events.send(SocketEvent::Closed);
            }
        }
    }
}

impl Watched {
    /// Reads the socket until it has nothing more (a read short of the buffer), and takes the
    /// frames it completes. False once the socket is done.
    fn read(
        &mut self,
        buffer: &mut [u8],
        replies: &mut Vec<u8>,
        events: &mpsc::UnboundedSender<SocketEvent>,
        broadcast_text: &str,
    ) -> bool {
        loop {
            let read = match (&self.stream).read(buffer) {
                Ok(0) => return false,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            // Frames are taken from the read buffer itself; only an incomplete one is kept.
            if self.pending.is_empty() {
                let Some(used) = self.frames(&buffer[..read], replies, events, broadcast_text)
                else {
                    return false;
                };
                self.pending.extend_from_slice(&buffer[used..read]);
            } else {
                self.pending.extend_from_slice(&buffer[..read]);
                if !self.consume(replies, events, broadcast_text) {
                    return false;
                }
            }
            if read < buffer.len() {
                return true;
            }
        }
    }

    /// Takes the complete frames in `pending`. False once the socket is done.
    fn consume(
        &mut self,
        replies: &mut Vec<u8>,
        events: &mpsc::UnboundedSender<SocketEvent>,
        broadcast_text: &str,
    ) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let pending = std::mem::take(&mut self.pending);
        let Some(used) = self.frames(&pending, replies, events, broadcast_text) else {
            return false;
        };
        self.pending = pending;
        self.pending.drain(..used);
        true
    }

    /// Takes the complete frames at the start of `bytes`: notes the broadcast, answers pings
    /// and a close. The bytes used, or `None` once the socket is done (closed, or a protocol
    /// error).
    fn frames(
        &mut self,
        bytes: &[u8],
        replies: &mut Vec<u8>,
        events: &mpsc::UnboundedSender<SocketEvent>,
        broadcast_text: &str,
    ) -> Option<usize> {
        replies.clear();
        let arrived = &mut self.arrived;
        let node = self.node;
        let used = self.incoming.take(bytes, replies, |text| {
            if !*arrived && text.contains("\"message.created\"") && text.contains(broadcast_text) {
                *arrived = true;
                let _ = events.send(SocketEvent::Arrived(unix_ns(), node));
            }
            ControlFlow::Continue(())
        });
        let used = used.ok()?;
        // A pong or a close answer is a few bytes on a socket with nothing else to send: it
        // goes out whole or the socket is broken.
        if !replies.is_empty() && (&self.stream).write_all(replies).is_err() {
            return None;
        }
        (!self.incoming.closed).then_some(used)
    }
}

/// Wall-clock time in ns since the Unix epoch: every process on the box shares this clock.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// The URL's host (with its port) and path.
fn host_and_path(url: &str) -> anyhow::Result<(String, String)> {
    let request = url.into_client_request()?;
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .with_context(|| format!("{url} has no host"))?;
    Ok((host, request.uri().path().to_owned()))
}

/// The address of the URL's host (an IP literal resolves without DNS).
async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let (host, _) = host_and_path(url)?;
    tokio::net::lookup_host(&host)
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))
}

/// Opens one connection from `source`, makes the WebSocket handshake and waits for `ready`.
async fn connect(
    url: &str,
    target: &SocketAddr,
    source: IpAddr,
    token: &str,
) -> anyhow::Result<Opened> {
    let (host, path) = host_and_path(url)?;
    let handshake = wire::Handshake::new(&host, &path, token);
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Without this, binding to (address, 0) takes a port of its own for every connection
    // from that address, whatever the destination: about 28,000 per address. With it, the
    // port is picked at connect time and only the whole 4-tuple must be unique, so one
    // address serves many server ports.
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .context("setting IP_BIND_ADDRESS_NO_PORT")?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding to {source}"))?;
    let mut stream = socket
        .connect(*target)
        .await
        .with_context(|| format!("connecting from {source} to {target}"))?;
    stream.set_nodelay(true)?;
    stream
        .write_all(handshake.request.as_bytes())
        .await
        .with_context(|| format!("WebSocket handshake with {target}"))?;
    let mut received = Vec::with_capacity(1024);
    let head = loop {
        if stream.read_buf(&mut received).await? == 0 {
            bail!("{target} closed the socket during the handshake");
        }
        if let Some(head) = handshake
            .response(&received)
            .with_context(|| format!("WebSocket handshake with {target}"))?
        {
            break head;
        }
    };
    received.drain(..head);
    let mut incoming = wire::Incoming::default();
    let mut replies = Vec::new();
    loop {
        let mut ready = false;
        let used = incoming.take(&received, &mut replies, |text| {
            ready = serde_json::from_str::<Value>(text).is_ok_and(|frame| frame["type"] == "ready");
            if ready {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if !replies.is_empty() {
            stream.write_all(&replies).await?;
            replies.clear();
        }
        if incoming.closed {
            bail!("the socket closed before ready");
        }
        if ready {
            // Whatever came after `ready` goes to the reader with the socket.
            received.drain(..used);
            return Ok(Opened {
                stream: stream.into_std()?,
                leftover: received,
            });
        }
        received.drain(..used);
        if stream.read_buf(&mut received).await? == 0 {
            bail!("the socket closed before ready");
        }
    }
}

/// The first few distinct errors, with how often each happened.
#[derive(Default)]
struct ErrorSamples {
    samples: Vec<(String, usize)>,
}

impl ErrorSamples {
    fn add(&mut self, error: String) {
        if let Some((_, count)) = self.samples.iter_mut().find(|(sample, _)| *sample == error) {
            *count += 1;
        } else if self.samples.len() < ERROR_SAMPLES {
            self.samples.push((error, 1));
        }
    }

    fn into_lines(self) -> Vec<String> {
        self.samples
            .into_iter()
            .map(|(error, count)| format!("{count} × {error}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// What the test server saw on one connection.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Bearer(String),
        Pong(usize),
        CloseAnswered(usize, u16),
    }

    /// A real WebSocket server (tungstenite, as in axum): each connection gets `ready`, then at
    /// once a presence frame and a ping (so they may come in the handshake's own read), then,
    /// once the pong is back, the broadcast, except the last one, which is closed with 4008.
    async fn serve(
        listener: tokio::net::TcpListener,
        count: usize,
        seen: mpsc::UnboundedSender<Seen>,
    ) {
        for index in 0..count {
            let (stream, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut bearer = String::new();
                // tungstenite's callback signature, whose error is an HTTP response.
                #[allow(clippy::result_large_err)]
                let check = |request: &Request, response: Response| {
                    bearer = request
                        .headers()
                        .get("authorization")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    Ok(response)
                };
                let mut socket = tokio_tungstenite::accept_hdr_async(stream, check)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = seen.send(Seen::Bearer(bearer));
                for frame in [
                    Message::text(r#"{"type":"ready","heartbeat_ms":25000}"#),
                    Message::text(r#"{"type":"presence.changed","user_id":"x"}"#),
                    Message::Ping(format!("ping-{index}").into_bytes().into()),
                ] {
                    socket.feed(frame).await.unwrap_or_else(|e| panic!("{e}"));
                }
                socket.flush().await.unwrap_or_else(|e| panic!("{e}"));
                while let Some(Ok(frame)) = socket.next().await {
                    match frame {
                        Message::Pong(payload) => {
                            assert_eq!(&payload[..], format!("ping-{index}").as_bytes());
                            let _ = seen.send(Seen::Pong(index));
                            let last = Message::Close(Some(CloseFrame {
                                code: CloseCode::Library(4008),
                                reason: "too slow".into(),
                            }));
                            let broadcast = Message::text(
                                r#"{"type":"message.created","message":{"body":"idle-broadcast"}}"#,
                            );
                            let frame = if index + 1 == count { last } else { broadcast };
                            socket.send(frame).await.unwrap_or_else(|e| panic!("{e}"));
                        }
                        Message::Close(Some(close)) => {
                            let _ = seen.send(Seen::CloseAnswered(index, close.code.into()));
                        }
                        other => panic!("the client sent {other:?}"),
                    }
                }
            });
        }
    }

    async fn listen() -> (tokio::net::TcpListener, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        (listener, port)
    }

    /// One connection per token to the server on `port`, from 127.0.0.1.
    fn share(port: u16, tokens: Vec<String>) -> Share {
        Share {
            ws_urls: vec![format!("ws://127.0.0.1:{port}/api/v1/ws")],
            connections: (0..tokens.len())
                .map(|user| Planned {
                    node: 0,
                    source: 0,
                    user,
                })
                .collect(),
            tokens,
            source_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            connect_concurrency: 1,
            connect_seconds: 10.0,
            broadcast_text: "idle-broadcast".to_owned(),
        }
    }

    #[tokio::test]
    async fn the_reader_times_the_broadcast_answers_pings_and_counts_closed_sockets() {
        let (listener, port) = listen().await;
        let (seen_sender, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(serve(listener, 3, seen_sender));
        let share = share(port, (0..3).map(|user| format!("token-{user}")).collect());
        let started = unix_ns();
        let mut holding = Holding::new(&share.broadcast_text).unwrap_or_else(|e| panic!("{e}"));
        let connected = holding
            .open(&share, Instant::now() + Duration::from_secs(10))
            .await;
        assert_eq!(
            connected.opened_per_node,
            [3],
            "{:?}",
            connected.error_samples
        );
        assert_eq!(connected.failed, 0);
        let arrivals = holding
            .collect(Instant::now() + Duration::from_secs(10))
            .await;
        assert_eq!(arrivals.arrivals_unix_ns.len(), 2, "{arrivals:?}");
        assert_eq!(arrivals.arrival_nodes, [0, 0]);
        assert_eq!((arrivals.closed, arrivals.missing), (1, 0));
        let now = unix_ns();
        assert!(
            arrivals
                .arrivals_unix_ns
                .iter()
                .all(|at| (started..=now).contains(at))
        );
        let mut events = Vec::new();
        while events.len() < 7 {
            let event = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .unwrap_or_else(|e| panic!("{e}; saw {events:?}"));
            events.extend(event);
        }
        events.sort_by_key(|event| format!("{event:?}"));
        assert_eq!(
            events,
            [
                Seen::Bearer("Bearer token-0".to_owned()),
                Seen::Bearer("Bearer token-1".to_owned()),
                Seen::Bearer("Bearer token-2".to_owned()),
                Seen::CloseAnswered(2, 4008),
                Seen::Pong(0),
                Seen::Pong(1),
                Seen::Pong(2),
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_handshake_is_a_failed_connection() {
        let (listener, port) = listen().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut request = vec![0; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let share = share(port, vec!["expired".to_owned()]);
        let mut holding = Holding::new(&share.broadcast_text).unwrap_or_else(|e| panic!("{e}"));
        let connected = holding
            .open(&share, Instant::now() + Duration::from_secs(10))
            .await;
        assert_eq!((connected.opened(), connected.failed), (0, 1));
        assert!(
            connected.error_samples[0].contains("401 Unauthorized"),
            "{:?}",
            connected.error_samples
        );
    }
}
