//! The `idle` scenario: many open, quiet WebSocket connections. It reports each socket-push
//! process's resident memory per connection and its CPU while they idle, then sends one
//! message to a group holding every connected user and times how long it takes to reach
//! every connection.
//!
//! Connections go round robin over the socket-push nodes (`--ws-urls`) and over several
//! 127.0.0.x source addresses. This machine allows 20,000 open files per process, so one
//! loadgen process holds at most about 19,000 connections: `--processes N` spreads them over
//! N processes, this one and N − 1 workers it starts.
//!
//! - [`hold`]: opening and reading one process's share of the sockets.
//! - [`wire`]: the client side of the WebSocket protocol those sockets speak.
//! - [`fleet`]: the worker processes and how they talk with this one.

mod fleet;
mod hold;
mod wire;

pub use fleet::worker;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::setup::{self, Api};
use fleet::{Assignment, Command, Report, Worker};
use hold::{Arrivals, Connected, Holding, Planned, Share, unix_ns};

#[derive(clap::Args, Debug, Clone)]
pub struct Idle {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Users the connections belong to (all in one group; at most 1,000, the server's limit).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Source addresses to spread the connections over (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub source_addresses: Vec<IpAddr>,
    /// Base URLs of the socket-push nodes to spread the connections over, round robin
    /// (comma-separated, like `--url`); `--url` when not given. REST calls go to `--url`.
    #[arg(long, value_delimiter = ',')]
    pub ws_urls: Vec<String>,
    /// The server processes to measure (their /proc entries), comma-separated or repeated: one
    /// per `--ws-urls` entry, in the same order (or one, for `--url`).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Loadgen processes holding the connections: this one and N − 1 workers it starts.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Seconds to stay idle before measuring CPU and memory (at most 3,600).
    #[arg(long, default_value_t = 10.0)]
    pub hold_seconds: f64,
    /// Connections opened at once, per loadgen process.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds all connections may take to open; those not open by then count as failed.
    #[arg(long, default_value_t = 600.0)]
    pub connect_seconds: f64,
    /// Accounts registered at once during setup.
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
    /// Send one message to the group before connecting, so that each user's newest inbox
    /// entry, which every connection reads when it opens, is a short message rather than
    /// the group's creation (which lists every member: about 106 KB for 1,000 members).
    #[arg(long)]
    pub message_before_connect: bool,
}

/// One measured server process.
#[derive(Serialize)]
pub struct ServerFigures {
    pub url: String,
    pub pid: Option<u32>,
    /// Connections open to it.
    pub connections: usize,
    /// Of those, the ones opened after the baseline (the per-connection figure's divisor).
    pub measured_connections: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_per_connection_kib: Option<f64>,
    /// Share of one core it used while the connections idled.
    pub idle_cpu_percent: Option<f64>,
    /// Its connections the broadcast reached, and when (ms after the send): the router's own
    /// node first, the others after the forward through their queues.
    pub broadcast_reached: usize,
    pub broadcast_first_ms: Option<f64>,
    pub broadcast_p50_ms: Option<f64>,
    pub broadcast_max_ms: Option<f64>,
}

/// One loadgen process (0 is the one that was started; it does the setup).
#[derive(Serialize)]
pub struct ProcessFigures {
    pub process: usize,
    pub pid: Option<u32>,
    pub asked: usize,
    pub opened: usize,
    pub failed: usize,
    pub broadcast_reached: usize,
    /// Its sockets the server closed before the broadcast reached them.
    pub closed: usize,
    pub failure: Option<String>,
}

#[derive(Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    /// Connections open once connecting was over, in every process.
    pub connections: usize,
    pub connections_asked: usize,
    pub failed_connections: usize,
    pub users: usize,
    pub source_addresses: usize,
    pub loadgen_processes: usize,
    pub connect_seconds: f64,
    pub idle_seconds: f64,
    /// Whether a message went to the group before the connections opened.
    pub message_before_connect: bool,
    /// Totals over the measured server processes: RSS and CPU summed, per connection the
    /// summed growth over the connections opened after the baseline.
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_idle_kib: Option<u64>,
    pub rss_per_connection_kib: Option<f64>,
    pub server_idle_cpu_percent: Option<f64>,
    pub servers: Vec<ServerFigures>,
    pub processes: Vec<ProcessFigures>,
    /// When the broadcast was sent (wall clock, Unix ns): to cut a profile to its window.
    pub broadcast_sent_unix_ns: u64,
    /// Connections the broadcast reached within 30 s of its send.
    pub broadcast_reached: usize,
    /// The first connection the broadcast reached: the path up to the first socket write.
    pub broadcast_first_ms: Option<f64>,
    pub broadcast_p50_ms: Option<f64>,
    pub broadcast_p90_ms: Option<f64>,
    pub broadcast_p99_ms: Option<f64>,
    /// Send to arrival on the slowest connection reached.
    pub broadcast_max_ms: f64,
    pub error_samples: Vec<String>,
}

