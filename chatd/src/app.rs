//! Startup and the life of a process: connect, migrate, build the router of the chosen roles,
//! start the background loops, serve until the shutdown token fires, then drain.

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use base64::Engine;
use command_api::{CommandState, LoginLimits, PasswordHasher, SendLimits};
use domain::account::Account;
use domain::conversation::{Conversation, ConversationServices};
use projector::{Projector, ProjectorOptions};
use query_api::QueryState;
use sessions::{JwtSecret, Revocations, Tokens};
use socket_push::PushState;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use store::AggregateStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use web::Authenticator;

use crate::Settings;
use crate::ops;

/// A conversation is snapshotted every this many events, so writing to a long one costs what
/// writing to a new one does.
const CONVERSATION_SNAPSHOT_EVERY: usize = 100;

/// Which roles this process plays.
#[derive(Clone, Copy, Debug)]
pub struct Roles {
    pub command: bool,
    /// The outbox relay (runs with the command role in every deployment; tests drive it).
    pub relay: bool,
    pub query: bool,
    pub projector: bool,
    pub push: bool,
}

impl Roles {
    pub const ALL: Self = Self {
        command: true,
        relay: true,
        query: true,
        projector: true,
        push: true,
    };

    pub const NONE: Self = Self {
        command: false,
        relay: false,
        query: false,
        projector: false,
        push: false,
    };
}

/// A started process: its connections and the tasks it runs.
pub struct App {
    pub settings: Settings,
    pub roles: Roles,
    pub pool: PgPool,
    pub authenticator: Arc<Authenticator>,
    pub redis: redis::aio::ConnectionManager,
    /// This node's WebSocket connections, shared by the endpoint and the push router.
    pub hub: Arc<socket_push::hub::Hub>,
    /// This process's identity in the user map and its node queue.
    pub node_id: uuid::Uuid,
    /// The AMQP link socket-push publishes to other nodes on.
    pub push_link: Arc<bus::SharedConnection>,
    /// Mints and checks signed media links (the key is derived from the JWT secret).
    pub links: web::MediaLinks,
    /// Where uploads are stored.
    pub media_store: media::MediaStore,
}

impl App {
    /// Connects to every dependency (a one-line error naming the one that fails), applies
    /// migrations when `migrate` is set, and loads the signing secret.
    pub async fn start(settings: Settings, roles: Roles, migrate: bool) -> anyhow::Result<Self> {
        if migrate {
            store::create_database_if_missing(&settings.database_url).await?;
        }
        let pool = store::connect(&settings.database_url, settings.db_max_connections).await?;
        if migrate {
            store::migrate(&pool).await?;
        }
        let redis = sessions::redis_connect(&settings.redis_url).await?;
        // Fail at start, not at the first event, when the broker is away; and declare the
        // topology so that nothing published is unroutable.
        let amqp = bus::connect(&settings.amqp_url, "chatd-startup").await?;
        let channel = amqp
            .create_channel()
            .await
            .context("opening a RabbitMQ channel")?;
        bus::Topology::new(&settings.namespace)
            .declare(&channel)
            .await
            .context("declaring the RabbitMQ topology")?;
        let _ = amqp.close(200, "startup check done".into()).await;

        let secret = jwt_secret(&settings, &pool, migrate).await?;
        let settings_amqp_url = settings.amqp_url.clone();
        let ws_outbound_queue = settings.ws_outbound_queue;
        let ws_heartbeat = Duration::from_secs(settings.ws_heartbeat_secs);
        let ws_direct_quiet = Duration::from_millis(settings.ws_direct_quiet_ms);
        let lifetime = Duration::from_secs(settings.access_token_ttl_secs);
        let tokens = Tokens::new(
            &secret,
            &settings.jwt_issuer,
            &settings.jwt_audience,
            lifetime,
        );
        let revocations =
            Revocations::new(redis.clone(), pool.clone(), &settings.namespace, lifetime);
        let links = web::MediaLinks::new(
            secret.derive_key("chat media links v1"),
            settings.media_link_ttl_secs,
            &settings.public_url,
        );
        let media_store =
            media::MediaStore::open(&settings.media_store, &settings.media_s3_options)?;
        let authenticator = Arc::new(Authenticator {
            tokens,
            revocations,
        });
        Ok(Self {
            settings,
            roles,
            pool,
            authenticator,
            redis,
            hub: Arc::new(
                socket_push::hub::Hub::with_queue_capacity(ws_outbound_queue)
                    .with_heartbeat(ws_heartbeat)
                    .with_direct_quiet(ws_direct_quiet),
            ),
            node_id: uuid::Uuid::now_v7(),
            push_link: Arc::new(bus::SharedConnection::new(&settings_amqp_url, "chatd-push")),
            links,
            media_store,
        })
    }

