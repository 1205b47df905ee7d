//! The `rebuild` scenario: seeds N messages over REST, waits until the read side holds them,
//! then times `chatd replay` (every read model rebuilt from the event log and switched in)
//! and checks, through the query API, that every seeded conversation's history is whole
//! after the switch.
//!
//! Seeding and the check go through the public API only; the replay itself is a subprocess
//! (`<chatd> replay` with `DATABASE_URL` set), timed by the wall clock from spawn to exit. The
//! target is 100,000 events/s for the rebuild. The server must allow the sends
//! (`CHAT_SENDS_PER_10_SECONDS` raised, as in `scripts/bench.sh`): a refused send counts as a
//! seeding error.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use uuid::Uuid;

use crate::setup::{self, Api, User};

/// Events per second the rebuild should reach.
pub const TARGET_EVENTS_PER_SECOND: f64 = 100_000.0;

/// History is read in pages of the largest size the query API serves.
const PAGE: usize = 200;

#[derive(clap::Args, Debug, Clone)]
pub struct Rebuild {
    /// Messages to seed (each is one event in the log).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Group conversations the messages are spread over (at most 10,000).
    #[arg(long, default_value_t = 50)]
    pub conversations: usize,
    /// Members per conversation, the creator included (2 to `--users`).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Accounts registered for the run; the conversations share them (2 to 1,000).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Sends in flight at once while seeding.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds seeding may last (at most 600): sends not started by then are not made.
    #[arg(long, default_value_t = 300.0)]
    pub seed_seconds: f64,
    /// Seconds to wait for the read side to hold every seeded message (at most 600).
    #[arg(long, default_value_t = 120.0)]
    pub catch_up_seconds: f64,
    /// Seconds `chatd replay` may run before it is killed (at most 3,600).
    #[arg(long, default_value_t = 600.0)]
    pub replay_seconds: f64,
    /// The chatd binary that runs `replay`. Default: `./target/release/chatd` if it exists,
    /// otherwise `chatd` on the PATH.
    #[arg(long)]
    pub chatd: Option<PathBuf>,
    /// The server's database: what `chatd replay` rebuilds (given to it as `DATABASE_URL`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Accounts registered at once during setup (password hashing is the slow part).
    #[arg(long, default_value_t = 4)]
    pub setup_concurrency: usize,
}

impl Rebuild {
    fn seed_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.seed_seconds.clamp(1.0, 600.0))
    }

    fn catch_up_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.catch_up_seconds.clamp(1.0, 600.0))
    }

    fn replay_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.replay_seconds.clamp(1.0, 3600.0))
    }

    fn chatd_binary(&self) -> PathBuf {
        self.chatd.clone().unwrap_or_else(|| {
            let built = PathBuf::from("./target/release/chatd");
            if built.is_file() {
                built
            } else {
                PathBuf::from("chatd")
            }
        })
    }
}

#[derive(Serialize)]
pub struct RebuildReport {
    pub scenario: &'static str,
    pub users: usize,
    pub conversations: usize,
    pub members_per_conversation: usize,
    /// Messages asked for.
    pub offered: u64,
    /// Messages the server accepted (201).
    pub seeded: u64,
    /// Sends answered with an error or not answered.
    pub seed_errors: u64,
    /// Sends not started before the seeding deadline.
    pub seed_not_sent: u64,
    pub seed_seconds: f64,
    /// Messages accepted per second of seeding.
    pub seed_rate: f64,
    /// Whether the read side held every seeded message before the replay began.
    pub caught_up: bool,
    pub catch_up_seconds: f64,
    /// Events in the log as `chatd replay` counted them (the seeded messages, the accounts,
    /// the conversations, and whatever else the database holds).
    pub replay_events: u64,
    /// Wall clock from spawning `chatd replay` to its exit.
    pub replay_seconds: f64,
    pub replay_events_per_second: f64,
    /// The time and rate `chatd replay` itself reported (its last stderr line), when it
    /// printed them: its clock starts after the scratch tables are made.
    pub replay_reported_seconds: Option<f64>,
    pub replay_reported_events_per_second: Option<f64>,
    pub target_events_per_second: f64,
    pub target_met: bool,
    /// Seeded messages found in the history after the switch.
    pub checked_messages: u64,
    /// Seeded messages missing from the history after the switch.
    pub lost: u64,
    /// `seq`s that came back more than once.
    pub duplicated: u64,
    /// Messages that came back below a `seq` already seen.
    pub out_of_order: u64,
    /// Seeded `seq`s that came back with another id or body.
    pub changed: u64,
    /// The newest `seq` the history showed is below the last seeded one (conversations).
    pub short_conversations: u64,
    pub check_passed: bool,
    /// Milliseconds from a send made after the switch until the history showed it: the
    /// projector writes into the switched-in tables. `None`: not seen within 10 s.
    pub write_after_switch_ms: Option<f64>,
    pub error_samples: Vec<String>,
}

