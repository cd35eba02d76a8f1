//! The accept loop: HTTP/1.1 over TCP or TLS, with a bound on connections, on the size of
//! a request head and on the time a client may take to send it, and graceful shutdown.
//!
//! `axum::serve` offers none of these knobs (it sets no header timeout at all), so the
//! connections are driven with hyper's own builder here.
//!
//! The edge of the service is here too ([`Edge`]): what is wrong with a request as HTTP,
//! whatever its route, is refused before the router sees it (no `Host`, a body declared
//! over `max_body_bytes`, a framing other than `Content-Length` or `chunked`), with the
//! service's JSON error and `X-Request-Id`, counted and logged at debug only. What hyper's
//! own parser refuses it answers itself, with an empty 400, 414 or 431 (hyper 1 has no
//! hook to render its parse errors); those are counted here as the connection ends.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::convert::Infallible;
use std::time::Instant;

use axum::http::header::{CONNECTION, HOST, TRANSFER_ENCODING};
use axum::http::{HeaderValue, Request, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::{Either, Ready};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::context::{writes_in_flight, RequestId};
use super::error::WebError;
use crate::config::{Limits, TlsFiles};
use crate::domain::Error;
use crate::metrics::{Metrics, Operation, Refusal};

/// How connections are accepted and served.
#[derive(Clone)]
pub struct ServerOptions {
    pub limits: Limits,
    /// HTTPS when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where requests refused at the edge are counted (the router's own metrics).
    pub metrics: Arc<Metrics>,
    /// How many [`ConnectionThreads`] serve the connections.
    pub connection_threads: usize,
}

/// A rustls server configuration from a PEM certificate chain and its key, with clear
/// errors for each way the files can be wrong.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, Error> {
    let unreadable = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!("TLS {what} {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable("certificate", &files.cert, &e))?;
    if chain.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "TLS certificate {}: no PEM certificate found",
            files.cert.display()
        )));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| unreadable("key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "TLS certificate {} and key {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting, let the
/// requests in flight finish (for at most the request timeout) and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = options.limits;
    let edge = Edge {
        app: TowerToHyperService::new(app),
        metrics: options.metrics,
        max_body_bytes: limits.max_body_bytes as u64,
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tls = options.tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let http = Arc::new(http);
    // Within the graceful shutdown's wait: how long a thread whose `serve` was dropped
    // keeps running the writes in flight before it stops.
    let linger = limits.request_timeout + Duration::from_secs(1);
    let mut threads = ConnectionThreads::start(options.connection_threads, linger)?;
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting: new clients wait in the listen queue
        // (and time out there) instead of costing memory and file descriptors here.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Out of this thread's event loop, into the connection thread's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "an accepted connection could not be handed over");
                continue;
            }
        };
        let connection = Connection {
            http: http.clone(),
            service: edge.clone(),
            watcher: graceful.watcher(),
            stall_limit: limits.request_timeout,
        };
        let tls = tls.clone();
        let timeout = limits.header_read_timeout;
        threads.spawn(async move {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "a connection could not join its thread's event loop");
                    return;
                }
            };
            match tls {
                None => connection.serve(stream).await,
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => connection.serve(stream).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
            drop(permit);
        });
    }
    drop(listener);
    // Idle connections close at once; busy ones after their current response.
    let stop_by = tokio::time::Instant::now() + linger;
    let _ = tokio::time::timeout_at(stop_by, graceful.shutdown()).await;
    // Writes whose clients have gone run on in their own tasks (`http::context`): let them
    // end (each within the request timeout), so none is cut off between its audit record
    // and its line in the log.
    while writes_in_flight() > 0 && tokio::time::Instant::now() < stop_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What is left on the connection threads is dropped as their event loops stop: the
    // writes the wait above gave up on. What requests started beyond their answer (a
    // rewrap job, a key-state refresh) and the connections of the database pool and of the
    // HTTP clients are the main runtime's (`crate::home`), and carry on.
    let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
    Ok(())
}

