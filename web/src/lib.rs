//! The HTTP edge shared by the API roles: problem+json errors, the JSON extractor that turns
//! bad bodies into those errors, the authenticated-caller extractor, request ids, request
//! metrics, consistency tokens and the wire representations (`User`, `Session`).
//!
//! - [`error`]: `ApiError`, the one error type every handler returns.
//! - [`extract`]: `ApiJson` (strict JSON bodies) and `Caller` (a checked bearer token).
//! - [`consistency`]: `X-Consistency-Token` encoding and the read-your-writes wait.
//! - [`middleware`]: request ids, request metrics.
//! - [`dto`]: wire types and the time format of the contract.
//! - [`media_links`]: signed, time-limited links to stored images.
//! - [`socket`]: the TCP listener and connections, with a write side others may share.

pub mod consistency;
pub mod dto;
pub mod error;
pub mod extract;
pub mod media_links;
pub mod middleware;
pub mod socket;

pub use error::ApiError;
pub use extract::{ApiJson, Authenticator, Caller, ClientAddress, RequestId};
pub use media_links::MediaLinks;
