//! The command line and the one typed configuration of the binary. Every setting has a flag
//! and an environment variable; nothing below `main` reads the environment.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Debug, Parser)]
#[command(
    name = "chatd",
    version,
    about = "Event-sourced real-time chat backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process, every route on one listener; applies migrations at start.
    Serve(Settings),
    /// The write side: command routes and the outbox relay.
    CommandApi(Settings),
    /// The read side: query routes.
    QueryApi(Settings),
    /// Builds the read models from the event bus.
    Projector(Settings),
    /// The WebSocket edge.
    SocketPush(Settings),
    /// Applies pending database migrations and exits.
    Migrate(Settings),
    /// Grants or revokes the `admin` role (each an event in the log, recording who ran it).
    Admin(AdminCommand),
    /// Reads the audit log.
    Audit(AuditCommand),
    /// Rebuilds every read model from the event log and switches to it atomically.
    Replay(ReplayCommand),
}

#[derive(Debug, Args)]
pub struct ReplayCommand {
    /// Rebuild into scratch tables and compare them with the live ones instead of switching;
    /// exits non-zero on any difference.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct AdminCommand {
    #[command(subcommand)]
    pub action: AdminAction,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Makes a user an admin.
    Grant { username: String },
    /// Takes the admin role away.
    Revoke { username: String },
}

