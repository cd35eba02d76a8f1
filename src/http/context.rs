//! Per-request context: the request id (echoed or generated), the request timeout, the
//! request's metrics and one log line per request; and, for the API's operations, the
//! check of a request signature (one layer instead of two: each layer costs a boxed
//! service per request). Each route has its own copy of the layer, which knows the route
//! (see `http::router`), so a request's operation is the route it matched.
//!
//! Every request that reaches a handler has its line in the request log, also when its
//! client goes away before the answer (hyper then drops this layer's future):
//!
//! - a request that can write (any method but GET, HEAD and OPTIONS) runs in a task of its
//!   own, so it completes (or fails, or times out) whatever the client does, and its line
//!   names the status of what was done, with `client_closed=true` when the answer found
//!   no client to take it. A write whose client left is then in the log as it is in the
//!   audit trail. The server waits for these tasks when it stops (see
//!   [`writes_in_flight`]).
//! - a read is simply abandoned, and a drop guard writes its line with status 499 (nothing
//!   was done) and `client_closed=true`. It costs a GET no task and no allocation.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONNECTION;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use super::error::{Failure, WebError};
use super::extract::verify_signature;
use super::routes::Route;
use super::AppState;
use crate::domain::Error;
use crate::metrics::Operation;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The status logged (and counted) for a read whose client went away before its answer:
/// nginx's "client closed request". Never sent: there is no one to send it to.
pub const CLIENT_CLOSED: u16 = 499;

/// The id of the current request, as sent back in `X-Request-Id`: 1..=128 visible ASCII
/// characters.
#[derive(Debug, Clone)]
pub struct RequestId(Repr);

/// A generated id is kept as its digits (cloned without allocating, made a header value
/// once, on the answer); a caller's is kept as the header value it came in.
#[derive(Debug, Clone)]
enum Repr {
    Generated([u8; 32]),
    Echoed(HeaderValue),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only ever built from visible ASCII (see `usable` and `new_request_id`).
        match &self.0 {
            Repr::Generated(digits) => std::str::from_utf8(digits).unwrap_or_default(),
            Repr::Echoed(value) => value.to_str().unwrap_or_default(),
        }
    }

    /// The caller's `X-Request-Id` when usable, else a new one.
    pub fn of(headers: &HeaderMap) -> RequestId {
        match headers.get(REQUEST_ID_HEADER) {
            Some(v) if usable(v) => RequestId(Repr::Echoed(v.clone())),
            _ => new_request_id(),
        }
    }

    /// Send it back in `X-Request-Id`.
    pub fn set_on(&self, response: &mut Response) {
        let value = match &self.0 {
            Repr::Echoed(value) => value.clone(),
            #[allow(clippy::expect_used)] // hex digits are a valid header value
            Repr::Generated(digits) => HeaderValue::from_bytes(digits).expect("hex digits"),
        };
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
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
    RequestId(Repr::Generated(digits))
}

/// What one route's [`RequestContextLayer`] knows.
#[derive(Clone)]
struct RouteContext {
    state: AppState,
    /// `None` for the fallbacks: no route, or a method the route does not have.
    route: Option<&'static Route>,
}

/// The layer of each route and fallback: request id, the request timeout, metrics and the
/// access log (the module's documentation says what it does with each request). A Tower
/// layer of its own rather than `axum::middleware::from_fn`, which boxes the rest of the
/// route's stack again, and that stack's future, for every request.
#[derive(Clone)]
pub struct RequestContextLayer(RouteContext);

impl RequestContextLayer {
    pub fn new(state: AppState, route: Option<&'static Route>) -> Self {
        RequestContextLayer(RouteContext { state, route })
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> RequestContext<S> {
        RequestContext {
            context: self.0.clone(),
            inner,
        }
    }
}

/// A route's stack (what its handler is reached through) under [`RequestContextLayer`].
#[derive(Clone)]
pub struct RequestContext<S> {
    context: RouteContext,
    inner: S,
}

/// The rest of a route's stack, as [`RequestContext`] calls it.
pub trait RouteStack:
    Service<Request, Error = Infallible, Response: IntoResponse, Future: Send> + Clone + Send + 'static
{
}

impl<S> RouteStack for S where
    S: Service<Request, Error = Infallible, Response: IntoResponse, Future: Send>
        + Clone
        + Send
        + 'static
{
}

impl<S: RouteStack> Service<Request> for RequestContext<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    /// Always ready: the inner stack is made ready (axum's always is) when it is called.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let context = self.context.clone();
        let inner = self.inner.clone();
        Box::pin(async move { Ok(request_context(context, req, inner).await) })
    }
}