impl RebuildReport {
    pub fn table(&self) -> String {
        let verdict = |passed: bool| if passed { "met" } else { "not met" };
        let mut lines = vec![
            format!(
                "scenario rebuild: {} messages over {} conversations of {} ({} users); read side caught up: {} after {:.1} s",
                self.offered,
                self.conversations,
                self.members_per_conversation,
                self.users,
                if self.caught_up { "yes" } else { "no" },
                self.catch_up_seconds
            ),
            "| seeded | seed errors | not sent | seed s | seed msg/s | events replayed | replay s | replay events/s | target events/s | target | lost | duplicated | out of order | changed | check |".to_owned(),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
            format!(
                "| {} | {} | {} | {:.1} | {:.0} | {} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                self.seeded,
                self.seed_errors,
                self.seed_not_sent,
                self.seed_seconds,
                self.seed_rate,
                self.replay_events,
                self.replay_seconds,
                self.replay_events_per_second,
                self.target_events_per_second,
                verdict(self.target_met),
                self.lost,
                self.duplicated,
                self.out_of_order,
                self.changed,
                if self.check_passed { "passed" } else { "failed" }
            ),
        ];
        if let (Some(seconds), Some(rate)) = (
            self.replay_reported_seconds,
            self.replay_reported_events_per_second,
        ) {
            lines.push(format!(
                "chatd replay's own figure: {seconds:.2} s ({rate:.0} events/s)"
            ));
        }
        lines.push(match self.write_after_switch_ms {
            Some(ms) => {
                format!("a message sent after the switch showed in the history after {ms:.0} ms")
            }
            None => {
                "a message sent after the switch did not show in the history within 10 s".to_owned()
            }
        });
        for sample in &self.error_samples {
            lines.push(format!("error sample: {sample}"));
        }
        lines.join("\n")
    }
}

/// A group and what was seeded into it.
struct Seeded {
    id: Uuid,
    /// Indexes into the users.
    members: Vec<usize>,
    /// `seq` → (message id, body) of every accepted send.
    messages: HashMap<i64, (String, String)>,
}

impl Seeded {
    fn last_seq(&self) -> i64 {
        self.messages.keys().copied().max().unwrap_or(0)
    }
}