    /// The HTTP routes of this process's roles, plus health, metrics and docs.
    pub fn router(&self) -> anyhow::Result<Router> {
        let mut router = Router::new();
        let commands = self.command_state()?;
        if self.roles.command {
            let (routes, _) = command_api::router().split_for_parts();
            router = router.merge(routes.with_state(commands.clone()));
        }
        if self.roles.query {
            let state = QueryState {
                pool: self.pool.clone(),
                authenticator: self.authenticator.clone(),
                presence: self.user_map(),
                links: self.links.clone(),
                media_store: self.media_store.clone(),
                ice: query_api::calls::IceConfig {
                    stun_urls: self.settings.stun_urls.clone(),
                    turn_urls: self.settings.turn_urls.clone(),
                    turn_secret: self.settings.turn_secret.clone(),
                    ttl_secs: self.settings.turn_ttl_secs,
                },
            };
            let (routes, _) = query_api::router().split_for_parts();
            let routes = routes.layer(axum::middleware::from_fn_with_state(
                state.clone(),
                query_api::read_consistency,
            ));
            let (media_routes, _) = query_api::media_router().split_for_parts();
            router = router.merge(routes.with_state(state.clone()));
            router = router.merge(media_routes.with_state(state));
        }
        if self.roles.push {
            let state = PushState {
                authenticator: self.authenticator.clone(),
                commands,
                hub: self.hub.clone(),
                redis: self.redis.clone(),
                namespace: self.settings.namespace.clone(),
                delivery: self.delivery(),
                allowed_origins: Arc::new(
                    self.settings
                        .allowed_origins
                        .iter()
                        .filter(|origin| !origin.is_empty())
                        .cloned()
                        .collect(),
                ),
            };
            router = router.merge(socket_push::router().with_state(state));
        }
        let ops_state = ops::OpsState {
            pool: self.pool.clone(),
            redis: self.redis.clone(),
            amqp: Arc::new(bus::SharedConnection::new(
                &self.settings.amqp_url,
                "chatd-ops",
            )),
            namespace: self.settings.namespace.clone(),
            metrics: ops::metrics_handle(),
        };
        let trusted_proxies =
            self.settings
                .trusted_proxies
                .iter()
                .filter(|proxy| !proxy.is_empty())
                .map(|proxy| {
                    proxy.trim().parse::<std::net::IpAddr>().with_context(|| {
                        format!("CHAT_TRUSTED_PROXIES: {proxy} is not an IP address")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(router
            .merge(ops::router(ops_state, openapi()))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(trusted_proxies),
                web::middleware::client_address,
            ))
            .layer(axum::middleware::from_fn(web::middleware::metrics))
            .layer(axum::middleware::from_fn(web::middleware::request_id))
            .layer(DefaultBodyLimit::max(self.settings.max_json_bytes)))
    }

    fn delivery(&self) -> socket_push::delivery::Delivery {
        socket_push::delivery::Delivery {
            hub: self.hub.clone(),
            user_map: self.user_map(),
            amqp: self.push_link.clone(),
            namespace: self.settings.namespace.clone(),
        }
    }

    fn user_map(&self) -> sessions::user_map::UserMap {
        sessions::user_map::UserMap {
            redis: self.redis.clone(),
            namespace: self.settings.namespace.clone(),
            node_id: self.node_id,
        }
    }

    /// What the command side needs, shared by command routes and WebSocket command frames.
    fn command_state(&self) -> anyhow::Result<CommandState> {
        let mut login_limits = LoginLimits::new(self.redis.clone(), &self.settings.namespace);
        login_limits.per_account = self.settings.login_failures_per_account;
        login_limits.per_address = self.settings.login_failures_per_address;
        Ok(CommandState {
            pool: self.pool.clone(),
            accounts: Arc::new(AggregateStore::<Account>::new(self.pool.clone())),
            conversations: Arc::new(AggregateStore::<Conversation>::with_snapshots(
                self.pool.clone(),
                CONVERSATION_SNAPSHOT_EVERY,
            )),
            conversation_services: ConversationServices {
                messages: Arc::new(command_api::conversations::IndexedMessages {
                    pool: self.pool.clone(),
                }),
            },
            authenticator: self.authenticator.clone(),
            passwords: Arc::new(PasswordHasher::new(
                self.settings.password_hash_concurrency,
            )?),
            login_limits,
            send_limits: SendLimits::new(
                self.redis.clone(),
                &self.settings.namespace,
                self.settings.sends_per_10_seconds,
            ),
            refresh_token_lifetime: Duration::from_secs(self.settings.refresh_token_ttl_secs),
            media: Arc::new(AggregateStore::<domain::media::Media>::new(
                self.pool.clone(),
            )),
            calls: Arc::new(AggregateStore::<domain::call::Call>::new(self.pool.clone())),
            ring_timeout: Duration::from_secs(self.settings.call_ring_timeout_secs),
            uploads: command_api::media::Uploads {
                store: self.media_store.clone(),
                links: self.links.clone(),
                limits: media::Limits {
                    max_width: self.settings.media_max_dimension,
                    max_height: self.settings.media_max_dimension,
                    max_pixels: self.settings.media_max_pixels,
                },
                max_bytes: self.settings.media_max_bytes,
                decoding: Arc::new(tokio::sync::Semaphore::new(
                    self.settings.media_decode_concurrency.max(1),
                )),
            },
        })
    }

    /// Serves on `listener` and runs this process's background loops until `shutdown` fires;
    /// then stops accepting, finishes in-flight requests and batches, and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let router = self.router()?;
        let mut loops = tokio::task::JoinSet::new();
        let topology = bus::Topology::new(&self.settings.namespace);
        if self.roles.command {
            // Every command-side process fires due ring timeouts; row locks share the work.
            loops.spawn(command_api::calls::run_ring_timeouts(
                self.command_state()?,
                Duration::from_millis(250),
                shutdown.clone(),
            ));
        }
        if self.roles.relay {
            let relay = bus::OutboxRelay::new(bus::RelayOptions {
                database_url: self.settings.database_url.clone(),
                amqp_url: self.settings.amqp_url.clone(),
                topology: topology.clone(),
                batch_size: 500,
                crash_after: None,
            });
            loops.spawn(relay.run(self.pool.clone(), shutdown.clone()));
        }
        if self.roles.projector {
            let projector = Projector::new(
                self.pool.clone(),
                ProjectorOptions {
                    amqp_url: self.settings.amqp_url.clone(),
                    topology,
                    batch_size: 256,
                    crash_after: None,
                },
            );
            loops.spawn(projector.run(shutdown.clone()));
        }
        if self.roles.push {
            let router = socket_push::push::PushRouter {
                redis: self.redis.clone(),
                namespace: self.settings.namespace.clone(),
                conversations: Arc::new(AggregateStore::<Conversation>::with_snapshots(
                    self.pool.clone(),
                    CONVERSATION_SNAPSHOT_EVERY,
                )),
                accounts: Arc::new(AggregateStore::<Account>::new(self.pool.clone())),
                delivery: self.delivery(),
                links: self.links.clone(),
            };
            loops.spawn(socket_push::revocations::run(
                self.settings.redis_url.clone(),
                self.authenticator.revocations.channel(),
                self.hub.clone(),
                shutdown.clone(),
            ));
            loops.spawn(socket_push::upkeep::run(
                self.hub.clone(),
                self.user_map(),
                self.authenticator.revocations.clone(),
                shutdown.clone(),
            ));
            loops.spawn(socket_push::node::run(
                self.settings.amqp_url.clone(),
                self.settings.namespace.clone(),
                self.node_id,
                self.hub.clone(),
                shutdown.clone(),
            ));
            let consumer = projector::Consumer::with_handler(
                self.pool.clone(),
                ProjectorOptions {
                    amqp_url: self.settings.amqp_url.clone(),
                    topology: bus::Topology::new(&self.settings.namespace),
                    batch_size: 256,
                    crash_after: None,
                },
                router,
            );
            loops.spawn(consumer.run(shutdown.clone()));
        }
        let address = listener.local_addr()?;
        tracing::info!(%address, roles = ?self.roles, "chatd listening");
        let server = axum::serve(
            web::socket::Listener::new(listener),
            router.into_make_service_with_connect_info::<web::socket::Peer>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let served = server.await.context("serving HTTP");
        shutdown.cancel();
        while loops.join_next().await.is_some() {}
        tracing::info!("chatd stopped");
        served
    }
}

async fn not_found() -> web::ApiError {
    web::ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> web::ApiError {
    web::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The OpenAPI document of every REST route, whatever roles this process plays.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, commands) = command_api::router().split_for_parts();
    let (_, queries) = query_api::router().split_for_parts();
    let (_, media) = query_api::media_router().split_for_parts();
    let (_, operations) = OpenApiRouter::<ops::OpsState>::with_openapi(ops::ApiDoc::openapi_base())
        .routes(utoipa_axum::routes!(ops::healthz))
        .routes(utoipa_axum::routes!(ops::readyz))
        .split_for_parts();
    let mut document = operations;
    document.merge(commands);
    document.merge(queries);
    document.merge(media);
    document
}

/// The configured secret, or in `serve` a generated one kept in the database.
async fn jwt_secret(
    settings: &Settings,
    pool: &PgPool,
    may_generate: bool,
) -> anyhow::Result<JwtSecret> {
    if let Some(secret) = &settings.jwt_secret {
        anyhow::ensure!(
            secret.len() >= 32,
            "CHAT_JWT_SECRET must be at least 32 bytes"
        );
        return Ok(JwtSecret::new(secret.as_bytes().to_vec()));
    }
    anyhow::ensure!(
        may_generate,
        "CHAT_JWT_SECRET is required for the split roles"
    );
    let mut bytes = [0u8; 48];
    rand::fill(&mut bytes);
    let candidate = base64::engine::general_purpose::STANDARD.encode(bytes);
    let stored: String = sqlx::query_scalar(
        "INSERT INTO server_settings (key, value) VALUES ('jwt_secret', $1)
         ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key RETURNING value",
    )
    .bind(&candidate)
    .fetch_one(pool)
    .await
    .context("loading the generated JWT secret")?;
    tracing::warn!(
        "CHAT_JWT_SECRET is not set: using a generated secret kept in the database. \
         Set CHAT_JWT_SECRET before running split roles or going to production."
    );
    Ok(JwtSecret::new(stored.into_bytes()))
}
