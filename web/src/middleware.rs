//! Middleware every role installs: request ids (returned as `X-Request-Id`, recorded in the
//! events a request causes, attached to its log lines) and request metrics.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::{ClientAddress, RequestId};
use std::net::IpAddr;
use std::sync::Arc;

pub const REQUEST_ID: &str = "x-request-id";

/// Takes the client's `X-Request-Id` if it is short and printable, else makes one; puts it in
/// the request's extensions, the tracing span and the response.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let supplied = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty()
                && value.len() <= 128
                && value.bytes().all(|byte| byte.is_ascii_graphic())
        })
        .map(str::to_owned);
    let request_id = supplied.unwrap_or_else(|| Uuid::now_v7().to_string());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), value);
    }
    response
}

/// Counts requests and times them by method, matched route and status.
pub async fn metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("chat_http_requests_total", &labels).increment(1);
    metrics::histogram!("chat_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    if started.elapsed().as_millis() > 1000 {
        tracing::warn!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "slow request"
        );
    }
    response
}

/// Works out the client's address. Behind a trusted proxy (the edge), the address is the last
/// `X-Forwarded-For` hop that is not itself a trusted proxy; otherwise the TCP peer. A client
/// cannot forge its address by sending the header straight to us.
pub async fn client_address(
    axum::extract::State(trusted): axum::extract::State<Arc<Vec<IpAddr>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::socket::Peer>>()
        .map(|info| info.0.address.ip());
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    let address = match peer {
        Some(peer) if trusted.contains(&peer) => forwarded
            .iter()
            .rev()
            .find(|hop| !trusted.contains(hop))
            .copied()
            .or(Some(peer)),
        other => other,
    };
    let address = address.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    request.extensions_mut().insert(ClientAddress(address));
    next.run(request).await
}