#[derive(Debug, Args)]
pub struct AuditCommand {
    #[command(subcommand)]
    pub action: AuditAction,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Writes a conversation's events as JSON Lines on stdout, in log order.
    Export {
        /// The conversation id.
        #[arg(long)]
        conversation: uuid::Uuid,
        /// Recorded at or after (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Recorded before (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chat"
    )]
    pub database_url: String,
    /// Redis connection URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Listen address.
    #[arg(long, env = "CHAT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Prefix of every broker object and Redis key.
    #[arg(long, env = "CHAT_NAMESPACE", default_value = "chat")]
    pub namespace: String,
    /// HS256 signing secret shared by every role (at least 32 bytes). Required for the split
    /// roles; `serve` without it generates one, keeps it in the database and warns.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Comma-separated WebSocket origin allow-list (requests without Origin are allowed).
    #[arg(
        long,
        env = "CHAT_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_origins: Vec<String>,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "CHAT_ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    /// Refresh-token lifetime in seconds.
    #[arg(long, env = "CHAT_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_secs: u64,
    /// `iss` of issued tokens.
    #[arg(long, env = "CHAT_JWT_ISSUER", default_value = "chatd")]
    pub jwt_issuer: String,
    /// `aud` of issued tokens.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", default_value = "chatd-clients")]
    pub jwt_audience: String,
    /// Postgres connections per process.
    #[arg(long, env = "CHAT_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// Password hashes computed at once (each takes 19 MiB).
    #[arg(long, env = "CHAT_PASSWORD_HASH_CONCURRENCY", default_value_t = 4)]
    pub password_hash_concurrency: usize,
    /// Failed logins per account within the window before 429.
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 5)]
    pub login_failures_per_account: u32,
    /// Failed logins per client address within the window before 429.
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_ADDRESS", default_value_t = 20)]
    pub login_failures_per_address: u32,
    /// Messages one user may send per 10 seconds (REST and WebSocket together) before 429.
    #[arg(long, env = "CHAT_SENDS_PER_10_SECONDS", default_value_t = 60)]
    pub sends_per_10_seconds: u32,
    /// Frames a WebSocket connection may have waiting; a connection that falls further behind
    /// is closed with 4008 and resumes from its cursor.
    #[arg(long, env = "CHAT_WS_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub ws_outbound_queue: usize,
    /// Seconds between WebSocket heartbeats: a connection that was sent nothing for this long
    /// gets a ping, and each connection's user-map entry is refreshed once per period. At most 25:
    /// an entry lasts 60 s and must outlive two missed refreshes.
    #[arg(long, env = "CHAT_WS_HEARTBEAT_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=25))]
    pub ws_heartbeat_secs: u64,
    /// Milliseconds a WebSocket must have been sent nothing for its next frame to be written
    /// straight into its socket by the fan-out; a busier one gets its frames through its
    /// queue, batched (ADR 0022). 0 writes straight whenever the socket can take the frame.
    #[arg(long, env = "CHAT_WS_DIRECT_QUIET_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub ws_direct_quiet_ms: u64,
    /// Largest JSON request body in bytes.
    #[arg(long, env = "CHAT_MAX_JSON_BYTES", default_value_t = 64 * 1024)]
    pub max_json_bytes: usize,
    /// Comma-separated IPs of reverse proxies whose `X-Forwarded-For` is believed (the edge).
    #[arg(
        long,
        env = "CHAT_TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub trusted_proxies: Vec<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Where uploads are stored: a directory, or `s3://bucket[/prefix]` (endpoint and
    /// credentials from `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ALLOW_HTTP`).
    #[arg(long, env = "CHAT_MEDIA_STORE", default_value = "data/media")]
    pub media_store: String,
    /// Largest upload in bytes.
    #[arg(long, env = "CHAT_MEDIA_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub media_max_bytes: u64,
    /// Largest width and height of an uploaded image, in pixels.
    #[arg(long, env = "CHAT_MEDIA_MAX_DIMENSION", default_value_t = 8192)]
    pub media_max_dimension: u32,
    /// Largest pixel count (width × height) of an uploaded image.
    #[arg(long, env = "CHAT_MEDIA_MAX_PIXELS", default_value_t = 40_000_000)]
    pub media_max_pixels: u64,
    /// Images decoded at once (each may hold up to 4 bytes per pixel of the budget).
    #[arg(long, env = "CHAT_MEDIA_DECODE_CONCURRENCY", default_value_t = 2)]
    pub media_decode_concurrency: usize,
    /// Lifetime of signed media links in seconds (a link lives one to two lifetimes).
    #[arg(long, env = "CHAT_MEDIA_LINK_TTL_SECS", default_value_t = 3600)]
    pub media_link_ttl_secs: u64,
    /// Public base URL put in front of media links (`https://chat.example.com`); empty for
    /// links relative to the API's origin.
    #[arg(long, env = "CHAT_PUBLIC_URL", default_value = "")]
    pub public_url: String,
    /// Seconds a call rings before it ends as missed.
    #[arg(long, env = "CHAT_CALL_RING_TIMEOUT_SECS", default_value_t = 45)]
    pub call_ring_timeout_secs: u64,
    /// Comma-separated STUN URLs handed to clients (`stun:stun.example.com:3478`).
    #[arg(
        long,
        env = "CHAT_STUN_URLS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub stun_urls: Vec<String>,
    /// Comma-separated TURN URLs (`turn:turn.example.com:3478?transport=udp`, `turns:…`).
    #[arg(
        long,
        env = "CHAT_TURN_URLS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub turn_urls: Vec<String>,
    /// The shared secret of the TURN server's `use-auth-secret` (coturn
    /// `static-auth-secret`); TURN URLs are handed out only with it.
    #[arg(long, env = "CHAT_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Lifetime of issued TURN credentials in seconds.
    #[arg(long, env = "CHAT_TURN_TTL_SECS", default_value_t = 86_400)]
    pub turn_ttl_secs: u64,
    /// The `AWS_*` variables, for an `s3://` media store (read here, with the rest).
    #[arg(skip = aws_variables())]
    pub media_s3_options: Vec<(String, String)>,
}

/// Every `AWS_*` environment variable (endpoint, credentials, region, `AWS_ALLOW_HTTP`, …), as
/// the S3 client's configuration keys take them.
fn aws_variables() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(key, _)| key.starts_with("AWS_"))
        .collect()
}
