//! Per-request context: the request id (echoed or generated), the request timeout, the
//! request's metrics and one log line per request; and, for the API's operations, the
//! check of a request signature (one layer instead of two: each layer costs a boxed
//! service per request). Each route has its own copy of the layer, which knows the route
//! (see `http::router`), so a request's operation is the route it matched.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::WebError;
use super::extract::verify_signature;
use super::routes::Route;
use super::AppState;
use crate::metrics::Operation;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request, as sent back in `X-Request-Id`: 1..=128 visible ASCII
/// characters.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only ever built from visible ASCII (see `usable` and `new_request_id`).
        self.0.to_str().unwrap_or_default()
    }
}

/// A caller's id is echoed when it is 1..=128 visible ASCII characters; otherwise (or
/// when absent) a new one is generated.
fn usable(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

/// 128 random bits as 32 hex digits (the shape of a UUID without dashes), from the
/// thread's CSPRNG: no system call per request.
pub fn new_request_id() -> RequestId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    #[allow(clippy::expect_used)] // hex digits are a valid header value
    RequestId(HeaderValue::from_bytes(&digits).expect("hex digits"))
}

/// What one route's [`request_context`] layer knows.
#[derive(Clone)]
pub struct RouteContext {
    pub state: AppState,
    /// `None` for the fallbacks: no route, or a method the route does not have.
    pub route: Option<&'static Route>,
}

/// The layer of each route and fallback: request id, the request timeout, metrics and the
/// access log.
pub async fn request_context(
    State(RouteContext { state, route }): State<RouteContext>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = match req.headers().get(REQUEST_ID_HEADER) {
        Some(v) if usable(v) => RequestId(v.clone()),
        _ => new_request_id(),
    };
    req.extensions_mut().insert(id.clone());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let operation = route.map_or(Operation::Other, |r| r.operation);
    // Logs below `info` inside the request carry its id; the access line names it itself,
    // so no span needs to be built at the default level (it would cost a fifth of a GET).
    let span = tracing::debug_span!("request", request_id = %id.as_str());
    let start = Instant::now();
    let method = req.method().clone();
    let limit = state.limits.request_timeout;
    let work = async {
        if route.is_some_and(Route::is_api) {
            match verify_signature(&state, req).await {
                Ok(req) => next.run(req).await,
                Err(refused) => refused,
            }
        } else {
            next.run(req).await
        }
    };
    let mut response = match crate::clock::within(start, limit, work.instrument(span)).await {
        Some(response) => response,
        None => WebError::RequestTimeout { limit }.into_response(),
    };
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, id.0.clone());
    let id = id.as_str();
    let path = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    state.metrics.record_request(operation, status, elapsed);
    let micros = elapsed.as_micros() as u64;
    match response.extensions().get::<super::error::Failure>() {
        Some(f) => tracing::error!(
            request_id = %id, method = %method, route = %path, status, latency_us = micros,
            error_code = f.code, detail = %f.detail, "request failed"
        ),
        None => {
            if tracing::enabled!(tracing::Level::INFO)
                && !crate::telemetry::access_line(id, method.as_str(), path, status, micros)
            {
                tracing::info!(
                    request_id = %id, method = %method, route = %path, status,
                    latency_us = micros, "request"
                )
            }
        }
    }
    response
}