/// The threads that serve the connections, each running an event loop of its own (a
/// single-threaded tokio runtime) and serving each connection it is given from its first
/// byte to its last. A new connection goes to the thread with the fewest open.
///
/// Why not the main runtime's workers, which share their tasks: on a machine whose cores
/// the service shares with other busy processes (a load generator on the same two cores,
/// or any neighbour), a worker the kernel preempts takes the connections queued on it
/// along, and the workers' stealing from each other costs wake-ups and cache lines that
/// each request pays. With twice as many threads as cores, each with its own connections,
/// GET setting did 1.1-1.3x the requests per second of two work-stealing workers in the
/// same rounds (docs/performance.md, "Connections on threads of their own"). A write that
/// runs on after its client has gone runs on its connection's thread. What else a request
/// starts (a key-state refresh, a rewrap job) and the connections it opens to the database,
/// the KMS or Keystone belong to the main runtime (`crate::home`), so that no thread's
/// delay holds up the calls of the others, as does the background work the process starts
/// itself (checkpoints, the rewrap sweep, the event feed).
struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
    /// Where the search for the least busy thread starts next: ties go round.
    next: usize,
}

struct ConnectionThread {
    runtime: tokio::runtime::Handle,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The blocking pool of each connection thread's runtime. What a request does on its
/// thread hardly ever blocks (the database and HTTP clients, and their name lookups, are the
/// main runtime's), so a few threads are plenty where tokio's default is 512 per runtime.
const CONNECTION_BLOCKING_THREADS: usize = 4;

impl ConnectionThreads {
    /// `count` threads (at least one). A thread told to [`stop`](Self::stop) stops at
    /// once; one whose `ConnectionThreads` was dropped without (a `serve` future dropped)
    /// first lets the process's writes in flight end, for at most `linger` (or until the
    /// process exits: those writes need the main runtime, whose database calls they make).
    fn start(count: usize, linger: Duration) -> io::Result<ConnectionThreads> {
        let mut threads = ConnectionThreads {
            threads: Vec::with_capacity(count),
            next: 0,
        };
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(CONNECTION_BLOCKING_THREADS)
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let handle = runtime.handle().clone();
            // "connection-1023" is the longest name Linux keeps whole (15 bytes).
            let thread = std::thread::Builder::new()
                .name(format!("connection-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        if stopped.await.is_err() {
                            let until = tokio::time::Instant::now() + linger;
                            while writes_in_flight() > 0 && tokio::time::Instant::now() < until {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    });
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            threads.threads.push(ConnectionThread {
                runtime: handle,
                open: Arc::default(),
                stop,
                thread,
            });
        }
        Ok(threads)
    }