pub async fn run(api: &Api, rebuild: &Rebuild) -> anyhow::Result<RebuildReport> {
    let chatd = rebuild.chatd_binary();
    let user_count = rebuild.users.clamp(2, 1000);
    let members = rebuild.members.clamp(2, user_count);
    let conversation_count = rebuild.conversations.clamp(1, 10_000);
    let users = setup::register(api, user_count, rebuild.setup_concurrency).await?;
    let mut conversations = create_groups(
        api,
        &users,
        conversation_count,
        members,
        rebuild.setup_concurrency,
    )
    .await?;
    eprintln!(
        "loadgen: {user_count} users in {conversation_count} groups of {members}; seeding {} messages, {} at a time",
        rebuild.events, rebuild.concurrency
    );

    let seeding = seed(api, &users, &mut conversations, rebuild).await;
    eprintln!(
        "loadgen: {} messages accepted in {:.1} s ({:.0} msg/s), {} errors",
        seeding.accepted,
        seeding.seconds,
        seeding.accepted as f64 / seeding.seconds.max(0.001),
        seeding.errors
    );

    let catch_up_started = Instant::now();
    let caught_up =
        wait_for_read_side(api, &users, &conversations, rebuild.catch_up_deadline()).await?;
    let catch_up_seconds = catch_up_started.elapsed().as_secs_f64();
    if !caught_up {
        eprintln!(
            "loadgen: the read side had not caught up after {catch_up_seconds:.1} s; replaying anyway"
        );
    }

    eprintln!("loadgen: running {} replay", chatd.display());
    let replay = replay(&chatd, &rebuild.database_url, rebuild.replay_deadline()).await?;
    if replay.events < seeding.accepted {
        bail!(
            "chatd replay rebuilt from {} events, fewer than the {} messages seeded: does --database-url name the database of the server at --url?",
            replay.events,
            seeding.accepted
        );
    }

    let check = check_histories(api, &users, &conversations).await?;
    let write_after_switch_ms = write_after_switch(api, &users, &conversations).await?;

    let replay_events_per_second = replay.events as f64 / replay.seconds.max(0.001);
    let check_passed = check.lost == 0
        && check.duplicated == 0
        && check.out_of_order == 0
        && check.changed == 0
        && check.short_conversations == 0;
    Ok(RebuildReport {
        scenario: "rebuild",
        users: users.len(),
        conversations: conversations.len(),
        members_per_conversation: members,
        offered: rebuild.events as u64,
        seeded: seeding.accepted,
        seed_errors: seeding.errors,
        seed_not_sent: seeding.not_sent,
        seed_seconds: seeding.seconds,
        seed_rate: seeding.accepted as f64 / seeding.seconds.max(0.001),
        caught_up,
        catch_up_seconds,
        replay_events: replay.events,
        replay_seconds: replay.seconds,
        replay_events_per_second,
        replay_reported_seconds: replay.reported.map(|(seconds, _)| seconds),
        replay_reported_events_per_second: replay.reported.map(|(_, rate)| rate),
        target_events_per_second: TARGET_EVENTS_PER_SECOND,
        target_met: replay_events_per_second >= TARGET_EVENTS_PER_SECOND,
        checked_messages: check.found,
        lost: check.lost,
        duplicated: check.duplicated,
        out_of_order: check.out_of_order,
        changed: check.changed,
        short_conversations: check.short_conversations,
        check_passed,
        write_after_switch_ms,
        error_samples: seeding.error_samples,
    })
}

