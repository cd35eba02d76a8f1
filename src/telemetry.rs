//! Structured logs with `tracing`, to stderr (stdout is for command output).
//!
//! Lines are not written to stderr one `write` at a time: at tens of thousands of requests
//! a second, one system call per access line, and the two worker threads contending for
//! stderr's lock, cost a fifth of a GET. They go to an in-memory buffer instead, which a
//! thread of its own writes out at least every [`FLUSH_EVERY`] (or as soon as it holds
//! [`FLUSH_AT`] bytes). Nothing is dropped: a logger that finds the buffer at
//! [`BUFFER_LIMIT`] (stderr blocked, a full pipe) waits for it to drain, as it would have
//! waited on stderr itself. [`flush`] writes out what is buffered; the binary calls it
//! before it exits, and a panic calls it before the panic's own message.
//!
//! Why not `tracing-appender`'s non-blocking writer and `tracing`'s formatter for the
//! access line: docs/performance.md, 2026-12-01 (11% fewer GETs a second, and 16% more
//! instructions a GET; no flush after which logging goes on, no fallback without a thread).

use std::io::{IsTerminal, Write};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// The buffer is written out early once it holds this much.
pub const FLUSH_AT: usize = 64 * 1024;
/// Loggers wait (rather than grow the buffer or drop lines) beyond this.
pub const BUFFER_LIMIT: usize = 4 * 1024 * 1024;

/// Install the global subscriber. `filter` falls back to `default` when unset.
pub fn init(filter: Option<&str>, default: &str, format: LogFormat) {
    let mut filter =
        EnvFilter::try_new(filter.unwrap_or(default)).unwrap_or_else(|_| EnvFilter::new(default));
    // At TRACE the AWS SDK's orchestrator logs every operation's output with `Debug`,
    // which redacts plaintexts but prints a GenerateDataKey's or Encrypt's ciphertext
    // blob (a wrapped data key) in hex: never below DEBUG for it.
    if filter.max_level_hint() == Some(tracing_subscriber::filter::LevelFilter::TRACE) {
        if let Ok(cap) = "aws_smithy_runtime::client::orchestrator=debug".parse() {
            filter = filter.add_directive(cap);
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Sink::global())
        .with_ansi(ansi)
        .with_target(false);
    let installed = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() && !ansi {
        let _ = ACCESS_FORMAT.set(format);
    }
}

/// The format of access lines written by [`access_line`]; unset (and `tracing` writes
/// them) when no subscriber of ours is installed or stderr is a terminal (colours).
static ACCESS_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// One request's access line, as `tracing`'s formatter would write
/// `info!(request_id, method, route, status, latency_us, "request")`, written straight
/// into the buffer: formatting it through `tracing`'s generic field visitors and
/// timestamp cost a tenth of a GET. The caller has checked that `info` is enabled.
/// Returns false when this fast path is off and the caller must use `tracing`.
///
/// `client_closed` (the client went away before its answer; see `http::context`) adds
/// `client_closed=true`, as `tracing` writes that field; it is left out when false.
pub fn access_line(
    request_id: &str,
    method: &str,
    route: &str,
    status: u16,
    latency_us: u64,
    client_closed: bool,
) -> bool {
    let (Some(format), Some(sink)) = (ACCESS_FORMAT.get(), GLOBAL.get()) else {
        return false;
    };
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return false;
        };
        line.clear();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        let fields = (request_id, method, route, status, latency_us, client_closed);
        let written = format_access(&mut line, *format, now, fields).is_ok();
        if written {
            sink.append(&line);
        }
        written
    })
}

/// The access line's fields: request id, method, route, status, latency in µs, and whether
/// the client went away before its answer.
type AccessFields<'a> = (&'a str, &'a str, &'a str, u16, u64, bool);

fn format_access(
    line: &mut Vec<u8>,
    format: LogFormat,
    now: impl std::fmt::Display,
    (request_id, method, route, status, latency_us, client_closed): AccessFields<'_>,
) -> std::io::Result<()> {
    match format {
        LogFormat::Text => {
            write!(
                line,
                "{now}  INFO request request_id={request_id} method={method} route={route} \
                 status={status} latency_us={latency_us}"
            )?;
            if client_closed {
                line.extend_from_slice(b" client_closed=true");
            }
            line.push(b'\n');
            Ok(())
        }
        LogFormat::Json => {
            write!(
                line,
                "{{\"timestamp\":\"{now}\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"request_id\":"
            )?;
            serde_json::to_writer(&mut *line, request_id)?;
            line.extend_from_slice(b",\"method\":");
            serde_json::to_writer(&mut *line, method)?;
            line.extend_from_slice(b",\"route\":");
            serde_json::to_writer(&mut *line, route)?;
            write!(line, ",\"status\":{status},\"latency_us\":{latency_us}")?;
            if client_closed {
                line.extend_from_slice(b",\"client_closed\":true");
            }
            line.extend_from_slice(b"}}\n");
            Ok(())
        }
    }
}