/// How long the broadcast may take to reach every connection.
const BROADCAST_WAIT: Duration = Duration::from_secs(30);
/// How late a worker's answers may come after the time they are due.
const WORKER_SLACK: Duration = Duration::from_secs(30);
/// What the first connections' presence announcements need to settle before the baseline.
const SETTLE: Duration = Duration::from_secs(2);
/// Open files a process needs besides its sockets.
const SPARE_FILES: usize = 64;
const BROADCAST_TEXT: &str = "idle-broadcast";
const FIRST_TEXT: &str = "idle-before-connect";

struct Node {
    url: String,
    pid: Option<u32>,
}

pub async fn run(api: &Api, idle: &Idle) -> anyhow::Result<IdleReport> {
    if idle.source_addresses.is_empty() {
        bail!("at least one source address is needed");
    }
    let nodes = nodes(api, idle)?;
    let processes = idle.processes.max(1);
    let users_wanted = idle.users.clamp(2, 1000);
    // One connection per user first (held here), the baseline, then the rest over every
    // process: the first connection of a user announces them to every other member's sockets,
    // which must not fall in the measured growth.
    let first_count = users_wanted.min(idle.connections);
    let rest = split(idle.connections - first_count, processes);
    let largest = rest
        .iter()
        .enumerate()
        .map(|(process, count)| count + if process == 0 { first_count } else { 0 })
        .max()
        .unwrap_or(0);
    if let Some(limit) = open_files_limit()
        && largest + SPARE_FILES > limit
    {
        bail!(
            "one process would hold {largest} sockets, over this machine's {limit} open files \
             per process: raise --processes"
        );
    }

    let (users, groups) =
        setup::offline_groups(api, 1, users_wanted, idle.setup_concurrency).await?;
    let group = groups.first().context("the group is missing")?;
    if idle.message_before_connect {
        message_before_connect(api, &nodes[0].url, &users, group.id).await?;
    }
    let plan: Vec<Planned> = (0..idle.connections)
        .map(|index| Planned {
            node: index % nodes.len(),
            // Every node sees every source address, whatever the two counts have in common.
            source: (index / nodes.len()) % idle.source_addresses.len(),
            user: index % users.len(),
        })
        .collect();
    let base_share = Share {
        ws_urls: nodes.iter().map(|node| setup::ws_url(&node.url)).collect(),
        tokens: users.iter().map(|user| user.token.clone()).collect(),
        source_addresses: idle.source_addresses.clone(),
        connections: Vec::new(),
        connect_concurrency: idle.connect_concurrency,
        connect_seconds: idle.connect_seconds.clamp(1.0, 3600.0),
        broadcast_text: BROADCAST_TEXT.to_owned(),
    };
    let share_of = |connections: &[Planned]| Share {
        connections: connections.to_vec(),
        ..base_share.clone()
    };
    let hold_for = Duration::from_secs_f64(idle.hold_seconds.clamp(0.0, 3600.0));

    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs_f64(base_share.connect_seconds);
    let mut holding = Holding::new(BROADCAST_TEXT)?;
    let first = holding
        .open(&share_of(&plan[..first_count]), connect_deadline)
        .await;
    eprintln!(
        "loadgen: {} first connections (one per user) open after {:.1} s",
        first.opened(),
        first.seconds
    );
    tokio::time::sleep(SETTLE).await;
    let rss_before: Vec<Option<u64>> = nodes
        .iter()
        .map(|node| node.pid.and_then(rss_kib))
        .collect();

    // The rest: workers start first, then this process opens its own part meanwhile.
    let mut offsets = Vec::with_capacity(processes);
    let mut offset = first_count;
    for count in &rest {
        offsets.push(offset..offset + count);
        offset += count;
    }
    let mut figures: Vec<ProcessFigures> = (0..processes)
        .map(|process| ProcessFigures {
            process,
            pid: (process == 0).then(std::process::id),
            asked: rest[process] + if process == 0 { first_count } else { 0 },
            opened: 0,
            failed: 0,
            broadcast_reached: 0,
            closed: 0,
            failure: None,
        })
        .collect();
    let lifetime = base_share.connect_seconds
        + hold_for.as_secs_f64()
        + (BROADCAST_WAIT + 4 * WORKER_SLACK).as_secs_f64();
    let mut workers = Vec::new();
    for process in 1..processes {
        if rest[process] == 0 {
            continue;
        }
        let assignment = Assignment {
            share: share_of(&plan[offsets[process].clone()]),
            lifetime_seconds: lifetime,
        };
        match Worker::spawn(process, &assignment).await {
            Ok(worker) => {
                figures[process].pid = worker.pid();
                workers.push(worker);
            }
            Err(error) => figures[process].failure = Some(format!("{error:#}")),
        }
    }
    let own_share = share_of(&plan[offsets[0].clone()]);
    let (own, reports) = tokio::join!(
        holding.open(&own_share, connect_deadline),
        gather(&mut workers, connect_deadline + WORKER_SLACK, |report| {
            match report {
                Report::Connected(connected) => Some(connected),
                Report::Arrivals(_) => None,
            }
        }),
    );
    let connect_seconds = started.elapsed().as_secs_f64();
    let mut connected: Vec<(usize, Connected)> = vec![(0, merge(&first, &own))];
    let mut failed_workers = Vec::new();
    for (worker, report) in workers.iter().zip(reports) {
        match report {
            Ok(report) => connected.push((worker.number, report)),
            Err(error) => {
                figures[worker.number].failure = Some(format!("before connecting: {error:#}"));
                failed_workers.push(worker.number);
            }
        }
    }
    workers.retain(|worker| !failed_workers.contains(&worker.number));
    let mut opened_per_node = vec![0; nodes.len()];
    let mut error_samples = Vec::new();
    for (process, report) in &connected {
        let figure = &mut figures[*process];
        figure.opened = report.opened();
        figure.failed = report.failed;
        for (node, count) in report.opened_per_node.iter().enumerate() {
            opened_per_node[node] += count;
        }
        error_samples.extend(
            report
                .error_samples
                .iter()
                .map(|sample| format!("process {process}: {sample}")),
        );
    }
    let opened: usize = opened_per_node.iter().sum();
    eprintln!(
        "loadgen: {opened} of {} connections open after {connect_seconds:.1} s; idling {} s",
        idle.connections,
        hold_for.as_secs_f64()
    );

    // Idle: every process keeps reading (heartbeats) so the server sees live clients.
    let ticks_before: Vec<Option<u64>> = nodes
        .iter()
        .map(|node| node.pid.and_then(cpu_ticks))
        .collect();
    let idle_started = Instant::now();
    tokio::time::sleep(hold_for).await;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let ticks_after: Vec<Option<u64>> = nodes
        .iter()
        .map(|node| node.pid.and_then(cpu_ticks))
        .collect();
    let rss_idle: Vec<Option<u64>> = nodes
        .iter()
        .map(|node| node.pid.and_then(rss_kib))
        .collect();

    // One message to the group: every connection gets it.
    let sent_unix_ns = unix_ns();
    let sent = Instant::now();
    api.post(
        &format!("/api/v1/conversations/{}/messages", group.id),
        Some(&users[0].token),
        &json!({"body": BROADCAST_TEXT}),
    )
    .await?;
    let until_unix_ns = sent_unix_ns + BROADCAST_WAIT.as_nanos() as u64;
    let mut commanded = Vec::with_capacity(workers.len());
    for worker in &mut workers {
        commanded.push(worker.send(&Command::Collect { until_unix_ns }).await);
    }
    let (own_arrivals, reports) = tokio::join!(
        holding.collect(sent + BROADCAST_WAIT),
        gather(
            &mut workers,
            sent + BROADCAST_WAIT + WORKER_SLACK,
            |report| match report {
                Report::Arrivals(arrivals) => Some(arrivals),
                Report::Connected(_) => None,
            }
        ),
    );
    let mut arrivals: Vec<(usize, Arrivals)> = vec![(0, own_arrivals)];
    for ((worker, report), command) in workers.iter().zip(reports).zip(commanded) {
        // The report's error says more (how the worker ended) than a broken pipe does.
        match report.and_then(|report| command.map(|()| report)) {
            Ok(report) => arrivals.push((worker.number, report)),
            Err(error) => {
                figures[worker.number].failure = Some(format!("after connecting: {error:#}"))
            }
        }
    }
    for worker in workers {
        worker.finish().await;
    }
    drop(holding);

    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut node_latencies_ms: Vec<Vec<f64>> = vec![Vec::new(); nodes.len()];
    for (process, report) in &arrivals {
        figures[*process].broadcast_reached = report.arrivals_unix_ns.len();
        figures[*process].closed = report.closed;
        for (index, at) in report.arrivals_unix_ns.iter().enumerate() {
            let latency_ms = at.saturating_sub(sent_unix_ns) as f64 / 1e6;
            latencies_ms.push(latency_ms);
            if let Some(node) = report
                .arrival_nodes
                .get(index)
                .and_then(|node| node_latencies_ms.get_mut(*node))
            {
                node.push(latency_ms);
            }
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    for node in &mut node_latencies_ms {
        node.sort_by(f64::total_cmp);
    }
    let percentile = |quantile: f64| -> Option<f64> { percentile_of(&latencies_ms, quantile) };

    let first_per_node = &first.opened_per_node;
    let servers: Vec<ServerFigures> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let measured = opened_per_node[index] - first_per_node[index];
            ServerFigures {
                url: node.url.clone(),
                pid: node.pid,
                connections: opened_per_node[index],
                measured_connections: measured,
                rss_before_kib: rss_before[index],
                rss_idle_kib: rss_idle[index],
                rss_per_connection_kib: per_connection(
                    rss_before[index],
                    rss_idle[index],
                    measured,
                ),
                idle_cpu_percent: cpu_percent(
                    ticks_before[index],
                    ticks_after[index],
                    idle_seconds,
                ),
                broadcast_reached: node_latencies_ms[index].len(),
                broadcast_first_ms: node_latencies_ms[index].first().copied(),
                broadcast_p50_ms: percentile_of(&node_latencies_ms[index], 0.5),
                broadcast_max_ms: node_latencies_ms[index].last().copied(),
            }
        })
        .collect();
    let sum = |values: Vec<Option<u64>>| -> Option<u64> { values.into_iter().sum() };
    let total_before = sum(rss_before.clone());
    let total_idle = sum(rss_idle.clone());
    let measured_total: usize = servers
        .iter()
        .map(|server| server.measured_connections)
        .sum();
    let total_cpu: Option<f64> = servers.iter().map(|server| server.idle_cpu_percent).sum();
    Ok(IdleReport {
        scenario: "idle",
        connections: opened,
        connections_asked: idle.connections,
        failed_connections: figures.iter().map(|figure| figure.asked).sum::<usize>() - opened,
        users: users.len(),
        source_addresses: idle.source_addresses.len(),
        loadgen_processes: processes,
        connect_seconds,
        idle_seconds,
        message_before_connect: idle.message_before_connect,
        server_rss_before_kib: total_before,
        server_rss_idle_kib: total_idle,
        rss_per_connection_kib: per_connection(total_before, total_idle, measured_total),
        server_idle_cpu_percent: total_cpu,
        servers,
        processes: figures,
        broadcast_sent_unix_ns: sent_unix_ns,
        broadcast_reached: latencies_ms.len(),
        broadcast_first_ms: latencies_ms.first().copied(),
        broadcast_p50_ms: percentile(0.5),
        broadcast_p90_ms: percentile(0.9),
        broadcast_p99_ms: percentile(0.99),
        broadcast_max_ms: latencies_ms.last().copied().unwrap_or(0.0),
        error_samples,
    })
}

