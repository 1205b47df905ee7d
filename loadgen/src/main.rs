//! `loadgen`: real clients for `chatd`, over its public REST and WebSocket API only.
//!
//! Scenarios (this increment: `direct`, `group`, `idle` and `rebuild`):
//!
//! - `direct`: P direct pairs, both members online over WebSocket; messages sent at a target
//!   rate R, open loop (each send is due at its own time, whatever the server does, and its
//!   latency counts from that time, so a slow server shows as latency, not as a lower offered
//!   rate), over WebSocket frames or REST.
//! - `group`: S groups of G members, all online; senders at rate R; every delivered frame is
//!   measured.
//! - `reconnect`: any scenario with `--reconnect-every-ms`: every socket drops at random and
//!   resumes with its cursor while traffic flows; the checker must find nothing lost or
//!   duplicated.
//! - `idle`: C quiet connections over several source addresses; the server's memory per
//!   connection and idle CPU, then one broadcast to all of them.
//! - `calibrate`: a fixed single-threaded workload timed, so figures of different days can be
//!   compared (the machine's speed moves).
//! - `rebuild`: N messages seeded over REST into K groups, then `chatd replay` (every read
//!   model rebuilt from the event log and switched in) timed as a subprocess, in events/s
//!   against the 100,000 events/s target; afterwards every group's history must still hold
//!   each seeded message once, in `seq` order.
//!
//! Each traffic run (`direct`, `group`, `reconnect`) measures send → recipient-receive
//! latency (HdrHistogram: p50, p90, p99, p99.9, max), the achieved rates, errors, and checks
//! every recipient's `seq`s per conversation for lost, duplicated and out-of-order messages.
//! Every scenario prints a table and writes JSON. Every loop is bounded in count and time, and
//! traffic goes to the given URL only (loopback in the benchmarks); `rebuild` also runs
//! `chatd replay` on the database it is given, which must be that server's.
//!
//! - `setup`: accounts, conversations and sockets.
//! - `run`: the open-loop sender and the receivers.
//! - `report`: the figures, as a table and as JSON.
//! - `idle` and `rebuild`: those scenarios, each with its own figures.

mod calibrate;
mod idle;
mod rebuild;
mod report;
mod run;
mod setup;

use clap::{Parser, Subcommand, ValueEnum};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for chatd (REST and WebSocket clients)"
)]
struct Cli {
    /// chatd's base URL (`chatd serve`, or the edge of a split deployment).
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Where to write the JSON result (stdout gets the table either way).
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// Many quiet connections: server memory per connection, idle CPU, and one broadcast.
    Idle(idle::Idle),
    /// Seeds N messages, then times `chatd replay` and checks the histories after the switch.
    Rebuild(rebuild::Rebuild),
    /// Direct pairs, everyone online.
    Direct {
        /// Direct conversations (two users each).
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Groups, every member online.
    Group {
        /// Number of groups.
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Members per group (the creator included).
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Times a fixed single-threaded workload: how fast this machine is right now.
    Calibrate(calibrate::Calibrate),
    /// A helper process of `idle --processes N` (reads its share on stdin).
    #[command(hide = true)]
    IdleWorker,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Load {
    /// Messages per second offered (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// How messages are sent.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Sends allowed in flight at once; a send due while this many are open counts as an error
    /// (the offered rate is not lowered).
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// Seconds to wait for the last deliveries after sending stops.
    #[arg(long, default_value_t = 10.0)]
    drain_seconds: f64,
    /// Accounts registered at once during setup.
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// Drop every socket at random about this often (ms) and resume it with its last
    /// cursor, while traffic flows (the reconnect scenario; sends go over REST then).
    #[arg(long, default_value_t = 0)]
    reconnect_every_ms: u64,
    /// Before sending, read and drop what the server pushes while everyone comes online
    /// (presence announcements: N users in one group make about N²/2 frames) until no socket
    /// has received anything for a second, for at most this many seconds (0: do not wait).
    /// Otherwise the first messages queue behind that burst and their latency measures it.
    #[arg(long, default_value_t = 60.0)]
    settle_seconds: f64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Ws,
    Rest,
}

impl Load {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.clamp(0.1, 3600.0))
    }

    pub fn reconnect_every(&self) -> Option<Duration> {
        (self.reconnect_every_ms > 0).then(|| Duration::from_millis(self.reconnect_every_ms))
    }

    fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain_seconds.clamp(0.0, 600.0))
    }

    fn settle_limit(&self) -> Duration {
        Duration::from_secs_f64(self.settle_seconds.clamp(0.0, 600.0))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Scenario::IdleWorker = &cli.scenario {
        return idle::worker().await;
    }
    if let Scenario::Calibrate(calibrate) = &cli.scenario {
        let result = calibrate::run(calibrate);
        println!("{}", result.table());
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
        }
        return Ok(());
    }
    let api = setup::Api::new(&cli.url)?;
    if let Scenario::Idle(idle) = &cli.scenario {
        let result = idle::run(&api, idle).await?;
        println!("{}", result.table());
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
        }
        return Ok(());
    }
    if let Scenario::Rebuild(rebuild) = &cli.scenario {
        let result = rebuild::run(&api, rebuild).await?;
        println!("{}", result.table());
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
            eprintln!("loadgen: wrote {}", path.display());
        }
        return Ok(());
    }
    let (name, load, mut world) = match &cli.scenario {
        Scenario::IdleWorker | Scenario::Calibrate(_) => unreachable!("handled above"),
        Scenario::Direct { pairs, load } => (
            "direct",
            load.clone(),
            setup::direct(&api, *pairs, load.setup_concurrency).await?,
        ),
        Scenario::Group {
            groups,
            members,
            load,
        } => (
            "group",
            load.clone(),
            setup::groups(&api, *groups, *members, load.setup_concurrency).await?,
        ),
        Scenario::Idle(_) | Scenario::Rebuild(_) => unreachable!("handled above"),
    };
    if load.reconnect_every().is_some() && load.transport == Transport::Ws {
        anyhow::bail!("--reconnect-every-ms needs --transport rest (the sockets come and go)");
    }
    eprintln!(
        "loadgen: {} users online in {} conversations; sending {} msg/s for {} s over {:?}",
        world.users.len(),
        world.conversations.len(),
        load.rate,
        load.seconds,
        load.transport
    );
    if load.reconnect_every().is_none() && !load.settle_limit().is_zero() {
        let settled =
            setup::settle(&mut world, Duration::from_secs(1), load.settle_limit()).await?;
        eprintln!(
            "loadgen: setup pushes settled after {:.1} s ({} frames read and dropped{})",
            settled.seconds,
            settled.frames,
            if settled.quiet {
                ""
            } else {
                "; still arriving at the limit"
            }
        );
    }
    let outcome = run::run(&api, &world, &load).await?;
    let result = report::Report::new(name, &load, &world, outcome);
    println!("{}", result.table());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
        eprintln!("loadgen: wrote {}", path.display());
    }
    Ok(())
}
