//! Worker processes: one process may hold only as many sockets as its open-file limit
//! allows (20,000 here), so `idle --processes N` starts N − 1 copies of this executable
//! (`loadgen idle-worker`), each holding its share.
//!
//! The protocol is JSON lines. On the worker's stdin: its [`Share`] first, then
//! [`Command`]s. On its stdout: [`Report`]s (its diagnostics go to stderr). A worker exits by
//! itself when its stdin closes (the parent is done or gone) or when its lifetime, given by
//! the parent, runs out.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::hold::{Arrivals, Connected, Holding, Share, unix_ns};

/// The first line on a worker's stdin.
#[derive(Serialize, Deserialize)]
pub struct Assignment {
    pub share: Share,
    /// The worker exits this long after it starts, whatever happens.
    pub lifetime_seconds: f64,
}

/// From the parent, after the assignment.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// The broadcast is sent: report arrivals once every socket has it, or at this time.
    Collect { until_unix_ns: u64 },
}

/// From a worker.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    Connected(Connected),
    Arrivals(Arrivals),
}

/// `loadgen idle-worker`: holds the share read from stdin and answers the parent's commands.
pub async fn worker() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("no assignment on stdin within 60 s")??
        .context("stdin closed before the assignment")?;
    let assignment: Assignment = serde_json::from_str(&first).context("reading the assignment")?;
    let lifetime = Duration::from_secs_f64(assignment.lifetime_seconds.clamp(1.0, 3.0 * 3600.0));
    tokio::spawn(async move {
        tokio::time::sleep(lifetime).await;
        eprintln!(
            "loadgen idle-worker {}: lifetime of {} s over; exiting",
            std::process::id(),
            lifetime.as_secs()
        );
        std::process::exit(2);
    });
    // Commands arrive while the connections open; the parent closing the pipe ends us at once.
    let (commands, mut received) = tokio::sync::mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Command>(&line) {
                    Ok(command) => {
                        let _ = commands.send(command);
                    }
                    Err(error) => eprintln!("loadgen idle-worker: unreadable command: {error}"),
                },
                Ok(None) | Err(_) => std::process::exit(0),
            }
        }
    });

    let share = assignment.share;
    let deadline = Instant::now() + Duration::from_secs_f64(share.connect_seconds.max(1.0));
    let mut holding = Holding::new(&share.broadcast_text)?;
    let connected = holding.open(&share, deadline).await;
    write_report(&Report::Connected(connected)).await?;
    while let Some(command) = received.recv().await {
        match command {
            Command::Collect { until_unix_ns } => {
                let wait = Duration::from_nanos(until_unix_ns.saturating_sub(unix_ns()));
                let arrivals = holding.collect(Instant::now() + wait).await;
                write_report(&Report::Arrivals(arrivals)).await?;
            }
        }
    }
    Ok(())
}

async fn write_report(report: &Report) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(report)?;
    line.push(b'\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    Ok(())
}

/// A running worker, seen from the parent.
pub struct Worker {
    /// 1 for the first worker (the parent is process 0).
    pub number: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts `loadgen idle-worker` and hands it its assignment.
    pub async fn spawn(number: usize, assignment: &Assignment) -> anyhow::Result<Self> {
        let executable = std::env::current_exe().context("finding loadgen's own executable")?;
        let mut child = tokio::process::Command::new(&executable)
            .arg("idle-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", executable.display()))?;
        let mut stdin = child.stdin.take().context("the worker has no stdin")?;
        let stdout = child.stdout.take().context("the worker has no stdout")?;
        let mut line = serde_json::to_vec(assignment)?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .context("writing the worker's assignment")?;
        stdin.flush().await?;
        Ok(Self {
            number,
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The worker's next report, or why there is none by `deadline`.
    pub async fn next_report(&mut self, deadline: Instant) -> anyhow::Result<Report> {
        let line = match tokio::time::timeout_at(deadline.into(), self.stdout.next_line()).await {
            Err(_) => anyhow::bail!("no report by the deadline"),
            Ok(Err(error)) => anyhow::bail!("reading its stdout: {error}"),
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                match status {
                    Ok(Ok(status)) => anyhow::bail!("it exited ({status})"),
                    _ => anyhow::bail!("it closed its stdout"),
                }
            }
            Ok(Ok(Some(line))) => line,
        };
        serde_json::from_str(&line).context("an unreadable report")
    }

    pub async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the worker's stdin is closed")?;
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Closes its stdin (it exits on that) and waits a little; kills it if it lingers.
    pub async fn finish(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
