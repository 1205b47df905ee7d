//! The connections of this node, by user. Each connection has a bounded outbound queue; a
//! connection whose queue is full is kicked (closed with 4008) instead of growing memory or
//! silently missing frames.

use axum::extract::ws::Utf8Bytes;
use futures::task::AtomicWaker;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;
use web::socket::Writer;

use crate::direct::Direct;

/// Frames a connection may have waiting before it counts as too slow (by default).
pub const OUTBOUND_QUEUE: usize = 1024;

/// A per-user inbox position (a Redis stream id, `ms-seq`), ordered as the stream orders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub u64, pub u64);

impl Cursor {
    pub const ZERO: Self = Self(0, 0);

    pub fn parse(text: &str) -> Option<Self> {
        let (millis, sequence) = text.split_once('-').unwrap_or((text, "0"));
        Some(Self(millis.parse().ok()?, sequence.parse().ok()?))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}-{}", self.0, self.1)
    }
}

/// One frame on its way to a connection. The text is shared by every connection it goes to
/// (a clone is a reference count), and is written to each socket as it is.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Set on `event` frames: lets a resuming connection drop what its replay already sent.
    pub cursor: Option<Cursor>,
    pub text: Utf8Bytes,
}

impl Outbound {
    /// A frame as one user's connections get it: an `event` frame's `text` with that user's
    /// inbox `cursor` spliced in; any other frame as it is.
    pub fn for_user(text: &Utf8Bytes, cursor: Option<&str>) -> Self {
        match cursor {
            Some(cursor) => Self {
                cursor: Cursor::parse(cursor),
                text: Utf8Bytes::from(crate::push::with_cursor(text.as_str(), cursor)),
            },
            None => Self {
                cursor: None,
                text: text.clone(),
            },
        }
    }
}

/// Close codes a connection can be kicked with.
pub const TOO_SLOW: u16 = 4008;
pub const REVOKED: u16 = 4001;

struct Entry {
    connection_id: Uuid,
    token_id: Uuid,
    session_id: Uuid,
    /// Frames go through the queue behind an `Arc`: a queue slot is then 8 bytes, and every
    /// idle connection holds a first block of 32 slots (1.75 KiB with the frame in the slot).
    sender: mpsc::Sender<Arc<Outbound>>,
    /// Writes a frame straight into the socket when it can go at once (ADR 0022).
    direct: Arc<Direct>,
    kick: Arc<Kick>,
    /// When the node's upkeep next refreshes this connection (see [`crate::upkeep`]).
    upkeep_due: Instant,
}

/// A connection the upkeep refreshes: its user-map entry, and its token checked against the
/// revoked set.
#[derive(Clone, Copy, Debug)]
pub struct Upkeep {
    pub user_id: Uuid,
    pub connection_id: Uuid,
    pub token_id: Uuid,
    pub session_id: Uuid,
}

/// Tells a connection to close, and with which code: 4008 (it fell behind) or 4001 (its
/// token was revoked). The first reason stands. Lock-free: the connection's task polls it at
/// every frame it sends (a `CancellationToken` took a lock there, and joined and left a
/// waiter list at each poll).
#[derive(Debug, Default)]
pub struct Kick {
    code: AtomicU16,
    waker: AtomicWaker,
}

impl Kick {
    fn kick(&self, code: u16) {
        if self
            .code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.code.load(Ordering::SeqCst) != 0
    }

    /// Ready once the connection is kicked; may be polled again after that.
    pub fn poll_kicked(&self, context: &mut Context<'_>) -> Poll<()> {
        if self.is_kicked() {
            return Poll::Ready(());
        }
        self.waker.register(context.waker());
        // A kick between the check and the registration woke nobody: look again.
        if self.is_kicked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once the connection is kicked.
    pub fn kicked(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|context| self.poll_kicked(context))
    }

    /// The close code: the kick's, or 4008 when not kicked.
    pub fn close_code(&self) -> u16 {
        match self.code.load(Ordering::SeqCst) {
            0 => TOO_SLOW,
            code => code,
        }
    }
}

/// A registered connection's ends.
pub struct Registration {
    pub connection_id: Uuid,
    pub outbound: mpsc::Receiver<Arc<Outbound>>,
    /// The fan-out's way straight into the socket, which the task opens once `ready` is out.
    pub direct: Arc<Direct>,
    /// Set when the connection must close, with its code.
    pub kick: Arc<Kick>,
}

impl Registration {
    pub fn close_code(&self) -> u16 {
        self.kick.close_code()
    }
}

pub struct Hub {
    connections: Mutex<HashMap<Uuid, Vec<Entry>>>,
    queue_capacity: usize,
    /// The heartbeat period: a connection pings after this long without sending anything,
    /// and its upkeep is due this long after it registered (and after each upkeep).
    heartbeat: Duration,
    /// How long a connection must have been sent nothing for a frame to go straight into its
    /// socket ([`crate::direct`]).
    direct_quiet: Duration,
}

impl Default for Hub {
    fn default() -> Self {
        Self::with_queue_capacity(OUTBOUND_QUEUE)
    }
}

