//! Read-your-writes. A command answers with `X-Consistency-Token`: the position of the stream
//! it wrote. A query that sends the token back is answered once the projector has applied that
//! position (waiting up to 5 s, then 503). Every query answers with `X-Read-Model-Lag-Ms`.

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::PgPool;
use std::time::Duration;
use store::StreamPosition;

use crate::ApiError;

pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
pub const READ_MODEL_LAG: &str = "x-read-model-lag-ms";
pub const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// The opaque header value for a stream position.
pub fn encode(position: &StreamPosition) -> String {
    let text = format!(
        "{}\n{}\n{}",
        position.aggregate_type, position.aggregate_id, position.sequence
    );
    URL_SAFE_NO_PAD.encode(text)
}

pub fn decode(token: &str) -> Option<StreamPosition> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let aggregate_type = parts.next()?.to_owned();
    let aggregate_id = parts.next()?.to_owned();
    let sequence = parts.next()?.parse().ok()?;
    Some(StreamPosition {
        aggregate_type,
        aggregate_id,
        sequence,
    })
}

/// The header pair for a command response.
pub fn header(position: &StreamPosition) -> (axum::http::HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&encode(position)).unwrap_or_else(|_| HeaderValue::from_static(""));
    (
        axum::http::HeaderName::from_static(CONSISTENCY_TOKEN),
        value,
    )
}

/// 204 No Content for a command, with its consistency token.
pub fn no_content(position: &StreamPosition) -> axum::response::Response {
    use axum::response::IntoResponse;
    (axum::http::StatusCode::NO_CONTENT, [header(position)]).into_response()
}

/// Waits for the read models to include the write named by the request's consistency token,
/// if it sent one. A token that does not parse is a 400.
pub async fn wait_for_request_token(pool: &PgPool, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONSISTENCY_TOKEN) else {
        return Ok(());
    };
    let position = value.to_str().ok().and_then(decode).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_consistency_token",
            "X-Consistency-Token is not a token this server issued",
        )
    })?;
    let applied = store::projection::wait_until_applied(pool, &position, WAIT_LIMIT).await?;
    if applied {
        Ok(())
    } else {
        Err(ApiError {
            retry_after_seconds: Some(1),
            ..ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "consistency_timeout",
                "the read models have not caught up with that write yet",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let position = StreamPosition {
            aggregate_type: "account".to_owned(),
            aggregate_id: "0192a1b2-0000-7000-8000-000000000000".to_owned(),
            sequence: 42,
        };
        assert_eq!(decode(&encode(&position)), Some(position));
        assert_eq!(decode("not a token"), None);
    }
}
