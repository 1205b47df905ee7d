//! The open-loop sender and the receivers.
//!
//! Message `k` is due at `start + k / rate`. Its body carries that due time (µs since
//! `start`), so a receiver's latency counts from when the message should have gone out, not
//! from when a busy sender got to it (no coordinated omission). Every socket has a writer
//! task and a reader task; the readers record latencies and, per conversation, every `seq`
//! they see, for the loss, duplicate and order check.

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::setup::{Api, World};
use crate::{Load, Transport};

/// Latencies are recorded in µs up to a minute.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    overloaded: AtomicU64,
    delivered: AtomicU64,
    /// Every receipt of a loadgen message, the sender's own sockets included.
    seen: AtomicU64,
}

/// What one recipient saw of one conversation.
#[derive(Default)]
struct Seen {
    seqs: HashSet<i64>,
    max: i64,
    duplicated: u64,
    out_of_order: u64,
}

struct ReaderResult {
    latencies: Histogram<u64>,
    seen: HashMap<Uuid, Seen>,
    errors: Vec<String>,
    /// Resumes the server could not serve (`resumed` with `recovered: false`).
    unrecovered: u64,
    reconnects: u64,
}

/// How a resuming reader reconnects.
struct Resume {
    api: Api,
    token: String,
    /// The mean time between drops.
    every: Duration,
    seed: u64,
    /// Where the first connection's `ready` left off.
    cursor: Option<String>,
}

/// The fields of a server frame a reader looks at, borrowed from its text where they hold
/// no escapes. Everything else (an ack's whole message, an event's other fields) is skipped
/// without being built: a `serde_json::Value` per frame is a tree of allocations, at up to
/// 150,000 frames/s on the box being measured.
#[derive(Default, serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cursor: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<FrameData<'a>>,
    #[serde(rename = "ref", default)]
    reference: Option<Value>,
    #[serde(default)]
    recovered: Option<bool>,
}

/// What a reader needs of a `message.created` event's data.
#[derive(Default, serde::Deserialize)]
struct FrameData<'a> {
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(borrow, default)]
    sender_id: Option<Cow<'a, str>>,
}

impl<'a> Frame<'a> {
    /// The typed reading; for a frame whose `data` has other shapes than a message's (some
    /// other event), the same fields taken from the generic JSON value.
    fn parse(text: &'a str) -> Self {
        if let Ok(frame) = serde_json::from_str(text) {
            return frame;
        }
        let value: Value = serde_json::from_str(text).unwrap_or_default();
        let owned = |value: &Value| value.as_str().map(|text| Cow::Owned(text.to_owned()));
        Frame {
            kind: owned(&value["type"]),
            cursor: owned(&value["cursor"]),
            event: owned(&value["event"]),
            data: None,
            reference: Some(value["ref"].clone()),
            recovered: value["recovered"].as_bool(),
        }
    }
}

/// One socket's receiving side: latencies, `seq`s seen, acks and errors.
struct Reader {
    me: Uuid,
    start: Instant,
    counters: Arc<Counters>,
    per_conversation: Arc<Vec<AtomicU64>>,
    result: ReaderResult,
}