impl Hub {
    pub fn with_queue_capacity(queue_capacity: usize) -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            queue_capacity: queue_capacity.max(1),
            heartbeat: crate::HEARTBEAT,
            direct_quiet: crate::direct::QUIET,
        }
    }

    /// A hub whose connections have this heartbeat period (tests use a short one, or a long
    /// one to run the upkeep by hand).
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// A hub whose fan-out writes straight into a connection's socket only once it was sent
    /// nothing for `quiet` (zero: whenever the socket takes the frame).
    pub fn with_direct_quiet(mut self, quiet: Duration) -> Self {
        self.direct_quiet = quiet;
        self
    }

    /// The heartbeat period of this node's connections.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Registers a connection of `user_id` opened with the token `token_id` of session
    /// `session_id` (so a revocation of either closes it). With its socket's `writer`, frames
    /// may go straight into the socket.
    pub fn register(
        &self,
        user_id: Uuid,
        token_id: Uuid,
        session_id: Uuid,
        writer: Option<Arc<Writer>>,
    ) -> Registration {
        let (sender, outbound) = mpsc::channel(self.queue_capacity);
        let connection_id = Uuid::now_v7();
        let kick = Arc::new(Kick::default());
        let direct = Arc::new(Direct::new(writer, self.direct_quiet));
        let entry = Entry {
            connection_id,
            token_id,
            session_id,
            sender,
            direct: direct.clone(),
            kick: kick.clone(),
            // The connection adds its own entry to the user map as it opens.
            upkeep_due: Instant::now() + self.heartbeat,
        };
        if let Ok(mut connections) = self.connections.lock() {
            connections.entry(user_id).or_default().push(entry);
        }
        metrics::gauge!("chat_ws_connections").increment(1.0);
        Registration {
            connection_id,
            outbound,
            direct,
            kick,
        }
    }

    pub fn unregister(&self, user_id: Uuid, connection_id: Uuid) {
        if let Ok(mut connections) = self.connections.lock()
            && let Some(entries) = connections.get_mut(&user_id)
        {
            entries.retain(|entry| entry.connection_id != connection_id);
            if entries.is_empty() {
                connections.remove(&user_id);
            }
        }
        metrics::gauge!("chat_ws_connections").decrement(1.0);
    }

    /// Sends a frame to every connection of `user_id` here: straight into the socket of an
    /// idle one, through the queue otherwise. A full queue kicks that connection; the others
    /// still get the frame. `frame` is only built when the user has a connection here.
    pub fn deliver(&self, user_id: Uuid, frame: impl FnOnce() -> Outbound) {
        let Ok(connections) = self.connections.lock() else {
            return;
        };
        let Some(entries) = connections.get(&user_id) else {
            return;
        };
        let frame = Arc::new(frame());
        for entry in entries {
            if entry.direct.deliver(&frame, &entry.sender).is_err() {
                entry.kick.kick(TOO_SLOW);
            }
        }
    }

    /// Closes (4001) every connection opened with token `token_id` or in session `session_id`.
    pub fn revoke(&self, token_id: Option<Uuid>, session_id: Option<Uuid>) {
        let Ok(connections) = self.connections.lock() else {
            return;
        };
        for entry in connections.values().flatten() {
            if Some(entry.token_id) == token_id || Some(entry.session_id) == session_id {
                entry.kick.kick(REVOKED);
            }
        }
    }

    /// Up to `limit` connections whose upkeep is due at `now`; each is then due again a period
    /// later. What is over the limit stays due for the next pass, which spreads connections
    /// opened together over several passes.
    pub fn take_due(&self, now: Instant, limit: usize) -> Vec<Upkeep> {
        let Ok(mut connections) = self.connections.lock() else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (user_id, entries) in connections.iter_mut() {
            for entry in entries.iter_mut() {
                if due.len() >= limit {
                    return due;
                }
                if entry.upkeep_due <= now {
                    entry.upkeep_due = now + self.heartbeat;
                    due.push(Upkeep {
                        user_id: *user_id,
                        connection_id: entry.connection_id,
                        token_id: entry.token_id,
                        session_id: entry.session_id,
                    });
                }
            }
        }
        due
    }

    /// Closes one connection with `code`.
    pub fn kick_connection(&self, user_id: Uuid, connection_id: Uuid, code: u16) {
        let Ok(connections) = self.connections.lock() else {
            return;
        };
        for entry in connections.get(&user_id).into_iter().flatten() {
            if entry.connection_id == connection_id {
                entry.kick.kick(code);
            }
        }
    }

    /// How many connections this node holds.
    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .map(|connections| connections.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Whether this connection is still registered here.
    pub fn is_registered(&self, user_id: Uuid, connection_id: Uuid) -> bool {
        self.connections
            .lock()
            .map(|connections| {
                connections.get(&user_id).is_some_and(|entries| {
                    entries
                        .iter()
                        .any(|entry| entry.connection_id == connection_id)
                })
            })
            .unwrap_or(false)
    }

    /// Whether `user_id` has a connection on this node.
    pub fn is_connected(&self, user_id: Uuid) -> bool {
        self.connections
            .lock()
            .map(|connections| connections.contains_key(&user_id))
            .unwrap_or(false)
    }
}
