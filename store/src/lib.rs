//! Postgres: the connection pool, the embedded migrations, and the event store.
//!
//! - [`connect`] and [`migrate`]: one pool per process; migrations are the SQL in
//!   `migrations/`, embedded in the binary.
//! - [`event_store`]: runs a command against an aggregate through cqrs-es and postgres-es and
//!   returns what it committed (the stream position feeds the consistency token).
//! - [`group_commit`]: the writers that commit concurrent commands' events together.
//! - [`projection`]: how far the read models have got: positions and lag.

pub mod event_store;
pub mod group_commit;
pub mod projection;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;

pub use event_store::{AggregateStore, Committed, ExecuteError, StreamPosition, fold};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that fails fast when Postgres is away, instead of waiting 30 s per request. sqlx
/// pings each connection before handing it out; that round trip was 4 % of `chatd`'s CPU
/// under load, but pinging only connections idle for over a second made the link-cut test
/// fail (ADR 0019), so it stays.
pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(database_url)?)
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", redact(database_url)))?;
    Ok(pool)
}

/// The connection options of a `DATABASE_URL`. Without an explicit `sslmode`, sqlx (like
/// libpq) prefers TLS whenever the server offers it; to a server on this host (loopback or a
/// Unix socket) TLS protects nothing and cost 10 % of `chatd`'s CPU under load, so there it is
/// off unless the URL asks for it.
pub fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(database_url)
        .with_context(|| "DATABASE_URL is not a valid Postgres URL")?;
    let asked = database_url.to_ascii_lowercase().contains("sslmode=")
        || database_url.to_ascii_lowercase().contains("ssl-mode=");
    if !asked && is_local(options.get_host()) {
        return Ok(options.ssl_mode(PgSslMode::Disable));
    }
    Ok(options)
}

fn is_local(host: &str) -> bool {
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")?;
    Ok(())
}

/// Creates the database named in the URL when it does not exist (for `chatd serve` on a fresh
/// machine, and for tests that each own a database).
pub async fn create_database_if_missing(database_url: &str) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase;
    let exists = Postgres::database_exists(database_url)
        .await
        .with_context(|| format!("cannot reach Postgres at {}", redact(database_url)))?;
    if !exists {
        Postgres::create_database(database_url)
            .await
            .with_context(|| format!("cannot create database {}", redact(database_url)))?;
    }
    Ok(())
}

/// A URL fit for logs: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgSslMode;

    #[test]
    fn tls_is_off_to_a_local_server_unless_the_url_asks_for_it() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/chat",
                PgSslMode::Disable,
            ),
            ("postgres://postgres@localhost/chat", PgSslMode::Disable),
            ("postgres://postgres@[::1]:5432/chat", PgSslMode::Disable),
            (
                "postgres://postgres@127.0.0.1/chat?sslmode=require",
                PgSslMode::Require,
            ),
            ("postgres://postgres@db.internal/chat", PgSslMode::Prefer),
        ] {
            let mode = super::connect_options(url)
                .map(|options| options.get_ssl_mode())
                .unwrap_or_else(|error| panic!("{error:#}"));
            assert_eq!(format!("{mode:?}"), format!("{expected:?}"), "{url}");
        }
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            super::redact("postgres://postgres@127.0.0.1/chat"),
            "postgres://postgres@127.0.0.1/chat"
        );
    }
}
