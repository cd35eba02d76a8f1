//! Structured logs with `tracing`, to stderr (stdout is for command output).
//!
//! Lines are not written to stderr one `write` at a time: at tens of thousands of requests
//! a second, one system call per access line, and the two worker threads contending for
//! stderr's lock, cost a fifth of a GET. They go to an in-memory buffer instead, which a
//! thread of its own writes out at least every [`FLUSH_EVERY`] (or as soon as it holds
//! [`FLUSH_AT`] bytes). A logger never waits for the output: a line that finds the buffer at
//! [`BUFFER_LIMIT`] (stderr blocked, a full pipe, a disk that cannot keep up) is dropped,
//! counted ([`dropped_lines`], `repocrypt_log_lines_dropped_total` in `/metrics`) and
//! reported by a `WARN` line in the log where the loss happened, so that a stalled log can
//! never stall a request. [`flush`] writes out what is buffered; the binary calls it before
//! it exits, and a panic calls it before the panic's own message.
//!
//! The log must not hold up the database either. Left to the kernel, a log written at
//! megabytes a second sits in the page cache until its pages are 30 s old
//! (`vm.dirty_expire_centisecs`) and is then written back in one burst, which a WAL `fsync` on
//! the same disk waits behind (a durable PUT's p99 went from 14–19 to 32–63 ms). So after every
//! [`WRITEBACK_EVERY`] bytes of log, a thread of its own ([`Writeback`]) has the kernel write
//! the log out now, a little at a time: when stderr is a regular file (`2>file`, a unit's
//! `StandardError=file:`) by `posix_fadvise(DONTNEED)` on it (starts the writeback of its dirty
//! pages and drops those already written); when it is a pipe or a socket (to `tee`, a
//! supervisor, journald) whose reader writes a file we cannot name, by `syncfs` of the file
//! system of the SQLite database, once `serve` has named its directory
//! ([`sync_filesystem_of`]); at most one every [`WRITEBACK_PAUSE`]. Neither is ever waited for
//! by a logger or by the log's writer (docs/performance.md, "Durable PUT with the access log on
//! the database's disk"). Without a writer thread (it could not be started) each logger
//! writes its own line and does wait for stderr.
//!
//! Why not `tracing-appender`'s non-blocking writer and `tracing`'s formatter for the
//! access line: docs/performance.md, 2026-12-01 (11% fewer GETs a second, and 16% more
//! instructions a GET; no flush after which logging goes on, no fallback without a thread).

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// The buffer is written out early once it holds this much.
pub const FLUSH_AT: usize = 64 * 1024;
/// Lines are dropped (and counted) rather than grow the buffer beyond this.
pub const BUFFER_LIMIT: usize = 4 * 1024 * 1024;
/// The log's writeback is started after each this much of it written.
pub const WRITEBACK_EVERY: usize = 1024 * 1024;
/// ... and a file system's sync not more often than this.
pub const WRITEBACK_PAUSE: Duration = Duration::from_millis(250);
/// Longest the exit's [`flush`] waits for a write of the log already under way (a stderr
/// nobody reads would otherwise hold the process for ever).
pub const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Install the global subscriber. `filter` falls back to `default` when unset.
pub fn init(filter: Option<&str>, default: &str, format: LogFormat, writeback: bool) {
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
        .with_writer(Sink::global(writeback))
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
        let Some(now) = timestamp(std::time::SystemTime::now()) else {
            return false;
        };
        let fields = (request_id, method, route, status, latency_us, client_closed);
        let written = format_access(&mut line, *format, &now, fields).is_ok();
        if written {
            sink.append(&line);
        }
        written
    })
}

/// The access line's fields: request id, method, route, status, latency in µs, and whether
/// the client went away before its answer.
type AccessFields<'a> = (&'a str, &'a str, &'a str, u16, u64, bool);