impl IdleReport {
    pub fn table(&self) -> String {
        let kib = |value: Option<u64>| value.map_or("n/a".to_owned(), |value| value.to_string());
        let decimal =
            |value: Option<f64>| value.map_or("n/a".to_owned(), |value| format!("{value:.1}"));
        let mut lines = vec![
            format!(
                "scenario idle: {} connections ({} asked) of {} users from {} source addresses \
                 and {} loadgen processes, opened in {:.1} s, idle for {:.1} s",
                self.connections,
                self.connections_asked,
                self.users,
                self.source_addresses,
                self.loadgen_processes,
                self.connect_seconds,
                self.idle_seconds,
            ),
            "| server process | pid | connections | RSS before KiB | RSS idle KiB | RSS per connection KiB | idle CPU % of a core |".to_owned(),
            "|---|---|---|---|---|---|---|".to_owned(),
        ];
        for server in &self.servers {
            lines.push(format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                server.url,
                server.pid.map_or("n/a".to_owned(), |pid| pid.to_string()),
                server.connections,
                kib(server.rss_before_kib),
                kib(server.rss_idle_kib),
                decimal(server.rss_per_connection_kib),
                decimal(server.idle_cpu_percent),
            ));
        }
        if self.servers.len() > 1 {
            lines.push(format!(
                "| all | | {} | {} | {} | {} | {} |",
                self.connections,
                kib(self.server_rss_before_kib),
                kib(self.server_rss_idle_kib),
                decimal(self.rss_per_connection_kib),
                decimal(self.server_idle_cpu_percent),
            ));
        }
        if self.message_before_connect {
            lines.push("(one message went to the group before the connections opened)".to_owned());
        }
        lines.push(String::new());
        lines.push(
            "| broadcast reached | of connections | first ms | broadcast p50 ms | p90 ms | p99 ms | broadcast max ms |"
                .to_owned(),
        );
        lines.push("|---|---|---|---|---|---|---|".to_owned());
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} |",
            self.broadcast_reached,
            self.connections,
            decimal(self.broadcast_first_ms),
            decimal(self.broadcast_p50_ms),
            decimal(self.broadcast_p90_ms),
            decimal(self.broadcast_p99_ms),
            self.broadcast_max_ms,
        ));
        if self.servers.len() > 1 {
            lines.push(String::new());
            lines.push(
                "| server process | broadcast reached | first ms | p50 ms | max ms |".to_owned(),
            );
            lines.push("|---|---|---|---|---|".to_owned());
            for server in &self.servers {
                lines.push(format!(
                    "| {} | {} | {} | {} | {} |",
                    server.url,
                    server.broadcast_reached,
                    decimal(server.broadcast_first_ms),
                    decimal(server.broadcast_p50_ms),
                    decimal(server.broadcast_max_ms),
                ));
            }
        }
        if self.processes.len() > 1 || self.failed_connections > 0 {
            lines.push(String::new());
            lines.push(
                "| loadgen process | pid | connections asked | opened | failed | broadcast reached | closed by the server |"
                    .to_owned(),
            );
            lines.push("|---|---|---|---|---|---|---|".to_owned());
            for process in &self.processes {
                lines.push(format!(
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    process.process,
                    process.pid.map_or("n/a".to_owned(), |pid| pid.to_string()),
                    process.asked,
                    process.opened,
                    process.failed,
                    process.broadcast_reached,
                    process.closed,
                ));
            }
        }
        lines.push(
            "(RSS per connection: growth over the connections opened after the baseline, which \
             was taken with one connection per user already open)"
                .to_owned(),
        );
        for process in &self.processes {
            if let Some(failure) = &process.failure {
                lines.push(format!(
                    "loadgen process {} failed: {failure}",
                    process.process
                ));
            }
        }
        for sample in &self.error_samples {
            lines.push(format!("error sample: {sample}"));
        }
        lines.join("\n")
    }
}

