//! The `idle` scenario: many open, quiet WebSocket connections. It reports the server
//! process's resident memory per connection and its CPU while they idle, then sends one
//! message to a group holding every connected user and times how long it takes to reach
//! every connection.
//!
//! Connections are spread over several 127.0.0.x source addresses: one address has only
//! about 28,000 ephemeral ports. This machine allows 20,000 open files per process, so one
//! loadgen process holds at most about 19,000 connections; run several for more.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::setup::{self, Api};

#[derive(clap::Args, Debug, Clone)]
pub struct Idle {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Users the connections belong to (all in one group; at most 1,000).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Source addresses to spread the connections over (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub source_addresses: Vec<IpAddr>,
    /// The server process to measure (its /proc entry), e.g. `$(pgrep -f 'chatd serve')`.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds to stay idle before measuring CPU and memory.
    #[arg(long, default_value_t = 10.0)]
    pub hold_seconds: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Accounts registered at once during setup.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
}

#[derive(Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub connections: usize,
    pub users: usize,
    pub source_addresses: usize,
    pub connect_seconds: f64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_idle_kib: Option<u64>,
    pub rss_per_connection_kib: Option<f64>,
    /// Share of one core the server used while the connections idled.
    pub server_idle_cpu_percent: Option<f64>,
    pub broadcast_reached: usize,
    pub broadcast_max_ms: f64,
}

impl IdleReport {
    pub fn table(&self) -> String {
        let kib = |value: Option<u64>| value.map_or("n/a".to_owned(), |value| value.to_string());
        format!(
            "scenario idle: {} connections of {} users from {} source addresses, opened in {:.1} s\n\
             | server RSS before KiB | server RSS idle KiB | RSS per connection KiB | idle CPU % of a core | broadcast reached | broadcast max ms |\n\
             |---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {} | {:.1} |",
            self.connections,
            self.users,
            self.source_addresses,
            self.connect_seconds,
            kib(self.server_rss_before_kib),
            kib(self.server_rss_idle_kib),
            self.rss_per_connection_kib
                .map_or("n/a".to_owned(), |value| format!("{value:.1}")),
            self.server_idle_cpu_percent
                .map_or("n/a".to_owned(), |value| format!("{value:.1}")),
            self.broadcast_reached,
            self.broadcast_max_ms,
        )
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU time of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces; the fields after its closing parenthesis are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

async fn connect_from(api: &Api, source: IpAddr, token: &str) -> anyhow::Result<setup::Socket> {
    let url = format!("{}/api/v1/ws", api.base.replacen("http://", "ws://", 1));
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .context("the URL has no host")?;
    let target: SocketAddr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .context("the host does not resolve")?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    let (mut socket, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .context("no ready frame within 20 s")?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["type"] == "ready" {
                    return Ok(socket);
                }
            }
            Some(Ok(_)) => {}
            _ => bail!("the socket closed before ready"),
        }
    }
}

pub async fn run(api: &Api, idle: &Idle) -> anyhow::Result<IdleReport> {
    if idle.source_addresses.is_empty() {
        bail!("at least one source address is needed");
    }
    let world = setup::groups(api, 1, idle.users.clamp(2, 1000), idle.setup_concurrency).await?;
    // The setup's own sockets (one per user) take part too: they count as connections.
    let extra = idle.connections.saturating_sub(world.users.len());
    let rss_before = idle.server_pid.and_then(rss_kib);
    let started = Instant::now();
    let sources = &idle.source_addresses;
    let mut sockets: Vec<setup::Socket> = futures::stream::iter(0..extra)
        .map(|index| {
            let token = world.users[index % world.users.len()].token.clone();
            let source = sources[index % sources.len()];
            async move { connect_from(api, source, &token).await }
        })
        .buffer_unordered(idle.connect_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    sockets.extend(
        world
            .sockets
            .lock()
            .map_err(|_| anyhow::anyhow!("socket list poisoned"))?
            .drain(..)
            .flatten(),
    );
    let connect_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: {} connections open after {connect_seconds:.1} s; idling {} s",
        sockets.len(),
        idle.hold_seconds
    );

    // Idle: keep reading (heartbeats) so the server sees live clients.
    let ticks_before = idle.server_pid.and_then(cpu_ticks);
    let idle_started = Instant::now();
    let (readers, mut arrivals) = {
        let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut readers = Vec::with_capacity(sockets.len());
        for mut socket in sockets {
            let arrived = arrived.clone();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(frame)) = socket.next().await {
                    if let Message::Text(text) = frame
                        && text.contains("\"message.created\"")
                        && text.contains("idle-broadcast")
                    {
                        let _ = arrived.send(Instant::now());
                    }
                }
            }));
        }
        (readers, arrivals)
    };
    tokio::time::sleep(Duration::from_secs_f64(
        idle.hold_seconds.clamp(0.0, 3600.0),
    ))
    .await;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let ticks_after = idle.server_pid.and_then(cpu_ticks);
    let rss_idle = idle.server_pid.and_then(rss_kib);

    // One message to the group: every connection gets it.
    let connections = readers.len();
    let group = world
        .conversations
        .first()
        .context("the group is missing")?;
    let sent = Instant::now();
    api.post(
        &format!("/api/v1/conversations/{}/messages", group.id),
        Some(&world.users[0].token),
        &json!({"body": "idle-broadcast"}),
    )
    .await?;
    let mut reached = 0;
    let mut slowest = Duration::ZERO;
    let deadline = sent + Duration::from_secs(30);
    while reached < connections {
        match tokio::time::timeout_at(deadline.into(), arrivals.recv()).await {
            Ok(Some(at)) => {
                reached += 1;
                slowest = slowest.max(at.duration_since(sent));
            }
            _ => break,
        }
    }
    for reader in readers {
        reader.abort();
    }
    // The baseline was taken with the setup's sockets already open: only the connections
    // opened after it are in the difference.
    let per_connection = match (rss_before, rss_idle) {
        (Some(before), Some(after)) if extra > 0 => {
            Some(after.saturating_sub(before) as f64 / extra as f64)
        }
        _ => None,
    };
    let cpu = match (ticks_before, ticks_after) {
        (Some(before), Some(after)) => {
            Some((after.saturating_sub(before)) as f64 / 100.0 / idle_seconds * 100.0)
        }
        _ => None,
    };
    Ok(IdleReport {
        scenario: "idle",
        connections,
        users: world.users.len(),
        source_addresses: sources.len(),
        connect_seconds,
        server_rss_before_kib: rss_before,
        server_rss_idle_kib: rss_idle,
        rss_per_connection_kib: per_connection,
        server_idle_cpu_percent: cpu,
        broadcast_reached: reached,
        broadcast_max_ms: slowest.as_secs_f64() * 1000.0,
    })
}
