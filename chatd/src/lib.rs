//! `chatd`: the one binary. `main` parses the command line and calls [`run`]; everything else
//! is here so tests can start any role in-process on port 0.
//!
//! - [`config`]: the command line and `Settings`.
//! - [`app`]: startup (connections, migrations, secrets), the router of each role, background
//!   loops, graceful shutdown.
//! - [`operator`]: `chatd admin` and `chatd audit export`.
//! - [`replay`]: `chatd replay` and `chatd replay --verify`.
//! - [`ops`]: health, readiness, metrics, OpenAPI and the API reference page.

pub mod app;
pub mod config;
pub mod operator;
pub mod ops;
pub mod replay;

pub use app::{App, Roles};
pub use config::{Cli, Command, Settings};