/// Formats the line by copying its parts rather than through `fmt` (which cost a GET about 7%
/// of its throughput at `-t2 -c32`: docs/performance.md, "The access line's cost"); the bytes
/// are those of `tracing`'s own formatter (tested).
fn format_access(
    line: &mut Vec<u8>,
    format: LogFormat,
    now: &[u8],
    (request_id, method, route, status, latency_us, client_closed): AccessFields<'_>,
) -> std::io::Result<()> {
    let (mut status_digits, mut latency_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (status, latency_us) = (
        status_digits.format(status).as_bytes(),
        latency_digits.format(latency_us).as_bytes(),
    );
    match format {
        LogFormat::Text => {
            for part in [
                now,
                b"  INFO request request_id=",
                request_id.as_bytes(),
                b" method=",
                method.as_bytes(),
                b" route=",
                route.as_bytes(),
                b" status=",
                status,
                b" latency_us=",
                latency_us,
            ] {
                line.extend_from_slice(part);
            }
            if client_closed {
                line.extend_from_slice(b" client_closed=true");
            }
            line.push(b'\n');
            Ok(())
        }
        LogFormat::Json => {
            line.extend_from_slice(b"{\"timestamp\":\"");
            line.extend_from_slice(now);
            line.extend_from_slice(
                b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"request_id\":",
            );
            serde_json::to_writer(&mut *line, request_id)?;
            line.extend_from_slice(b",\"method\":");
            serde_json::to_writer(&mut *line, method)?;
            line.extend_from_slice(b",\"route\":");
            serde_json::to_writer(&mut *line, route)?;
            for part in [b",\"status\":", status, b",\"latency_us\":", latency_us] {
                line.extend_from_slice(part);
            }
            if client_closed {
                line.extend_from_slice(b",\"client_closed\":true");
            }
            line.extend_from_slice(b"}}\n");
            Ok(())
        }
    }
}

/// The length of [`timestamp`]'s answer.
const TIMESTAMP_LEN: usize = 27;

/// Where [`timestamp`] has humantime write (no allocation).
#[derive(Default)]
struct Timestamp {
    digits: [u8; TIMESTAMP_LEN],
    len: usize,
}

impl std::fmt::Write for Timestamp {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.digits.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `2026-11-23T19:29:03.328174Z`: RFC 3339 in UTC with microseconds, as
/// `humantime::format_rfc3339_micros` writes it (tested), which each thread runs once a
/// second: the rest of the second only writes the six digits of its microseconds. `None`
/// for a time humantime cannot write (before 1970, after 9999): the caller then leaves the
/// line to `tracing`.
fn timestamp(at: std::time::SystemTime) -> Option<[u8; TIMESTAMP_LEN]> {
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    let second = since.as_secs();
    let mut out = match SECOND.with(std::cell::Cell::get) {
        Some((s, digits)) if s == second => digits,
        _ => {
            let mut written = Timestamp::default();
            // Fails for a year past 9999 (humantime's `fmt::Error`) or a longer answer
            // (`fmt::Write`, not `io::Write`, whose `write!` panics on a `fmt::Error`).
            std::fmt::write(
                &mut written,
                format_args!("{}", humantime::format_rfc3339_micros(at)),
            )
            .ok()?;
            if written.len != TIMESTAMP_LEN {
                return None;
            }
            SECOND.with(|cached| cached.set(Some((second, written.digits))));
            written.digits
        }
    };
    let mut micros = since.subsec_micros();
    for digit in out[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    Some(out)
}

thread_local! {
    /// Where [`access_line`] formats.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The timestamp of the second this thread last logged in (see [`timestamp`]).
    #[allow(clippy::type_complexity)]
    static SECOND: std::cell::Cell<Option<(u64, [u8; TIMESTAMP_LEN])>> =
        const { std::cell::Cell::new(None) };
}

/// Lines dropped since the process started because the log's output could not keep up.
pub fn dropped_lines() -> u64 {
    GLOBAL
        .get()
        .map_or(0, |sink| sink.dropped.load(Ordering::Relaxed))
}

/// The line that reports `n` lines dropped, in the log's format.
fn dropped_notice(n: u64) -> Vec<u8> {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let message = "log lines dropped: the log's output did not keep up";
    match ACCESS_FORMAT.get() {
        Some(LogFormat::Json) => format!(
            "{{\"timestamp\":\"{now}\",\"level\":\"WARN\",\"fields\":{{\"message\":\"{message}\",\"dropped\":{n}}}}}\n"
        ),
        _ => format!("{now}  WARN {message} dropped={n}\n"),
    }
    .into_bytes()
}

/// Write out every buffered line now (before the process exits), unless stderr has been
/// blocked for [`EXIT_FLUSH_WAIT`].
pub fn flush() {
    if let Some(sink) = GLOBAL.get() {
        sink.flush_within(EXIT_FLUSH_WAIT);
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
    /// Lines dropped, since the start.
    dropped: AtomicU64,
    /// The log's writeback, for the global sink.
    writeback: Option<&'static Writeback>,
}

/// Has the kernel write the log out as it goes, from a thread of its own (see the module's
/// doc): the log's writer counts what it wrote ([`Writeback::wrote`]) and wakes the thread
/// after each [`WRITEBACK_EVERY`] bytes; wakings while it works are merged into the next
/// run (a file system's sync: at most one every [`WRITEBACK_PAUSE`]).
pub struct Writeback {
    state: Mutex<WritebackState>,
    wake: Condvar,
}

struct WritebackState {
    /// What to write back: `None` until known (a pipe before `serve` names its directory).
    target: Option<Arc<Target>>,
    /// Written since the thread was last woken.
    unsynced: usize,
    /// Set when the thread has work.
    due: bool,
    /// Times the thread did its work (for the tests).
    runs: u64,
}

enum Target {
    /// The log's own file: `posix_fadvise(DONTNEED)` on it.
    File(std::fs::File),
    /// A file on the file system to sync (`syncfs`): the data directory.
    FileSystem(std::fs::File),
}

impl Target {
    fn write_back(&self) {
        // A failure (a file system without it) leaves the kernel's own schedule.
        match self {
            Target::File(file) => {
                let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
            }
            Target::FileSystem(dir) => {
                let _ = rustix::fs::syncfs(dir);
            }
        }
    }
}

impl Writeback {
    /// The writeback of a sink writing to `out`, and its thread; `None` without a thread.
    fn start(out: &impl std::os::fd::AsFd) -> Option<&'static Writeback> {
        let file = out
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::fs::File::from);
        let regular = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.file_type().is_file());
        let writeback: &'static Writeback = Box::leak(Box::new(Writeback {
            state: Mutex::new(WritebackState {
                target: file.filter(|_| regular).map(|f| Arc::new(Target::File(f))),
                unsynced: 0,
                due: false,
                runs: 0,
            }),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("log-writeback".into())
            .spawn(move || writeback.run())
            .ok()?;
        Some(writeback)
    }

    fn lock(&self) -> MutexGuard<'_, WritebackState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let mut state = self
                .wake
                .wait_while(self.lock(), |s| !s.due)
                .unwrap_or_else(|p| p.into_inner());
            state.due = false;
            state.runs += 1;
            let target = state.target.clone();
            // Done outside the lock: the log's writer only ever takes it to count (a MiB
            // written meanwhile sets `due` again, and the next run follows this one).
            drop(state);
            let began = std::time::Instant::now();
            if let Some(target) = target {
                target.write_back();
                // A file system's sync at most a few times a second, however fast the log
                // goes (the log's own file is cheap to advise: no pause).
                if matches!(*target, Target::FileSystem(_)) {
                    std::thread::sleep(WRITEBACK_PAUSE.saturating_sub(began.elapsed()));
                }
            }
        }
    }

    /// `n` more bytes of log written.
    fn wrote(&self, n: usize) {
        let mut state = self.lock();
        state.unsynced += n;
        if state.unsynced >= WRITEBACK_EVERY && state.target.is_some() {
            state.unsynced = 0;
            state.due = true;
            self.wake.notify_one();
        }
    }

    /// When the log is not a file of its own: sync the file system of `dir` instead.
    fn name_file_system(&self, dir: &std::path::Path) {
        let mut state = self.lock();
        if matches!(state.target.as_deref(), Some(Target::File(_))) {
            return;
        }
        if let Ok(dir) = std::fs::File::open(dir) {
            state.target = Some(Arc::new(Target::FileSystem(dir)));
        }
    }
}