/// Sends one message to the group and waits until a member's socket gets it: the push router
/// writes every recipient's inbox before it delivers to any socket.
async fn message_before_connect(
    api: &Api,
    ws_base: &str,
    users: &[setup::User],
    group_id: uuid::Uuid,
) -> anyhow::Result<()> {
    let recipient = users.get(1).context("the group needs two members")?;
    let (mut socket, _) = setup::open_socket(&Api::new(ws_base)?, &recipient.token, "").await?;
    api.post(
        &format!("/api/v1/conversations/{group_id}/messages"),
        Some(&users[0].token),
        &json!({"body": FIRST_TEXT}),
    )
    .await?;
    let arrived = tokio::time::timeout(BROADCAST_WAIT, async {
        while let Some(Ok(frame)) = socket.next().await {
            if let Message::Text(text) = frame
                && text.contains("\"message.created\"")
                && text.contains(FIRST_TEXT)
            {
                return true;
            }
        }
        false
    })
    .await;
    match arrived {
        Ok(true) => Ok(()),
        Ok(false) => bail!("the socket closed before the message sent before connecting"),
        Err(_) => bail!(
            "the message sent before connecting did not arrive within {} s",
            BROADCAST_WAIT.as_secs()
        ),
    }
}

/// The socket-push nodes, each with the pid measured for it.
fn nodes(api: &Api, idle: &Idle) -> anyhow::Result<Vec<Node>> {
    let urls = if idle.ws_urls.is_empty() {
        vec![api.base.clone()]
    } else {
        idle.ws_urls
            .iter()
            .map(|url| url.trim_end_matches('/').to_owned())
            .collect()
    };
    if !idle.server_pid.is_empty() && idle.server_pid.len() != urls.len() {
        bail!(
            "{} --server-pid for {} socket-push nodes: give one per --ws-urls entry, in the same order",
            idle.server_pid.len(),
            urls.len()
        );
    }
    Ok(urls
        .into_iter()
        .enumerate()
        .map(|(index, url)| Node {
            url,
            pid: idle.server_pid.get(index).copied(),
        })
        .collect())
}

