//! Accounts, conversations and open sockets, made through the public API only.

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use uuid::Uuid;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The REST side of chatd.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        checked(request, "POST", path).await
    }

    /// GETs `path` with the caller's token; a non-2xx answer is an error with its body.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        checked(request, "GET", path).await
    }

    pub fn ws_url(&self) -> String {
        ws_url(&self.base)
    }
}

/// Sends `request` and returns its JSON body; a non-2xx answer is an error with its body.
async fn checked(
    request: reqwest::RequestBuilder,
    method: &str,
    path: &str,
) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{method} {path}: {status} {body}");
    }
    Ok(body)
}

/// The WebSocket endpoint of the chatd whose base URL is `base` (`http://host:port`).
pub fn ws_url(base: &str) -> String {
    format!(
        "{}/api/v1/ws",
        base.trim_end_matches('/')
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    )
}

pub struct User {
    pub id: Uuid,
    pub token: String,
}

pub struct Conversation {
    pub id: Uuid,
    /// Indexes into `World::users`.
    pub members: Vec<usize>,
}

/// Everyone, online.
pub struct World {
    pub users: Vec<User>,
    pub conversations: Vec<Conversation>,
    /// One socket per user, in the order of `users`.
    pub sockets: std::sync::Mutex<Vec<Option<Socket>>>,
    /// Each socket's `ready` cursor: where a resume starts before any event arrived.
    pub cursors: Vec<Option<String>>,
}

/// What [`settle`] read before the run.
pub struct Settled {
    pub frames: u64,
    pub seconds: f64,
    /// Whether it ended on a quiet second (not on the limit).
    pub quiet: bool,
}

/// Reads and drops what the server pushes to the open sockets before anyone sends (the
/// presence announcements of everyone coming online, the conversations' creation), until no
/// socket has received a text frame for `quiet`, or `limit` has passed. An event frame's
/// cursor becomes the socket's resume cursor.
pub async fn settle(
    world: &mut World,
    quiet: Duration,
    limit: Duration,
) -> anyhow::Result<Settled> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let started = std::time::Instant::now();
    let elapsed_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let last_frame_ms = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    let sockets: Vec<Option<Socket>> = world
        .sockets
        .lock()
        .map_err(|_| anyhow::anyhow!("socket list poisoned"))?
        .drain(..)
        .collect();
    let mut readers = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let (last_frame_ms, frames) = (last_frame_ms.clone(), frames.clone());
        readers.push(tokio::spawn(async move {
            let Some(mut socket) = socket else {
                return anyhow::Ok((None, None));
            };
            let mut cursor = None;
            loop {
                match tokio::time::timeout(Duration::from_millis(100), socket.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        frames.fetch_add(1, Ordering::Relaxed);
                        last_frame_ms.fetch_max(elapsed_ms(), Ordering::Relaxed);
                        if text.contains("\"cursor\"") {
                            let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                            if frame["type"] == "event" {
                                cursor = frame["cursor"].as_str().map(str::to_owned).or(cursor);
                            }
                        }
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(Some(Err(error))) => bail!("a socket failed before the run: {error}"),
                    Ok(None) => bail!("the server closed a socket before the run"),
                }
                let now = elapsed_ms();
                if now.saturating_sub(last_frame_ms.load(Ordering::Relaxed)) >= quiet_ms
                    || now >= limit_ms
                {
                    return Ok((Some(socket), cursor));
                }
            }
        }));
    }
    let mut sockets = Vec::with_capacity(readers.len());
    for (index, reader) in readers.into_iter().enumerate() {
        let (socket, cursor) = reader.await??;
        if let Some(cursor) = cursor
            && let Some(slot) = world.cursors.get_mut(index)
        {
            *slot = Some(cursor);
        }
        sockets.push(socket);
    }
    *world
        .sockets
        .lock()
        .map_err(|_| anyhow::anyhow!("socket list poisoned"))? = sockets;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Settled {
        frames: frames.load(Ordering::Relaxed),
        seconds,
        quiet: started.elapsed() < limit,
    })
}