/// The SQLite database's directory, from `serve`: when the log goes to a pipe or a socket
/// (whose reader may write it to the same disk), the log's writeback syncs this
/// directory's file system after every [`WRITEBACK_EVERY`] bytes of log. Nothing when stderr
/// is a file (its own writeback is started instead), a terminal or /dev/null.
pub fn sync_filesystem_of(dir: &std::path::Path) {
    let writeback = GLOBAL.get().and_then(|sink| sink.writeback);
    let Some(writeback) = writeback else {
        return;
    };
    let piped = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata().ok())
        .is_some_and(|m| m.file_type().is_fifo() || m.file_type().is_socket());
    if piped {
        writeback.name_file_system(dir);
    }
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
    /// Lines dropped since the last write-out (reported at its end).
    unreported: u64,
    /// Set once the writer thread was woken for the buffer being filled: each wake is a
    /// system call, and loggers appending before the thread runs need not repeat it.
    signalled: bool,
    out: Option<W>,
}

impl<W: Write + Send + 'static> Sink<W> {
    /// A sink writing to `out`, and its writer thread (which lives as long as the process).
    pub fn start(out: W) -> &'static Self {
        Self::start_with(out, None)
    }

    fn start_with(out: W, writeback: Option<&'static Writeback>) -> &'static Self {
        let sink = Self::leak(out, writeback);
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

    fn leak(out: W, writeback: Option<&'static Writeback>) -> &'static Self {
        Box::leak(Box::new(Sink {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_AT),
                spare: Vec::with_capacity(FLUSH_AT),
                writing: false,
                synchronous: false,
                unreported: 0,
                signalled: false,
                out: Some(out),
            }),
            full: Condvar::new(),
            drained: Condvar::new(),
            dropped: AtomicU64::new(0),
            writeback,
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

    /// Append one formatted line (a logger's single `write_all`), or drop it when the
    /// buffer is full.
    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.synchronous {
            // Each logger writes out its own: it waits for another's write under way, then
            // writes this line (and any appended meanwhile), in order.
            while state.buf.len() >= BUFFER_LIMIT {
                state = self.drained.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.buf.extend_from_slice(bytes);
            self.write_out(state);
            return;
        }
        // Once one line is dropped, every line is until the buffer is taken: the report of
        // the loss, at the buffer's end, is then where the loss happened.
        if state.unreported > 0
            || (!state.buf.is_empty() && state.buf.len() + bytes.len() > BUFFER_LIMIT)
        {
            state.unreported += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.buf.extend_from_slice(bytes);
        if state.buf.len() >= FLUSH_AT && !state.signalled {
            state.signalled = true;
            self.full.notify_one();
        }
    }

    /// Write out what is buffered, and wait for any write already under way.
    pub fn flush(&self) {
        let state = self.lock();
        self.write_out(state);
    }

    /// [`flush`](Self::flush), unless a write under way has not ended within `wait` (stderr
    /// blocked): then nothing (what is buffered stays there).
    pub fn flush_within(&self, wait: Duration) {
        let state = self.lock();
        let (state, waited) = self
            .drained
            .wait_timeout_while(state, wait, |s| s.writing)
            .unwrap_or_else(|p| p.into_inner());
        if !waited.timed_out() {
            self.write_out(state);
        }
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
        state.signalled = false;
        let Some(mut out) = state.out.take() else {
            return;
        };
        // The lines dropped came after all of these (they found the buffer full).
        let unreported = std::mem::take(&mut state.unreported);
        state.writing = true;
        drop(state);
        if unreported > 0 {
            full.extend_from_slice(&dropped_notice(unreported));
        }
        // Where stderr itself fails there is nowhere left to report it.
        let _ = out.write_all(&full).and_then(|()| out.flush());
        if let Some(writeback) = self.writeback {
            writeback.wrote(full.len());
        }
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
    fn global(writeback: bool) -> StderrBuffer {
        let sink = *GLOBAL.get_or_init(|| {
            let writeback = writeback
                .then(|| Writeback::start(&std::io::stderr()))
                .flatten();
            let sink = Sink::start_with(std::io::stderr(), writeback);
            let previous = std::panic::take_hook();
            // A panicking task must not hang on a stuck stderr (its worker thread would
            // be lost to the server): the hook's flush does not wait for the writer.
            std::panic::set_hook(Box::new(move |info| {
                sink.flush_within(Duration::ZERO);
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
                for (status, latency_us) in [(202, 463), (0, 0), (u16::MAX, u64::MAX)] {
                    let fields = (fields.0, fields.1, fields.2, status, latency_us, fields.5);
                    let mut ours = Vec::new();
                    format_access(&mut ours, format, AT.as_bytes(), fields).expect("format");
                    let ours = String::from_utf8(ours).expect("utf-8");
                    assert_eq!(ours, tracing_line(format, fields), "{format:?}");
                }
            }
        }
    }

    #[test]
    fn the_access_line_timestamp_is_rfc3339_with_microseconds() {
        let now = timestamp(std::time::SystemTime::now()).expect("a time humantime writes");
        let now = std::str::from_utf8(&now).expect("utf-8");
        assert_eq!(now.len(), AT.len(), "{now}");
        assert!(humantime::parse_rfc3339(now).is_ok(), "{now}");
    }

    /// The once-a-second timestamp is humantime's, to the microsecond, also within one
    /// second (its cached part), across seconds, days, a leap day and years, and at 0 and
    /// 999,999 µs.
    #[test]
    fn the_cached_timestamp_is_humantimes() {
        use std::time::{Duration, UNIX_EPOCH};
        let seconds = [
            0,
            1_709_164_799, // 2024-02-28T23:59:59Z, before a leap day
            1_709_164_800,
            1_709_251_199,
            1_735_689_599, // 2024-12-31T23:59:59Z
            1_735_689_600,
            1_796_318_943,
            253_402_300_799, // 9999-12-31T23:59:59Z
        ];
        for s in seconds {
            for micros in [0, 1, 9, 10, 328_174, 999_999, 5, 123_456] {
                let at = UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(micros);
                let expected = humantime::format_rfc3339_micros(at).to_string();
                let ours = timestamp(at).expect("a time humantime writes");
                assert_eq!(
                    std::str::from_utf8(&ours),
                    Ok(expected.as_str()),
                    "{s} {micros}"
                );
            }
        }
        // Beyond what humantime writes: no timestamp (the line is left to tracing), no panic.
        let year_10000 = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(timestamp(year_10000), None);
        assert_eq!(timestamp(UNIX_EPOCH - Duration::from_secs(1)), None);
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

    /// Four threads each append `line` `times` times; fails with `why` unless all four are
    /// done within 10 s.
    fn four_loggers(sink: &'static Sink<Recorder>, line: &[u8], times: usize, why: &str) {
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let (line, done) = (line.to_vec(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..times {
                    sink.append(&line);
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            assert!(
                finished.recv_timeout(Duration::from_secs(10)).is_ok(),
                "{why}"
            );
        }
    }

    #[test]
    fn without_a_writer_thread_each_logger_writes_its_line_at_once() {
        let out = Recorder::default();
        let sink = Sink::leak(out.clone(), None);
        sink.write_synchronously();
        sink.append(b"one\n");
        assert_eq!(seen(&out), b"one\n", "written before append returned");
        // Twice the buffer limit, from four loggers: none of them waits for ever.
        let line = vec![b'x'; 1024];
        four_loggers(
            sink,
            &line,
            BUFFER_LIMIT / 2 / line.len(),
            "a logger blocked: nothing writes the buffer out",
        );
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

    fn runs(writeback: &Writeback) -> u64 {
        writeback.lock().runs
    }

    fn wait_for_runs(writeback: &Writeback, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs(writeback) < n {
            assert!(Instant::now() < deadline, "the writeback did not run");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn after_a_drop_every_line_is_dropped_until_the_report_so_it_marks_the_place() {
        let out = Recorder::default();
        let sink = Sink::leak(out.clone(), None); // no writer thread: nothing drains by itself
        sink.append(&vec![b'a'; BUFFER_LIMIT - 10]);
        sink.append(b"too long to fit\n"); // dropped
        sink.append(b"fits\n"); // would fit, but comes after the loss
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 2);
        sink.flush();
        sink.append(b"after\n");
        sink.flush();
        let text = String::from_utf8(seen(&out)).expect("utf-8");
        let tail = text.trim_start_matches('a');
        assert!(tail.contains("WARN log lines dropped"), "{tail}");
        assert!(tail.trim_end().ends_with("dropped=2\nafter"), "{tail}");
        assert!(!tail.contains("fits"), "{tail}");
    }

    #[test]
    fn the_panic_and_exit_flushes_do_not_wait_for_a_blocked_output() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone());
        let gate = out.gate.lock().expect("gate");
        sink.append(b"one\n");
        sink.full.notify_one();
        // Wait for the writer to be inside the blocked write.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sink.lock().writing {
            assert!(Instant::now() < deadline, "the writer never began");
            sink.full.notify_one();
            std::thread::sleep(Duration::from_millis(30));
        }
        sink.append(b"two\n");
        let began = Instant::now();
        sink.flush_within(Duration::ZERO);
        sink.flush_within(Duration::from_millis(100));
        assert!(began.elapsed() < Duration::from_secs(2), "a flush waited");
        drop(gate);
        sink.flush();
        assert_eq!(seen(&out), b"one\ntwo\n");
    }

    #[test]
    fn a_log_file_is_written_back_after_every_mebibyte_not_before() {
        let dir = tempfile::tempdir().expect("dir");
        let file = std::fs::File::create(dir.path().join("log")).expect("file");
        let writeback = Writeback::start(&file).expect("a thread");
        assert!(matches!(
            writeback.lock().target.as_deref(),
            Some(Target::File(_))
        ));
        writeback.wrote(WRITEBACK_EVERY - 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs(writeback), 0, "ran before a MiB was written");
        writeback.wrote(1);
        wait_for_runs(writeback, 1);
        writeback.wrote(3 * WRITEBACK_EVERY);
        wait_for_runs(writeback, 2);
        // The target survives its use.
        assert!(writeback.lock().target.is_some());
    }

    #[test]
    fn a_pipe_is_written_back_only_once_its_file_system_is_named() {
        let (_reader, pipe) = std::os::unix::net::UnixStream::pair().expect("pair");
        let writeback = Writeback::start(&pipe).expect("a thread");
        assert!(writeback.lock().target.is_none(), "a socket is not a file");
        writeback.wrote(2 * WRITEBACK_EVERY);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs(writeback), 0, "nothing to write back yet");
        let dir = tempfile::tempdir().expect("dir");
        writeback.name_file_system(dir.path());
        assert!(matches!(
            writeback.lock().target.as_deref(),
            Some(Target::FileSystem(_))
        ));
        writeback.wrote(WRITEBACK_EVERY);
        wait_for_runs(writeback, 1);
    }

    #[test]
    fn a_log_file_keeps_its_own_writeback_when_a_directory_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let file = std::fs::File::create(dir.path().join("log")).expect("file");
        let writeback = Writeback::start(&file).expect("a thread");
        writeback.name_file_system(dir.path());
        assert!(matches!(
            writeback.lock().target.as_deref(),
            Some(Target::File(_))
        ));
    }

    #[test]
    fn a_blocked_output_drops_and_counts_lines_instead_of_holding_loggers_back() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone());
        let gate = out.gate.lock().expect("gate"); // the output blocks from here on
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let per_logger = 2 * BUFFER_LIMIT / line.len();
        four_loggers(
            sink,
            &line,
            per_logger,
            "a logger waited for the blocked output",
        );
        let held = sink.lock().buf.len();
        assert!(held <= BUFFER_LIMIT, "buffer grew to {held}");
        drop(gate);
        sink.flush();
        let written = seen(&out);
        let text = String::from_utf8(written).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines.iter().filter(|l| l.starts_with('x')).count() as u64;
        let dropped = sink.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "nothing dropped");
        assert_eq!(
            kept + dropped,
            4 * per_logger as u64,
            "lines lost uncounted"
        );
        // Each loss is reported where it happened, and the reports add up.
        let reported: u64 = lines
            .iter()
            .filter_map(|l| l.split_once("WARN log lines dropped"))
            .map(|(_, rest)| {
                let n = rest.rsplit_once("dropped=").expect("a count").1;
                n.parse::<u64>().expect("a number")
            })
            .sum();
        assert_eq!(reported, dropped, "{} reports", lines.len() - kept as usize);
        // Once the output drains, lines are kept again.
        sink.append(b"after\n");
        sink.flush();
        assert!(String::from_utf8(seen(&out))
            .expect("utf-8")
            .ends_with("after\n"));
    }
}