    /// Index of the thread with the fewest open connections, the first such from `next`.
    fn least_busy(&mut self) -> usize {
        let n = self.threads.len();
        let start = self.next % n;
        let pick = (start..start + n)
            .map(|i| i % n)
            .min_by_key(|&i| self.threads[i].open.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.next = pick + 1;
        pick
    }

    /// Serve one connection (`work`) on the least busy thread, counted there while it runs.
    fn spawn(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let pick = self.least_busy();
        let thread = &self.threads[pick];
        let open = OpenConnection::count(thread.open.clone());
        thread.runtime.spawn(async move {
            let _open = open;
            work.await;
        });
    }

    /// Stop the event loops and wait for the threads.
    fn stop(self) {
        let threads: Vec<_> = self
            .threads
            .into_iter()
            .map(|t| {
                let _ = t.stop.send(());
                t.thread
            })
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Counts one connection on its thread while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The service of every connection: the edge's checks, then the router.
#[derive(Clone)]
struct Edge {
    app: TowerToHyperService<Router>,
    metrics: Arc<Metrics>,
    max_body_bytes: u64,
}

impl hyper::service::Service<Request<Incoming>> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Ready<Result<Response, Infallible>>,
        TowerToHyperServiceFuture<Router, Request<Incoming>>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        match refusal(&req, self.max_body_bytes) {
            None => Either::Right(self.app.call(req)),
            Some((reason, error)) => Either::Left(futures_util::future::ready(Ok(
                self.refuse(&req, reason, error)
            ))),
        }
    }
}

impl Edge {
    /// The answer to a request refused at the edge: the service's JSON error, its
    /// `X-Request-Id`, and `Connection: close` (the body, if any, is left unread, and a
    /// client this confused is not worth keeping). Counted, and logged at debug only: a
    /// hostile client must not be able to flood the log.
    fn refuse(&self, req: &Request<Incoming>, reason: Refusal, error: WebError) -> Response {
        let start = Instant::now();
        let id = RequestId::of(req.headers());
        let message = error.to_string();
        let mut response = error.into_response();
        id.set_on(&mut response);
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let status = response.status().as_u16();
        self.metrics.record_refused(reason);
        self.metrics
            .record_request(Operation::Other, status, start.elapsed());
        tracing::debug!(
            request_id = %id.as_str(), method = %req.method(), status,
            reason = %reason.name(), error = %message, "request refused"
        );
        response
    }
}

/// What is wrong with a request as HTTP, whatever its route: checked on its head alone,
/// before the router (and so before anything reads its body).
fn refusal<B: hyper::body::Body>(
    req: &Request<B>,
    max_body_bytes: u64,
) -> Option<(Refusal, WebError)> {
    let headers = req.headers();
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        // RFC 9112, section 3.2: an HTTP/1.1 request without Host is a 400; HTTP/1.0
        // predates the header.
        (None, _) if req.version() >= Version::HTTP_11 => {
            return Some((
                Refusal::NoHost,
                WebError::MalformedRequest(
                    "an HTTP/1.1 request needs a Host header (RFC 9112, section 3.2)",
                ),
            ))
        }
        (None, _) => {}
        (Some(_), Some(_)) => {
            return Some((
                Refusal::BadHost,
                WebError::MalformedRequest("more than one Host header"),
            ))
        }
        (Some(host), None) if !is_host(host) => {
            return Some((
                Refusal::BadHost,
                WebError::MalformedRequest(
                    "the Host header is not a host name or address with an optional port",
                ),
            ))
        }
        (Some(_), None) => {}
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // hyper refuses a Transfer-Encoding whose last coding is not chunked, and frames
        // one beside a Content-Length by the Transfer-Encoding alone (dropping the
        // Content-Length, and closing the connection after the answer: RFC 9112, section
        // 6.1). It passes other codings before `chunked` on (`gzip, chunked`), which
        // would hand the handlers a body they cannot read.
        let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
        let chunked_only = match (codings.next(), codings.next()) {
            (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
            _ => false,
        };
        if !chunked_only {
            return Some((
                Refusal::Framing,
                WebError::MalformedRequest(
                    "the only Transfer-Encoding accepted is chunked: send the body as it is, chunked or with a Content-Length",
                ),
            ));
        }
    }
    // The body's length as hyper parsed it from Content-Length (chunked bodies have no
    // lower bound; they are cut at the limit as they are read).
    if req.body().size_hint().lower() > max_body_bytes {
        return Some((
            Refusal::BodyTooLarge,
            WebError::from(Error::PayloadTooLarge {
                limit: max_body_bytes as usize,
            }),
        ));
    }
    None
}

/// RFC 9110's `Host = uri-host [ ":" port ]`, loosely: the characters of a reg-name, an
/// IPv4 address or an IP literal and a port, and no others (no space, `@`, `/`, `?`,
/// `#`). Empty is allowed (RFC 9112, section 3.2, for a target without authority).
fn is_host(value: &HeaderValue) -> bool {
    value.as_bytes().iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// What serving one accepted connection takes, over TCP or TLS alike.
struct Connection {
    http: Arc<hyper::server::conn::http1::Builder>,
    service: Edge,
    watcher: Watcher,
    stall_limit: Duration,
}

impl Connection {
    /// Serve HTTP/1.1 on `stream` until the client or a graceful shutdown ends it. Errors
    /// are the client's doing (reset, malformed request, timeout) and worth a debug line
    /// only.
    async fn serve<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: T) {
        let stream = StallLimit::new(stream, self.stall_limit);
        let begun = stream.begun.clone();
        let metrics = self.service.metrics.clone();
        let conn = self
            .http
            .serve_connection(TokioIo::new(stream), self.service);
        if let Err(e) = self.watcher.watch(conn).await {
            // hyper times out an idle keep-alive connection as it does a head begun and
            // not finished: only the second is a refused request.
            let idle = e.is_timeout() && !begun.load(std::sync::atomic::Ordering::Relaxed);
            match parser_refusal(&e).filter(|_| !idle) {
                Some(reason) => {
                    metrics.record_refused(reason);
                    tracing::debug!(error = %e, reason = %reason.name(), "request refused by the HTTP parser");
                }
                None => tracing::debug!(error = %e, "connection ended with an error"),
            }
        }
    }
}

/// A request hyper refused itself, before any service ran (it answered a parse error with a
/// bare 400, 414 or 431, and a head not finished in time by closing the connection).
fn parser_refusal(e: &hyper::Error) -> Option<Refusal> {
    if e.is_parse_too_large() {
        Some(Refusal::HeadTooLarge)
    } else if e.is_parse() {
        Some(Refusal::Parse)
    } else if e.is_timeout() {
        Some(Refusal::HeaderTimeout)
    } else {
        None
    }
}

/// Accept errors: a client that gave up before we accepted is nothing; running out of
/// file descriptors is logged and waited out, so the loop does not spin.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection whose writes may not stall for longer than `limit`: a client that stops
/// reading its responses (its receive window full) would otherwise hold a connection slot
/// for ever, since hyper has no write timeout. Reads need no such bound here: the header
/// read timeout and the request timeout cover them.
struct StallLimit<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write is waiting for the client; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether bytes came in since the last answer went out: a request head begun (what
    /// tells a timed-out head from an idle keep-alive connection).
    begun: Arc<std::sync::atomic::AtomicBool>,
}

impl<T> StallLimit<T> {
    fn new(inner: T, limit: Duration) -> Self {
        StallLimit {
            inner,
            limit,
            stalled: None,
            begun: Arc::default(),
        }
    }