impl Reader {
    /// Takes in one text frame; returns the position it moves a resuming client to: the
    /// cursor of an `event`, or of `resumed` (everything before it has arrived). Not the
    /// `ready` of a resume: that names the newest event, which may not have arrived yet.
    fn take(&mut self, text: &str) -> Option<String> {
        let received = self.start.elapsed();
        let frame = Frame::parse(text);
        let cursor = match frame.kind.as_deref() {
            Some("event" | "resumed") => frame.cursor.as_deref().map(str::to_owned),
            _ => None,
        };
        match frame.kind.as_deref() {
            Some("event") if frame.event.as_deref() == Some("message.created") => {
                let data = frame.data.unwrap_or_default();
                let due = data
                    .body
                    .as_deref()
                    .and_then(|body| body.strip_prefix("lg:"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(due, _)| due.parse::<u64>().unwrap_or(0));
                if let Some(due) = due {
                    let conversation: Uuid = data
                        .conversation_id
                        .as_deref()
                        .and_then(|id| id.parse().ok())
                        .unwrap_or_default();
                    let seq = data.seq.unwrap_or(0);
                    let seen = self.result.seen.entry(conversation).or_default();
                    if !seen.seqs.insert(seq) {
                        seen.duplicated += 1;
                    }
                    if seq < seen.max {
                        seen.out_of_order += 1;
                    }
                    seen.max = seen.max.max(seq);
                    self.counters.seen.fetch_add(1, Ordering::Relaxed);
                    let sender: Option<Uuid> =
                        data.sender_id.as_deref().and_then(|id| id.parse().ok());
                    if sender != Some(self.me) {
                        let latency = (received.as_micros() as u64).saturating_sub(due).max(1);
                        let _ = self.result.latencies.record(latency.min(60_000_000));
                        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some("ack") => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(k) = frame.reference.as_ref().and_then(Value::as_u64) {
                    let index = (k as usize) % self.per_conversation.len().max(1);
                    self.per_conversation[index].fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("error") => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                if self.result.errors.len() < 5 {
                    self.result.errors.push(text.to_owned());
                }
            }
            Some("resumed") if frame.recovered == Some(false) => {
                self.result.unrecovered += 1;
            }
            _ => {}
        }
        cursor
    }

    async fn read(
        mut self,
        mut stream: futures::stream::SplitStream<crate::setup::Socket>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<ReaderResult> {
        loop {
            let frame = tokio::select! {
                frame = stream.next() => frame,
                _ = stop.changed() => break,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    self.take(&text);
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            }
        }
        Ok(self.result)
    }

    /// Reads, and every so often (at random around `resume.every`) drops the connection and
    /// reconnects with `?cursor=` the last cursor seen, as a phone changing networks does.
    async fn read_resuming(
        mut self,
        socket: crate::setup::Socket,
        resume: Resume,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<ReaderResult> {
        let mut socket = Some(socket);
        let mut cursor = resume.cursor.clone();
        let mut random = resume.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        loop {
            // xorshift: a pause between 0.5 and 1.5 times `every`.
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let factor = 0.5 + (random % 1000) as f64 / 1000.0;
            let drop_at = tokio::time::Instant::now() + resume.every.mul_f64(factor);
            let Some(current) = socket.as_mut() else {
                break;
            };
            loop {
                let frame = tokio::select! {
                    frame = current.next() => frame,
                    _ = stop.changed() => return Ok(self.result),
                    _ = tokio::time::sleep_until(drop_at) => break,
                };
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(seen) = self.take(&text) {
                            cursor = Some(seen);
                        }
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                }
            }
            // Dropped without a goodbye, then back with the cursor.
            drop(socket.take());
            self.result.reconnects += 1;
            let query = cursor
                .as_deref()
                .map(|cursor| format!("?cursor={cursor}"))
                .unwrap_or_default();
            socket = Some(
                crate::setup::open_socket(&resume.api, &resume.token, &query)
                    .await?
                    .0,
            );
        }
        Ok(self.result)
    }
}

pub struct Outcome {
    pub offered: u64,
    pub accepted: u64,
    pub refused: u64,
    pub overloaded: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub send_seconds: f64,
    pub receive_seconds: f64,
    pub latencies: Histogram<u64>,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub reconnects: u64,
    pub unrecovered: u64,
    pub error_samples: Vec<String>,
}

pub async fn run(api: &Api, world: &World, load: &Load) -> anyhow::Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let start = Instant::now() + Duration::from_millis(200);
    let sockets: Vec<_> = world
        .sockets
        .lock()
        .map_err(|_| anyhow::anyhow!("socket list poisoned"))?
        .drain(..)
        .collect();
    let conversations = &world.conversations;
    // Messages committed per conversation: on a WebSocket ack (its `ref` is `k`, and message
    // `k` goes to conversation `k mod C`), or on a REST 201.
    let accepted_per_conversation: Arc<Vec<AtomicU64>> =
        Arc::new(conversations.iter().map(|_| AtomicU64::new(0)).collect());
    let mut writers = Vec::with_capacity(sockets.len());
    let mut readers = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.into_iter().enumerate() {
        let Some(socket) = socket else {
            anyhow::bail!("user {index} has no socket");
        };
        let me = world.users[index].id;
        let reader = Reader {
            me,
            start,
            counters: counters.clone(),
            per_conversation: accepted_per_conversation.clone(),
            result: ReaderResult {
                latencies: histogram()?,
                seen: HashMap::new(),
                errors: Vec::new(),
                unrecovered: 0,
                reconnects: 0,
            },
        };
        if let Some(every) = load.reconnect_every() {
            // Sends go over REST in this mode; the socket only reads, and drops and resumes.
            let (writer, _) = mpsc::unbounded_channel::<String>();
            writers.push(writer);
            let resume = Resume {
                api: api.clone(),
                token: world.users[index].token.clone(),
                every,
                seed: index as u64,
                cursor: world.cursors.get(index).cloned().flatten(),
            };
            readers.push(tokio::spawn(reader.read_resuming(
                socket,
                resume,
                stopped.clone(),
            )));
            continue;
        }
        let (mut sink, stream) = socket.split();
        let (writer, mut outbox) = mpsc::unbounded_channel::<String>();
        let mut writer_stop = stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    text = outbox.recv() => match text {
                        Some(text) => if sink.send(Message::Text(text.into())).await.is_err() { break },
                        None => break,
                    },
                    _ = writer_stop.changed() => break,
                }
            }
            let _ = sink.close().await;
        });
        writers.push(writer);
        readers.push(tokio::spawn(reader.read(stream, stopped.clone())));
    }

