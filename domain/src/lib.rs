//! The chat domain: aggregates, commands, events, value types and their errors.
//!
//! Architecture invariant: this crate does no I/O. It knows nothing of sqlx, axum, lapin,
//! redis or tokio, so every rule in it is testable with plain given/when/then tests.
//!
//! - [`ids`]: typed identifiers (`UserId`, `SessionId`).
//! - [`account`]: the `Account` aggregate (registration, sessions, profile) and its values.
//! - [`conversation`]: the `Conversation` aggregate (members, messages, receipts).
//! - [`call`]: the `Call` aggregate (ringing, joining, leaving, media flags, the end).
//! - [`media`]: the `Media` aggregate (one uploaded image) and the `Attachment` messages carry.
//! - [`upcasting`]: older event versions into the current types.
//! - [`metadata`]: who and what caused an event (`actor_id`, `request_id`, `recorded_at`).

pub mod account;
pub mod call;
pub mod conversation;
pub mod ids;
pub mod media;
pub mod metadata;
pub mod upcasting;

pub use ids::{CallId, ConversationId, MediaId, MessageId, SessionId, UserId};
