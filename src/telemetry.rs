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
    let filter =
        EnvFilter::try_new(filter.unwrap_or(default)).unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Sink::global())
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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
    /// Set while the writer thread holds the buffer's contents outside the lock.
    writing: bool,
    out: Option<W>,
}

impl<W: Write + Send + 'static> Sink<W> {
    /// A sink writing to `out`, and its writer thread (which lives as long as the process).
    pub fn start(out: W) -> &'static Self {
        let sink: &'static Self = Box::leak(Box::new(Sink {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_AT),
                spare: Vec::with_capacity(FLUSH_AT),
                writing: false,
                out: Some(out),
            }),
            full: Condvar::new(),
            drained: Condvar::new(),
        }));
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
            sink.lock().spare = Vec::new();
        }
        sink
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
        if state.buf.len() >= FLUSH_AT {
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

    fn seen(r: &Recorder) -> Vec<u8> {
        r.seen.lock().expect("recorder").clone()
    }

    #[test]
    fn lines_reach_the_output_in_order_within_the_flush_interval() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone());
        sink.append(b"one\n");
        sink.append(b"two\n");
        assert!(seen(&out).is_empty(), "written at once, not buffered");
        std::thread::sleep(FLUSH_EVERY * 5);
        assert_eq!(seen(&out), b"one\ntwo\n");
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