/// `count` groups of `members`, each a window of consecutive users (wrapping round), so the
/// accounts are shared and registration stays short.
async fn create_groups(
    api: &Api,
    users: &[User],
    count: usize,
    members: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Seeded>> {
    let groups: Vec<anyhow::Result<Seeded>> = futures::stream::iter(0..count)
        .map(|group| {
            let indexes: Vec<usize> = (0..members)
                .map(|offset| (group * members + offset) % users.len())
                .collect();
            let member_ids: Vec<Uuid> = indexes[1..].iter().map(|index| users[*index].id).collect();
            let token = users[indexes[0]].token.clone();
            async move {
                let conversation = api
                    .post(
                        "/api/v1/conversations",
                        Some(&token),
                        &json!({"type": "group", "title": format!("rebuild {group}"), "member_ids": member_ids}),
                    )
                    .await?;
                let id: Uuid = conversation["id"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .context("create conversation answered without an id")?;
                anyhow::Ok(Seeded {
                    id,
                    members: indexes,
                    messages: HashMap::new(),
                })
            }
        })
        .buffered(concurrency.max(1) * 4)
        .collect()
        .await;
    groups.into_iter().collect()
}

struct Seeding {
    accepted: u64,
    errors: u64,
    not_sent: u64,
    seconds: f64,
    error_samples: Vec<String>,
}

/// Sends `rebuild.events` messages, `rebuild.concurrency` at a time: message `k` goes to
/// group `k mod K`, from its members in turn. Records each accepted message's `seq`, id and
/// body in its group.
async fn seed(
    api: &Api,
    users: &[User],
    conversations: &mut [Seeded],
    rebuild: &Rebuild,
) -> Seeding {
    let started = Instant::now();
    let deadline = started + rebuild.seed_deadline();
    let count = conversations.len();
    let targets: Vec<(Uuid, Vec<usize>)> = conversations
        .iter()
        .map(|conversation| (conversation.id, conversation.members.clone()))
        .collect();
    let targets = &targets;
    let mut outcomes = futures::stream::iter(0..rebuild.events)
        // No send starts after the deadline; one already started ends within the client's
        // 30 s timeout.
        .take_while(|_| futures::future::ready(Instant::now() < deadline))
        .map(|k| async move {
            let index = k % count;
            let (conversation_id, members) = &targets[index];
            let sender = members[(k / count) % members.len()];
            let body = format!("rb:{k}");
            let sent = api
                .post(
                    &format!("/api/v1/conversations/{conversation_id}/messages"),
                    Some(&users[sender].token),
                    &json!({"client_message_id": format!("rb-{k}"), "body": body}),
                )
                .await
                .and_then(|message| {
                    let seq = message["seq"]
                        .as_i64()
                        .context("the send answered without a seq")?;
                    let id = message["id"].as_str().unwrap_or_default().to_owned();
                    Ok((seq, id))
                });
            (index, body, sent)
        })
        .buffer_unordered(rebuild.concurrency.clamp(1, 10_000));
    let mut seeding = Seeding {
        accepted: 0,
        errors: 0,
        not_sent: 0,
        seconds: 0.0,
        error_samples: Vec::new(),
    };
    let mut started_sends = 0u64;
    while let Some((index, body, sent)) = outcomes.next().await {
        started_sends += 1;
        match sent {
            Ok((seq, id)) => {
                seeding.accepted += 1;
                conversations[index].messages.insert(seq, (id, body));
            }
            Err(error) => {
                seeding.errors += 1;
                if seeding.error_samples.len() < 5 {
                    seeding.error_samples.push(format!("{error:#}"));
                }
            }
        }
    }
    seeding.seconds = started.elapsed().as_secs_f64();
    seeding.not_sent = (rebuild.events as u64).saturating_sub(started_sends);
    seeding
}

/// Polls each group's newest message until it is the last one seeded, or the time is up.
/// Returns whether every group caught up.
async fn wait_for_read_side(
    api: &Api,
    users: &[User],
    conversations: &[Seeded],
    limit: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    for conversation in conversations {
        let wanted = conversation.last_seq();
        let token = &users[conversation.members[0]].token;
        let path = format!("/api/v1/conversations/{}/messages?limit=1", conversation.id);
        loop {
            let page = api.get(&path, token).await?;
            let newest = page["items"]
                .as_array()
                .and_then(|items| items.last())
                .and_then(|message| message["seq"].as_i64())
                .unwrap_or(0);
            if newest >= wanted {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(true)
}

struct Replay {
    events: u64,
    seconds: f64,
    /// (seconds, events/s) as chatd printed them.
    reported: Option<(f64, f64)>,
}

/// Runs `<chatd> replay` with `DATABASE_URL` set, its progress (stderr) passed on to ours,
/// and times it from spawn to exit. A non-zero exit, or no exit within `limit` (the process
/// is killed then), is an error that shows the end of its stderr.
async fn replay(chatd: &Path, database_url: &str, limit: Duration) -> anyhow::Result<Replay> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(chatd)
        .arg("replay")
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {} replay", chatd.display()))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let reading_stdout = tokio::spawn(async move {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await.map(|_| text)
    });
    // The last lines are kept for the error message and for chatd's own figure.
    let reading_stderr = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut last = std::collections::VecDeque::with_capacity(20);
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("chatd replay: {line}");
            if last.len() == 20 {
                last.pop_front();
            }
            last.push_back(line);
        }
        last
    });
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.context("waiting for chatd replay")?,
        Err(_) => {
            child.kill().await.context("killing chatd replay")?;
            bail!("chatd replay did not finish within {} s", limit.as_secs());
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let stdout = reading_stdout.await??;
    let stderr: Vec<String> = reading_stderr.await?.into_iter().collect();
    if !status.success() {
        bail!("chatd replay exited with {status}:\n{}", stderr.join("\n"));
    }
    let events = parse_rebuilt(&stdout).with_context(|| {
        format!("chatd replay printed no `read models rebuilt from N events` line: {stdout:?}")
    })?;
    let reported = stderr.iter().rev().find_map(|line| parse_reported(line));
    Ok(Replay {
        events,
        seconds,
        reported,
    })
}

