//! The sockets one loadgen process holds: opened from their source addresses to their
//! socket-push nodes, then read until the process ends, noting when the broadcast arrives on
//! each. The parent and every worker process run this same code on their share.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::setup::Socket;

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

/// The sockets of this process and what their readers saw.
pub struct Holding {
    broadcast_text: Arc<str>,
    sender: mpsc::UnboundedSender<SocketEvent>,
    events: mpsc::UnboundedReceiver<SocketEvent>,
    readers: Vec<JoinHandle<()>>,
    arrivals: Vec<u64>,
    arrival_nodes: Vec<usize>,
    closed: usize,
}

impl Holding {
    pub fn new(broadcast_text: &str) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        Self {
            broadcast_text: Arc::from(broadcast_text),
            sender,
            events,
            readers: Vec::new(),
            arrivals: Vec::new(),
            arrival_nodes: Vec::new(),
            closed: 0,
        }
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
        // tungstenite zeroes the free part of its read buffer (up to this size) at every
        // read: 1 KiB holds the frames an idle connection gets and zeroes a quarter of 4 KiB.
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0);
        let targets = &targets;
        let attempts = futures::stream::iter(share.connections.iter().copied())
            .map(|planned| async move {
                let outcome = match (
                    targets.get(planned.node),
                    share.source_addresses.get(planned.source),
                    share.tokens.get(planned.user),
                ) {
                    (Some(Ok(target)), Some(source), Some(token)) => {
                        let url = &share.ws_urls[planned.node];
                        tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            connect(url, *target, *source, token, config),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!(
                                "not open with ready within {} s",
                                CONNECT_TIMEOUT.as_secs()
                            ))
                        })
                    }
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
                Ok(Some((node, Ok(socket)))) => {
                    connected.opened_per_node[node] += 1;
                    self.watch(socket, node);
                }
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
        while self.arrivals.len() + self.closed < self.readers.len() {
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
            missing: self.readers.len() - self.arrivals.len() - self.closed,
        }
    }

    /// Reads the socket until it closes: pings get their pongs, the broadcast is timed.
    fn watch(&mut self, mut socket: Socket, node: usize) {
        let events = self.sender.clone();
        let broadcast_text = self.broadcast_text.clone();
        self.readers.push(tokio::spawn(async move {
            let mut arrived = false;
            while let Some(Ok(frame)) = socket.next().await {
                if !arrived
                    && let Message::Text(text) = &frame
                    && text.contains("\"message.created\"")
                    && text.contains(&*broadcast_text)
                {
                    arrived = true;
                    let _ = events.send(SocketEvent::Arrived(unix_ns(), node));
                }
            }
            if !arrived {
                let _ = events.send(SocketEvent::Closed);
            }
        }));
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// Wall-clock time in ns since the Unix epoch: every process on the box shares this clock.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// The address of the URL's host (an IP literal resolves without DNS).
async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let request = url.into_client_request()?;
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .with_context(|| format!("{url} has no host"))?;
    tokio::net::lookup_host(&host)
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))
}

/// Opens one connection from `source` and waits for `ready`.
async fn connect(
    url: &str,
    target: SocketAddr,
    source: IpAddr,
    token: &str,
    config: WebSocketConfig,
) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Without this, binding to (address, 0) takes a port of its own for every connection
    // from that address, whatever the destination: about 28,000 per address. With it, the
    // port is picked at connect time and only the whole 4-tuple must be unique, so one
    // address serves many server ports.
    #[cfg(target_os = "linux")]
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .context("setting IP_BIND_ADDRESS_NO_PORT")?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding to {source}"))?;
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("connecting from {source} to {target}"))?;
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        request,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .with_context(|| format!("WebSocket handshake with {target}"))?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["type"] == "ready" {
                    return Ok(socket);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => bail!("the socket failed before ready: {error}"),
            None => bail!("the socket closed before ready"),
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