/// Registers `count` users, `concurrency` at a time (password hashing is the slow part).
pub async fn register(api: &Api, count: usize, concurrency: usize) -> anyhow::Result<Vec<User>> {
    let run = Uuid::now_v7().simple().to_string();
    let suffix = &run[run.len() - 10..];
    let users: Vec<User> = futures::stream::iter(0..count)
        .map(|index| {
            let api = api.clone();
            let username = format!("lg{suffix}_{index}");
            async move {
                let session = api
                    .post(
                        "/api/v1/auth/register",
                        None,
                        &json!({"username": username, "email": format!("{username}@loadgen.invalid"), "password": "loadgen password"}),
                    )
                    .await?;
                let id: Uuid = session["user"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .context("register answered without a user id")?;
                let token = session["access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                anyhow::Ok(User { id, token })
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(users)
}

/// Opens one socket (`query` is appended to the URL, e.g. `?cursor=…`) and waits for
/// `ready`; returns the socket and the cursor `ready` gave.
pub async fn open_socket(
    api: &Api,
    token: &str,
    query: &str,
) -> anyhow::Result<(Socket, Option<String>)> {
    let mut request = format!("{}{query}", api.ws_url()).into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let cursor = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("no ready frame within 10 s")?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["type"] == "ready" {
                    break frame["cursor"].as_str().map(str::to_owned);
                }
            }
            Some(Ok(_)) => {}
            _ => bail!("socket closed before ready"),
        }
    };
    socket.flush().await?;
    Ok((socket, cursor))
}

/// Opens one socket per user and waits for each `ready`.
async fn connect_all(
    api: &Api,
    users: &[User],
    concurrency: usize,
) -> anyhow::Result<(Vec<Option<Socket>>, Vec<Option<String>>)> {
    let opened: Vec<(Socket, Option<String>)> =
        futures::stream::iter(users.iter().map(|user| user.token.clone()))
            .map(|token| async move { open_socket(api, &token, "").await })
            .buffered(concurrency.max(1) * 4)
            .try_collect()
            .await?;
    Ok(opened
        .into_iter()
        .map(|(socket, cursor)| (Some(socket), cursor))
        .unzip())
}

/// `pairs` direct conversations of two fresh users each, everyone online.
pub async fn direct(api: &Api, pairs: usize, concurrency: usize) -> anyhow::Result<World> {
    let users = register(api, pairs * 2, concurrency).await?;
    let conversations: Vec<Conversation> = futures::stream::iter(0..pairs)
        .map(|pair| {
            let (a, b) = (pair * 2, pair * 2 + 1);
            let token = users[a].token.clone();
            let other = users[b].id;
            let api = api.clone();
            async move {
                let conversation = api
                    .post(
                        "/api/v1/conversations",
                        Some(&token),
                        &json!({"type": "direct", "user_id": other}),
                    )
                    .await?;
                let id: Uuid = conversation["id"].as_str().unwrap_or_default().parse()?;
                anyhow::Ok(Conversation {
                    id,
                    members: vec![a, b],
                })
            }
        })
        .buffered(concurrency.max(1) * 4)
        .try_collect()
        .await?;
    online(api, users, conversations, concurrency).await
}

/// The world with every user's socket open.
async fn online(
    api: &Api,
    users: Vec<User>,
    conversations: Vec<Conversation>,
    concurrency: usize,
) -> anyhow::Result<World> {
    let (sockets, cursors) = connect_all(api, &users, concurrency).await?;
    Ok(World {
        users,
        conversations,
        sockets: std::sync::Mutex::new(sockets),
        cursors,
    })
}

/// `groups` groups of `members` fresh users each, everyone online.
pub async fn groups(
    api: &Api,
    groups: usize,
    members: usize,
    concurrency: usize,
) -> anyhow::Result<World> {
    let (users, conversations) = offline_groups(api, groups, members, concurrency).await?;
    online(api, users, conversations, concurrency).await
}

/// `groups` groups of `members` fresh users each (at most 1,000, the server's limit), nobody
/// online yet.
pub async fn offline_groups(
    api: &Api,
    groups: usize,
    members: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<User>, Vec<Conversation>)> {
    let members = members.clamp(2, 1000);
    let users = register(api, groups * members, concurrency).await?;
    let mut conversations = Vec::with_capacity(groups);
    for group in 0..groups {
        let indexes: Vec<usize> = (group * members..(group + 1) * members).collect();
        let member_ids: Vec<Uuid> = indexes[1..].iter().map(|index| users[*index].id).collect();
        let conversation = api
            .post(
                "/api/v1/conversations",
                Some(&users[indexes[0]].token),
                &json!({"type": "group", "title": format!("loadgen {group}"), "member_ids": member_ids}),
            )
            .await?;
        let id: Uuid = conversation["id"].as_str().unwrap_or_default().parse()?;
        conversations.push(Conversation {
            id,
            members: indexes,
        });
    }
    Ok((users, conversations))
}