thread_local! {
    /// Where [`access_line`] formats.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Write out every buffered line now (before the process exits).
pub fn flush() {
    if let Some(sink) = GLOBAL.get() {
        sink.flush();
    }
}

static GLOBAL: OnceLock<&'static Sink<std::io::Stderr>> = OnceLock::new();

/// The buffer, shared by the loggers and the thread that writes it out.
pub struct Sink<W> {
    state: Mutex<State<W>>,
    /// Signalled when the buffer should be written out early.
    full: Condvar,
    /// Signalled when the buffer was written out.
    drained: Condvar,
}

struct State<W> {
    buf: Vec<u8>,
    /// The spare buffer swapped in while the other is written out.
    spare: Vec<u8>,
    /// Set while the writer thread (or a logger, without one) holds the buffer's contents
    /// outside the lock.
    writing: bool,
    /// Set when there is no writer thread: each logger writes out what it appended.
    synchronous: bool,
    out: Option<W>,
}

impl<W: Write + Send + 'static> Sink<W> {
    /// A sink writing to `out`, and its writer thread (which lives as long as the process).
    pub fn start(out: W) -> &'static Self {
        let sink = Self::leak(out);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || loop {
                let state = sink.lock();
                let (state, _) = sink
                    .full
                    .wait_timeout_while(state, FLUSH_EVERY, |s| s.buf.len() < FLUSH_AT)
                    .unwrap_or_else(|p| p.into_inner());
                sink.write_out(state);
            });
        if spawned.is_err() {
            // No thread: every line is written out at once by its logger instead.
            sink.write_synchronously();
        }
        sink
    }

    fn leak(out: W) -> &'static Self {
        Box::leak(Box::new(Sink {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_AT),
                spare: Vec::with_capacity(FLUSH_AT),
                writing: false,
                synchronous: false,
                out: Some(out),
            }),
            full: Condvar::new(),
            drained: Condvar::new(),
        }))
    }

    /// From now on each logger writes out what it appends, before `append` returns (for a
    /// sink without a writer thread, which would otherwise never be written out and, at
    /// [`BUFFER_LIMIT`], block its loggers for ever).
    fn write_synchronously(&self) {
        self.lock().synchronous = true;
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append one formatted line (or part of one: a logger's single `write_all`).
    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.lock();
        while state.buf.len() >= BUFFER_LIMIT {
            state = self.drained.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.buf.extend_from_slice(bytes);
        if state.synchronous {
            // Waits for another logger's write under way, then writes this line (and any
            // appended meanwhile), in order.
            self.write_out(state);
        } else if state.buf.len() >= FLUSH_AT {
            self.full.notify_one();
        }
    }

    /// Write out what is buffered, and wait for any write already under way.
    pub fn flush(&self) {
        let state = self.lock();
        self.write_out(state);
    }

    /// Take the buffer, write it out without holding the lock (loggers go on appending to
    /// the spare), and hand the emptied buffer back as the next spare.
    fn write_out(&self, mut state: MutexGuard<'_, State<W>>) {
        while state.writing {
            state = self.drained.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.buf.is_empty() {
            return;
        }
        let spare = std::mem::take(&mut state.spare);
        let mut full = std::mem::replace(&mut state.buf, spare);
        let Some(mut out) = state.out.take() else {
            return;
        };
        state.writing = true;
        drop(state);
        // Where stderr itself fails there is nowhere left to report it.
        let _ = out.write_all(&full).and_then(|()| out.flush());
        full.clear();
        let mut state = self.lock();
        state.spare = full;
        state.out = Some(out);
        state.writing = false;
        drop(state);
        self.drained.notify_all();
    }
}

impl Sink<std::io::Stderr> {
    fn global() -> StderrBuffer {
        let sink = *GLOBAL.get_or_init(|| {
            let sink = Sink::start(std::io::stderr());
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                sink.flush();
                previous(info);
            }));
            sink
        });
        StderrBuffer(sink)
    }
}