/// N in `read models rebuilt from N events and switched`.
fn parse_rebuilt(stdout: &str) -> Option<u64> {
    stdout.lines().find_map(|line| {
        line.trim()
            .strip_prefix("read models rebuilt from ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// (S, R) in `replayed N events in S s (R events/s)`.
fn parse_reported(line: &str) -> Option<(f64, f64)> {
    let (_, rest) = line
        .trim()
        .strip_prefix("replayed ")?
        .split_once(" events in ")?;
    let (seconds, rate) = rest.split_once(" s (")?;
    let rate = rate.strip_suffix(" events/s)")?;
    Some((seconds.parse().ok()?, rate.parse().ok()?))
}

#[derive(Default)]
struct Check {
    found: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    changed: u64,
    short_conversations: u64,
}

/// Reads every group's whole history, oldest first, and compares it with what was seeded.
/// Messages the loadgen did not send (the group's system messages) are ordered and counted
/// for duplicates too, but need not match anything.
async fn check_histories(
    api: &Api,
    users: &[User],
    conversations: &[Seeded],
) -> anyhow::Result<Check> {
    let mut check = Check::default();
    for conversation in conversations {
        let token = &users[conversation.members[0]].token;
        let mut seen = HashSet::new();
        let mut after = 0i64;
        let mut newest = 0i64;
        // Bounded: the pages the seeded messages fill, and a few more.
        let pages = conversation.messages.len() / PAGE + 10;
        for _ in 0..pages {
            let page = api
                .get(
                    &format!(
                        "/api/v1/conversations/{}/messages?after_seq={after}&limit={PAGE}",
                        conversation.id
                    ),
                    token,
                )
                .await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            for message in &items {
                let seq = message["seq"].as_i64().unwrap_or(0);
                if !seen.insert(seq) {
                    check.duplicated += 1;
                }
                if seq < newest {
                    check.out_of_order += 1;
                }
                newest = newest.max(seq);
                if let Some((id, body)) = conversation.messages.get(&seq) {
                    if message["id"].as_str() == Some(id.as_str())
                        && message["body"].as_str() == Some(body.as_str())
                    {
                        check.found += 1;
                    } else {
                        check.changed += 1;
                    }
                }
            }
            // The next page starts after the newest seen, so a page out of order cannot make
            // the loop go round forever.
            after = newest;
            if page["has_more"] != true || items.is_empty() {
                break;
            }
        }
        let seeded_seen = conversation
            .messages
            .keys()
            .filter(|seq| seen.contains(*seq))
            .count();
        check.lost += (conversation.messages.len() - seeded_seen) as u64;
        if newest < conversation.last_seq() {
            check.short_conversations += 1;
        }
    }
    Ok(check)
}

/// Sends one message to the first group after the switch and waits up to 10 s for its
/// history to show it; returns how long that took.
async fn write_after_switch(
    api: &Api,
    users: &[User],
    conversations: &[Seeded],
) -> anyhow::Result<Option<f64>> {
    let Some(conversation) = conversations.first() else {
        return Ok(None);
    };
    let token = &users[conversation.members[0]].token;
    let sent = Instant::now();
    let message = api
        .post(
            &format!("/api/v1/conversations/{}/messages", conversation.id),
            Some(token),
            &json!({"body": "rebuild: after the switch"}),
        )
        .await?;
    let id = message["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/v1/conversations/{}/messages?limit=1", conversation.id);
    while sent.elapsed() < Duration::from_secs(10) {
        let page: Value = api.get(&path, token).await?;
        let newest = page["items"]
            .as_array()
            .and_then(|items| items.last())
            .and_then(|message| message["id"].as_str());
        if newest == Some(id.as_str()) {
            return Ok(Some(sent.elapsed().as_secs_f64() * 1000.0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_event_count_from_the_switch_line() {
        assert_eq!(
            parse_rebuilt("read models rebuilt from 20311 events and switched\n"),
            Some(20311)
        );
        assert_eq!(
            parse_rebuilt("verify: the read models equal the log (5 events)"),
            None
        );
    }

    #[test]
    fn reads_chatds_own_time_from_its_last_progress_line() {
        assert_eq!(
            parse_reported("replayed 20311 events in 0.41 s (49538 events/s)"),
            Some((0.41, 49538.0))
        );
        assert_eq!(
            parse_reported("replayed 20000/20311 events (48000 events/s, ETA 0 s)"),
            None
        );
    }
}