/// `total` split into `parts` counts that differ by at most one.
/// The value at `quantile` of sorted `values` (nearest rank).
fn percentile_of(values: &[f64], quantile: f64) -> Option<f64> {
    let rank = (quantile * values.len() as f64).ceil() as usize;
    values.get(rank.max(1) - 1).copied()
}

fn split(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|part| total / parts + usize::from(part < total % parts))
        .collect()
}

/// The opening of the first connections and of the rest, as one process's figures.
fn merge(first: &Connected, rest: &Connected) -> Connected {
    Connected {
        opened_per_node: first
            .opened_per_node
            .iter()
            .zip(&rest.opened_per_node)
            .map(|(first, rest)| first + rest)
            .collect(),
        failed: first.failed + rest.failed,
        error_samples: first
            .error_samples
            .iter()
            .chain(&rest.error_samples)
            .cloned()
            .collect(),
        seconds: first.seconds + rest.seconds,
    }
}

/// Each worker's next report of the kind `pick` takes, or why it has none by `deadline`.
async fn gather<T>(
    workers: &mut [Worker],
    deadline: Instant,
    pick: impl Fn(Report) -> Option<T>,
) -> Vec<anyhow::Result<T>> {
    let mut results = Vec::with_capacity(workers.len());
    for worker in workers {
        let result = match worker.next_report(deadline).await {
            Ok(report) => pick(report).context("an answer out of turn"),
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            eprintln!("loadgen: process {}: {error:#}", worker.number);
        }
        results.push(result);
    }
    results
}

fn per_connection(before: Option<u64>, after: Option<u64>, connections: usize) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if connections > 0 => {
            Some(after.saturating_sub(before) as f64 / connections as f64)
        }
        _ => None,
    }
}

fn cpu_percent(before: Option<u64>, after: Option<u64>, seconds: f64) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if seconds > 0.0 => {
            Some(after.saturating_sub(before) as f64 / 100.0 / seconds * 100.0)
        }
        _ => None,
    }
}

/// This process's soft limit on open files (`ulimit -n`).
fn open_files_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
