//! End-to-end tests against real Postgres, Redis and RabbitMQ. Each test owns a database and
//! a namespace, so they run in parallel.

mod accounts;
mod audit;
mod auth;
mod calls;
mod conversations;
mod helpers;
mod media;
mod operations;
mod proxy;
mod spine;
mod webrtc_peer;
mod websocket;