    /// Pass a write's result on; while it is pending, fail it once the limit has passed.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> StallLimit<T> {
    /// Bytes of an answer went out: what was read before was a whole request.
    fn answered(&self, poll: &Poll<io::Result<usize>>) {
        if matches!(poll, Poll::Ready(Ok(n)) if *n > 0) {
            self.begun
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimit<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.begun.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimit<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        let poll = self.watch(cx, poll);
        self.answered(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let poll = self.watch(cx, poll);
        self.answered(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(req: Request<axum::body::Body>) -> Option<Refusal> {
        refusal(&req, 1024).map(|(reason, _)| reason)
    }

    fn get(version: Version, hosts: &[&str]) -> Request<axum::body::Body> {
        let mut b = Request::get("/healthz").version(version);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn a_connection_goes_to_the_thread_with_the_fewest_open() {
        let mut threads = ConnectionThreads::start(3, Duration::ZERO).unwrap();
        let set = |t: &ConnectionThreads, open: [usize; 3]| {
            for (thread, n) in t.threads.iter().zip(open) {
                thread.open.store(n, Ordering::Relaxed);
            }
        };
        set(&threads, [2, 0, 1]);
        assert_eq!(threads.least_busy(), 1);
        set(&threads, [2, 2, 1]);
        assert_eq!(threads.least_busy(), 2);
        // Ties go round, from the thread after the last one picked.
        set(&threads, [0, 0, 0]);
        let picks: Vec<usize> = (0..4).map(|_| threads.least_busy()).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        threads.stop();
    }

    #[tokio::test]
    async fn a_connection_is_served_on_its_thread_and_counted_while_it_lasts() {
        let mut threads = ConnectionThreads::start(2, Duration::ZERO).unwrap();
        let open = |t: &ConnectionThreads| -> Vec<usize> {
            t.threads
                .iter()
                .map(|t| t.open.load(Ordering::Relaxed))
                .collect()
        };
        let (started, on) = tokio::sync::oneshot::channel();
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        threads.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = started.send(name);
            let _ = ended.await;
        });
        assert_eq!(on.await.unwrap().as_deref(), Some("connection-0"));
        assert_eq!(open(&threads), [1, 0]);
        // The next one goes to the idle thread.
        let (started, on) = tokio::sync::oneshot::channel();
        threads.spawn(async move {
            let _ = started.send(std::thread::current().name().map(str::to_owned));
        });
        assert_eq!(on.await.unwrap().as_deref(), Some("connection-1"));
        let _ = end.send(());
        let deadline = Instant::now() + Duration::from_secs(5);
        while open(&threads) != [0, 0] {
            assert!(
                Instant::now() < deadline,
                "still open: {:?}",
                open(&threads)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::spawn_blocking(move || threads.stop())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn threads_dropped_without_a_stop_let_the_writes_in_flight_end_first() {
        let mut threads = ConnectionThreads::start(1, Duration::from_secs(10)).unwrap();
        let (done, finished) = tokio::sync::oneshot::channel();
        let (started, running) = tokio::sync::oneshot::channel();
        threads.spawn(async move {
            let _write = super::super::context::InFlight::start();
            let _ = started.send(());
            // Longer than the 100 ms a stopping runtime gives its tasks.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = done.send("committed");
        });
        running.await.unwrap();
        // As when a `serve` future is dropped: no stop, no graceful shutdown.
        drop(threads);
        let outcome = tokio::time::timeout(Duration::from_secs(10), finished).await;
        assert_eq!(outcome.unwrap().ok(), Some("committed"));
    }

    #[test]
    fn the_edge_refuses_what_is_wrong_with_a_request_as_http() {
        use Version as V;
        assert_eq!(reason(get(V::HTTP_11, &[])), Some(Refusal::NoHost));
        assert_eq!(reason(get(V::HTTP_10, &[])), None);
        assert_eq!(reason(get(V::HTTP_11, &["a", "a"])), Some(Refusal::BadHost));
        for bad in ["a b", "user@host", "host/path", "h?q", "h#f", "\"x\""] {
            assert_eq!(
                reason(get(V::HTTP_11, &[bad])),
                Some(Refusal::BadHost),
                "{bad}"
            );
        }
        for good in [
            "",
            "x",
            "repocrypt.test:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(reason(get(V::HTTP_11, &[good])), None, "{good}");
        }
        let with = |te: &[&str], body: &'static [u8]| {
            let mut b = Request::post("/x").header(HOST, "x");
            for v in te {
                b = b.header(TRANSFER_ENCODING, *v);
            }
            reason(b.body(axum::body::Body::from(body)).unwrap())
        };
        assert_eq!(with(&["chunked"], b""), None);
        assert_eq!(with(&[" Chunked "], b""), None);
        assert_eq!(with(&["gzip, chunked"], b""), Some(Refusal::Framing));
        assert_eq!(with(&["gzip", "chunked"], b""), Some(Refusal::Framing));
        // The body's declared length (its exact size hint), before anything reads it.
        assert_eq!(with(&[], &[b'x'; 1024]), None);
        assert_eq!(with(&[], &[b'x'; 1025]), Some(Refusal::BodyTooLarge));
    }
}