    // The open-loop sender.
    let total = (load.rate * load.duration().as_secs_f64()).round() as u64;
    let in_flight = Arc::new(Semaphore::new(load.max_in_flight.max(1)));
    let mut rest_sends = tokio::task::JoinSet::new();
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / load.rate);
        tokio::time::sleep_until(due.into()).await;
        let index = (k as usize) % conversations.len();
        let conversation = &conversations[index];
        let round = (k as usize) / conversations.len();
        // Direct pairs take turns; group senders go round the members.
        let sender = conversation.members[(round * 7919) % conversation.members.len()];
        let due_us = due.duration_since(start).as_micros();
        let body = format!("lg:{due_us}:{k}");
        counters.sent.fetch_add(1, Ordering::Relaxed);
        match load.transport {
            Transport::Ws => {
                let outstanding = counters.sent.load(Ordering::Relaxed)
                    - counters.accepted.load(Ordering::Relaxed)
                    - counters.refused.load(Ordering::Relaxed);
                if outstanding as usize > load.max_in_flight {
                    counters.overloaded.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let frame = json!({"type": "message.send", "ref": k, "conversation_id": conversation.id,
                                   "client_message_id": format!("lg-{k}"), "body": body});
                let _ = writers[sender].send(frame.to_string());
            }
            Transport::Rest => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    counters.overloaded.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let api = api.clone();
                let token = world.users[sender].token.clone();
                let path = format!("/api/v1/conversations/{}/messages", conversation.id);
                let counters = counters.clone();
                let per_conversation = accepted_per_conversation.clone();
                rest_sends.spawn(async move {
                    let _permit = permit;
                    let sent = api
                        .post(
                            &path,
                            Some(&token),
                            &json!({"client_message_id": format!("lg-{k}"), "body": body}),
                        )
                        .await;
                    match sent {
                        Ok(_) => {
                            counters.accepted.fetch_add(1, Ordering::Relaxed);
                            per_conversation[index].fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Err(error) => {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            Some(error.to_string())
                        }
                    }
                });
            }
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    let mut error_samples = Vec::new();
    while let Some(done) = rest_sends.join_next().await {
        if let Ok(Some(error)) = done
            && error_samples.len() < 5
        {
            error_samples.push(error);
        }
    }

    // Drain: wait for every accepted message to reach every other member, or the limit.
    let drain_until = Instant::now() + load.drain();
    let expected = || {
        conversations
            .iter()
            .zip(accepted_per_conversation.iter())
            .map(|(conversation, count)| {
                count.load(Ordering::Relaxed) * (conversation.members.len() as u64 - 1)
            })
            .sum::<u64>()
    };
    // Every member's sockets, the sender's included, see each accepted message once.
    let expected_seen = || {
        conversations
            .iter()
            .zip(accepted_per_conversation.iter())
            .map(|(conversation, count)| {
                count.load(Ordering::Relaxed) * conversation.members.len() as u64
            })
            .sum::<u64>()
    };
    while Instant::now() < drain_until && counters.seen.load(Ordering::Relaxed) < expected_seen() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let receive_seconds = start.elapsed().as_secs_f64();
    let _ = stop.send(true);

    let mut latencies = histogram()?;
    let mut lost = 0;
    let mut duplicated = 0;
    let mut out_of_order = 0;
    let committed: HashMap<Uuid, u64> = conversations
        .iter()
        .zip(accepted_per_conversation.iter())
        .map(|(conversation, count)| (conversation.id, count.load(Ordering::Relaxed)))
        .collect();
    let mut results = Vec::with_capacity(readers.len());
    let mut reconnects = 0;
    let mut unrecovered = 0;
    for reader in readers {
        let result = reader.await??;
        reconnects += result.reconnects;
        unrecovered += result.unrecovered;
        latencies.add(&result.latencies)?;
        for seen in result.seen.values() {
            duplicated += seen.duplicated;
            out_of_order += seen.out_of_order;
        }
        for error in &result.errors {
            if error_samples.len() < 5 {
                error_samples.push(error.clone());
            }
        }
        results.push(result);
    }
    // Every member (the sender's own sockets included) should have seen every committed
    // message of each of their conversations.
    for conversation in conversations {
        let committed = committed.get(&conversation.id).copied().unwrap_or(0);
        for member in &conversation.members {
            let seen = results[*member]
                .seen
                .get(&conversation.id)
                .map_or(0, |seen| seen.seqs.len() as u64);
            lost += committed.saturating_sub(seen);
        }
    }
    Ok(Outcome {
        offered: total,
        accepted: counters.accepted.load(Ordering::Relaxed),
        refused: counters.refused.load(Ordering::Relaxed),
        overloaded: counters.overloaded.load(Ordering::Relaxed),
        delivered: counters.delivered.load(Ordering::Relaxed),
        expected_deliveries: expected(),
        send_seconds,
        receive_seconds,
        latencies,
        lost,
        duplicated,
        out_of_order,
        reconnects,
        unrecovered,
        error_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::Frame;
    use serde_json::json;

    #[test]
    fn a_frame_yields_the_fields_readers_use() {
        let event = json!({
            "type": "event", "event": "message.created", "cursor": "17-0", "seq": 3,
            "conversation_id": "c",
            "data": {"body": "lg:42:7 \"quoted\"", "conversation_id": "0193", "seq": 3,
                     "sender_id": "01a2", "attachments": [], "reply_to_id": null}
        })
        .to_string();
        let frame = Frame::parse(&event);
        assert_eq!(frame.kind.as_deref(), Some("event"));
        assert_eq!(frame.cursor.as_deref(), Some("17-0"));
        let data = frame.data.unwrap_or_default();
        assert_eq!(data.body.as_deref(), Some("lg:42:7 \"quoted\""));
        assert_eq!(data.seq, Some(3));
        assert_eq!(data.sender_id.as_deref(), Some("01a2"));

        let ack = json!({"type": "ack", "ref": 12, "result": {"seq": 1, "body": "x"}}).to_string();
        let frame = Frame::parse(&ack);
        assert_eq!(frame.kind.as_deref(), Some("ack"));
        assert_eq!(frame.reference.and_then(|r| r.as_u64()), Some(12));

        // Data of another shape: the frame is still read, without it.
        let other = json!({"type": "resumed", "cursor": "9-1", "recovered": false,
                           "data": {"seq": "not a number"}})
        .to_string();
        let frame = Frame::parse(&other);
        assert_eq!(frame.kind.as_deref(), Some("resumed"));
        assert_eq!(frame.cursor.as_deref(), Some("9-1"));
        assert_eq!(frame.recovered, Some(false));
    }
}
