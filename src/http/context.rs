//! Per-request context: the request id (echoed or generated), the request timeout, the
//! request's metrics and one log line per request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::domain::Error;
use crate::metrics::Operation;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request, as sent back in `X-Request-Id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A caller's id is echoed when it is 1..=128 visible ASCII characters; otherwise (or
/// when absent) a new one is generated.
fn usable(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(s)
}

/// 128 random bits as 32 hex digits (the shape of a UUID without dashes), from the
/// thread's CSPRNG: no system call per request.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The outermost layer: request id, the request timeout, metrics and the access log.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(usable)
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let header = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(id.clone()));
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let operation = Operation::of(matched, req.method());
    let route = matched.unwrap_or("unmatched").to_owned();
    // Logs below `info` inside the request carry its id; the access line names it itself,
    // so no span needs to be built at the default level (it would cost a fifth of a GET).
    let span = tracing::debug_span!("request", request_id = %id);
    let start = Instant::now();
    let method = req.method().clone();
    let limit = state.limits.request_timeout;
    let mut response = match tokio::time::timeout(limit, next.run(req).instrument(span)).await {
        Ok(response) => response,
        Err(_) => ApiError(Error::RequestTimeout { limit }).into_response(),
    };
    if let Some(h) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, h);
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    state.metrics.record_request(operation, status, elapsed);
    let micros = elapsed.as_micros() as u64;
    match response.extensions().get::<super::error::Failure>() {
        Some(f) => tracing::error!(
            request_id = %id, method = %method, route = %route, status, latency_us = micros,
            error_code = f.code, detail = %f.detail, "request failed"
        ),
        None => tracing::info!(
            request_id = %id, method = %method, route = %route, status, latency_us = micros,
            "request"
        ),
    }
    response
}