/// Hand the request to the rest of its route's stack.
async fn run<S: RouteStack>(inner: S, req: Request) -> Response {
    match inner.oneshot(req).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// Writes running in their own task (see the module's documentation).
static WRITES_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many writes are still running in their own task, their client there or not. Each
/// ends within the request timeout; the server waits for them before it stops.
pub fn writes_in_flight() -> usize {
    WRITES_IN_FLIGHT.load(Ordering::Acquire)
}

/// Counts one write task while it lives.
pub(super) struct InFlight;

impl InFlight {
    pub(super) fn start() -> InFlight {
        WRITES_IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        WRITES_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a request of this method may change anything: only these are let finish
/// when their client goes away.
fn can_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What [`RequestContext`] does with a request.
async fn request_context<S: RouteStack>(
    RouteContext { state, route }: RouteContext,
    mut req: Request,
    inner: S,
) -> Response {
    let id = RequestId::of(req.headers());
    req.extensions_mut().insert(id.clone());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let start = Instant::now();
    let method = req.method().clone();
    if can_write(&method) {
        return detached(
            state,
            route,
            req,
            inner,
            Line::new(id, method, matched, start),
        )
        .await;
    }
    let line = Line::new(id, method, matched, start);
    let response = guarded(&state, route, req, inner, &line).await;
    line.finish(&state, route, response, false)
}

/// [`routed`], with a guard that writes the request's line if the work is dropped before
/// its answer (hyper drops a read whose client went away) or panics (a bug: a 500).
async fn guarded<S: RouteStack>(
    state: &AppState,
    route: Option<&'static Route>,
    req: Request,
    inner: S,
    line: &Line,
) -> Response {
    let mut unanswered = Unanswered {
        state,
        line,
        route,
        armed: true,
    };
    let response = routed(state, route, req, inner, line).await;
    unanswered.armed = false;
    response
}

/// A write, in a task of its own: it runs to its end even when the client has gone, and
/// its line says so.
async fn detached<S: RouteStack>(
    state: AppState,
    route: Option<&'static Route>,
    req: Request,
    inner: S,
    line: Line,
) -> Response {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let in_flight = InFlight::start();
    let id = line.id.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let response = guarded(&state, route, req, inner, &line).await;
        // Logged once the answer is handed over (or found no one to take it).
        let (status, failure) = line.status_of(&response);
        let response = line.finish_response(response);
        let client_closed = answer.send(response).is_err();
        line.record(&state, route, status, failure.as_ref(), client_closed);
    });
    match answered.await {
        Ok(response) => response,
        // The task panicked (a bug): its connection gets a clean error.
        Err(_) => {
            let mut response =
                WebError::from(Error::Internal("the request's task ended".into())).into_response();
            id.set_on(&mut response);
            response
        }
    }
}

/// The routed work of a request, within the request timeout.
async fn routed<S: RouteStack>(
    state: &AppState,
    route: Option<&'static Route>,
    req: Request,
    inner: S,
    line: &Line,
) -> Response {
    // Logs below `info` inside the request carry its id; the access line names it itself,
    // so no span needs to be built at the default level (it would cost a fifth of a GET).
    let span = tracing::debug_span!("request", request_id = %line.id.as_str());
    let limit = state.limits.request_timeout;
    let work = async {
        if route.is_some_and(Route::is_api) {
            match verify_signature(state, req).await {
                Ok(req) => run(inner, req).await,
                Err(refused) => refused,
            }
        } else {
            run(inner, req).await
        }
    };
    match crate::clock::within(line.start, limit, work.instrument(span)).await {
        Some(response) => response,
        None => WebError::RequestTimeout { limit }.into_response(),
    }
}

/// What a request's line names.
struct Line {
    id: RequestId,
    method: Method,
    matched: Option<MatchedPath>,
    start: Instant,
}

impl Line {
    fn new(id: RequestId, method: Method, matched: Option<MatchedPath>, start: Instant) -> Line {
        Line {
            id,
            method,
            matched,
            start,
        }
    }

    fn status_of(&self, response: &Response) -> (u16, Option<Failure>) {
        (
            response.status().as_u16(),
            response.extensions().get::<Failure>().cloned(),
        )
    }

    /// The headers every answer gets: the request id; and `Connection: close` after a
    /// 413, whose body was left unread (it must not be taken for the next request).
    fn finish_response(&self, mut response: Response) -> Response {
        self.id.set_on(&mut response);
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The answer's headers, its metrics and its line.
    fn finish(
        &self,
        state: &AppState,
        route: Option<&'static Route>,
        response: Response,
        client_closed: bool,
    ) -> Response {
        let status = response.status().as_u16();
        let response = self.finish_response(response);
        let failure = response.extensions().get::<Failure>();
        self.record(state, route, status, failure, client_closed);
        response
    }

    /// The request's metrics and its line in the log.
    fn record(
        &self,
        state: &AppState,
        route: Option<&'static Route>,
        status: u16,
        failure: Option<&Failure>,
        client_closed: bool,
    ) {
        let operation = route.map_or(Operation::Other, |r| r.operation);
        let id = self.id.as_str();
        let method = self.method.as_str();
        let path = self
            .matched
            .as_ref()
            .map_or("unmatched", MatchedPath::as_str);
        let elapsed = self.start.elapsed();
        state.metrics.record_request(operation, status, elapsed);
        if client_closed {
            state.metrics.record_client_closed(operation);
        }
        let micros = elapsed.as_micros() as u64;
        // Written only when true (an absent Option field is not recorded).
        let closed = client_closed.then_some(true);
        match failure {
            Some(f) => tracing::error!(
                request_id = %id, method = %method, route = %path, status, latency_us = micros,
                client_closed = closed, error_code = f.code, detail = %f.detail, "request failed"
            ),
            None => {
                if tracing::enabled!(tracing::Level::INFO)
                    && !crate::telemetry::access_line(
                        id,
                        method,
                        path,
                        status,
                        micros,
                        client_closed,
                    )
                {
                    tracing::info!(
                        request_id = %id, method = %method, route = %path, status,
                        latency_us = micros, client_closed = closed, "request"
                    )
                }
            }
        }
    }
}

/// A read not yet answered: dropped armed (hyper dropped the request's future, its client
/// having gone), it writes the request's line, status 499.
struct Unanswered<'a> {
    state: &'a AppState,
    line: &'a Line,
    route: Option<&'static Route>,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::thread::panicking() {
            // Not a client gone: the handler panicked (a bug). Logged and counted as a 500;
            // no answer is sent (nothing catches the panic), the client sees its
            // connection close.
            let failure = Failure {
                code: "RC.500000",
                detail: "the request's handler panicked".into(),
            };
            self.line
                .record(self.state, self.route, 500, Some(&failure), false);
        } else {
            self.line
                .record(self.state, self.route, CLIENT_CLOSED, None, true);
        }
    }
}
