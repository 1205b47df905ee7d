//! `chatd`: parse the command line, set up logging, run the chosen role.

use chatd::{App, Cli, Command, Roles};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: glibc keeps large freed buffers (each password hash
/// takes 19 MiB) in per-thread arenas once its dynamic mmap threshold has risen, and 100
/// registrations grew the process from 76 MB to 662 MB that it never gave back; with
/// mimalloc it stays near its start (docs/adr/0015).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (settings, roles, migrate) = match cli.command {
        Command::Serve(settings) => (settings, Roles::ALL, true),
        Command::CommandApi(settings) => (
            settings,
            Roles {
                command: true,
                relay: true,
                ..Roles::NONE
            },
            false,
        ),
        Command::QueryApi(settings) => (
            settings,
            Roles {
                query: true,
                ..Roles::NONE
            },
            false,
        ),
        Command::Projector(settings) => (
            settings,
            Roles {
                projector: true,
                ..Roles::NONE
            },
            false,
        ),
        Command::SocketPush(settings) => (
            settings,
            Roles {
                push: true,
                ..Roles::NONE
            },
            false,
        ),
        Command::Admin(admin) => {
            init_logging(&admin.settings.log_format);
            // Who ran it goes into the event: the operator's login and machine.
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned());
            let outcome = chatd::operator::admin(
                &admin.settings,
                admin.action,
                &format!("cli:{user}@{host}"),
            )
            .await?;
            println!("{outcome}");
            return Ok(());
        }
        Command::Audit(audit) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            chatd::operator::audit(&audit.settings, audit.action, &mut out).await?;
            std::io::Write::flush(&mut out)?;
            return Ok(());
        }
        Command::Replay(replay) => {
            let pool = store::connect(&replay.settings.database_url, 4).await?;
            let mut stderr = std::io::stderr();
            let outcome = chatd::replay::run(&pool, replay.verify, &mut stderr).await?;
            if !replay.verify {
                println!(
                    "read models rebuilt from {} events and switched",
                    outcome.events
                );
                return Ok(());
            }
            if outcome.differences.is_empty() {
                println!(
                    "verify: the read models equal the log ({} events)",
                    outcome.events
                );
                return Ok(());
            }
            for difference in &outcome.differences {
                println!(
                    "difference in {} at key ({}): only in {}: {}",
                    difference.table, difference.key, difference.only_in, difference.row
                );
            }
            anyhow::bail!(
                "verify: {} differences between the read models and the log",
                outcome.differences.len()
            );
        }
        Command::Migrate(settings) => {
            init_logging(&settings.log_format);
            store::create_database_if_missing(&settings.database_url).await?;
            let pool = store::connect(&settings.database_url, 2).await?;
            store::migrate(&pool).await?;
            println!("migrations applied");
            return Ok(());
        }
    };
    init_logging(&settings.log_format);
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", settings.bind))?;
    let app = App::start(settings, roles, migrate).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run(listener, shutdown).await
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels on ctrl-c or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