/// The `tracing` writer: each event's line goes into the shared buffer.
#[derive(Clone, Copy)]
pub struct StderrBuffer(&'static Sink<std::io::Stderr>);

impl Write for StderrBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StderrBuffer {
    type Writer = StderrBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Instant;

    /// An output that records what reached it, and can be made to block.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<StdMutex<Vec<u8>>>,
        gate: Arc<StdMutex<()>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().map_err(|_| std::io::ErrorKind::Other)?;
            self.seen
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line `tracing`'s own formatter writes for the access event, at a fixed time.
    fn tracing_line(format: LogFormat, fields: AccessFields<'_>) -> String {
        struct Fixed;
        impl tracing_subscriber::fmt::time::FormatTime for Fixed {
            fn format_time(
                &self,
                w: &mut tracing_subscriber::fmt::format::Writer<'_>,
            ) -> std::fmt::Result {
                w.write_str(AT)
            }
        }
        let out = Recorder::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let builder = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_target(false)
            .with_timer(Fixed);
        let (request_id, method, route, status, latency_us, client_closed) = fields;
        let emit = || {
            if client_closed {
                tracing::info!(
                    request_id = %request_id, method = %method, route = %route, status,
                    latency_us, client_closed, "request"
                )
            } else {
                tracing::info!(
                    request_id = %request_id, method = %method, route = %route, status,
                    latency_us, "request"
                )
            }
        };
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
            LogFormat::Json => tracing::subscriber::with_default(builder.json().finish(), emit),
        }
        String::from_utf8(seen(&out)).expect("utf-8")
    }

    const AT: &str = "2026-11-23T19:29:03.328174Z";

    #[test]
    fn the_access_line_is_what_tracing_would_write() {
        let ids = [
            "8a49f7d5dc673f503adeb4b4048ed3d5",
            r#"a"b\c{}'=x"#,
            "~!@#$%^&*()_+",
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for (id, client_closed) in ids.iter().flat_map(|id| [(*id, false), (*id, true)]) {
                let fields = (
                    id,
                    "GET",
                    "/v4/tenants/{tenant_id}/repo-encryption/setting",
                    202,
                    463,
                    client_closed,
                );
                let mut ours = Vec::new();
                format_access(&mut ours, format, AT, fields).expect("format");
                let ours = String::from_utf8(ours).expect("utf-8");
                assert_eq!(ours, tracing_line(format, fields), "{format:?}");
            }
        }
    }

    #[test]
    fn the_access_line_timestamp_is_rfc3339_with_microseconds() {
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        assert_eq!(now.len(), AT.len(), "{now}");
        assert!(humantime::parse_rfc3339(&now).is_ok(), "{now}");
    }

    fn seen(r: &Recorder) -> Vec<u8> {
        r.seen.lock().expect("recorder").clone()
    }

    #[test]
    fn lines_reach_the_output_in_order_within_the_flush_interval() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone());
        // With the output blocked, appending still returns: a logger never waits for the
        // write (the writer thread may be waiting in it, which is why this does not look at
        // the clock: the thread wakes every FLUSH_EVERY whatever is buffered).
        let closed = out.gate.lock().expect("gate");
        let (done, appended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sink.append(b"one\n");
            sink.append(b"two\n");
            let _ = done.send(());
        });
        assert!(
            appended.recv_timeout(Duration::from_secs(5)).is_ok(),
            "append waited for the output: written at once, not buffered"
        );
        assert!(seen(&out).is_empty());
        drop(closed);
        let want = b"one\ntwo\n";
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen(&out).len() < want.len() && Instant::now() < deadline {
            std::thread::sleep(FLUSH_EVERY);
        }
        assert_eq!(seen(&out), want);
    }

    /// Many lines reach the output in a write or two, not one write a line (what a
    /// channel of lines to an unbuffered stderr, such as `tracing-appender`'s worker, does:
    /// see docs/performance.md, 2026-12-01).
    #[test]
    fn lines_appended_together_are_written_out_together() {
        let out = Recorder::default();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Counting(Recorder, Arc<std::sync::atomic::AtomicUsize>);
        impl Write for Counting {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::start(Counting(out.clone(), writes.clone()));
        // While the output is blocked the writer thread holds at most what it had taken
        // out; the rest waits for the next write.
        let closed = out.gate.lock().expect("gate");
        for i in 0..100 {
            sink.append(format!("line {i}\n").as_bytes());
        }
        drop(closed);
        sink.flush();
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(seen(&out)).expect("utf-8"), want);
        let writes = writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(writes <= 2, "{writes} writes for 100 lines");
    }

    #[test]
    fn without_a_writer_thread_each_logger_writes_its_line_at_once() {
        let out = Recorder::default();
        let sink = Sink::leak(out.clone());
        sink.write_synchronously();
        sink.append(b"one\n");
        assert_eq!(seen(&out), b"one\n", "written before append returned");
        // Twice the buffer limit, from four loggers: none of them waits for ever.
        let line = vec![b'x'; 1024];
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let (line, done) = (line.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..BUFFER_LIMIT / 2 / line.len() {
                    sink.append(&line);
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            assert!(
                finished.recv_timeout(Duration::from_secs(10)).is_ok(),
                "a logger blocked: nothing writes the buffer out"
            );
        }
        assert_eq!(seen(&out).len(), 4 + 2 * BUFFER_LIMIT, "lines were lost");
    }

    #[test]
    fn flush_writes_everything_at_once() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone());
        sink.append(b"last words\n");
        sink.flush();
        assert_eq!(seen(&out), b"last words\n");
    }

    #[test]
    fn a_blocked_output_holds_loggers_back_instead_of_dropping_or_growing() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone());
        let gate = out.gate.lock().expect("gate"); // the output blocks from here on
        let line = vec![b'x'; 1024];
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let line = line.clone();
                std::thread::spawn(move || {
                    for _ in 0..2 * BUFFER_LIMIT / line.len() {
                        sink.append(&line);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let held = sink.lock().buf.len();
        assert!(
            held <= BUFFER_LIMIT + line.len() * 4,
            "buffer grew to {held}"
        );
        assert!(
            writers.iter().any(|w| !w.is_finished()),
            "loggers did not wait"
        );
        drop(gate);
        for w in writers {
            w.join().expect("writer");
        }
        sink.flush();
        assert_eq!(seen(&out).len(), 4 * 2 * BUFFER_LIMIT, "lines were lost");
    }
}
