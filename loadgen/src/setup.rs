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
