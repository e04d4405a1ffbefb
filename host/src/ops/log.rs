//! The host's text log, made cheap on the hot path. At the default level a
//! connection logs two lines, `accepted` and `closed`; formatted by
//! tracing-subscriber's full formatter and written to stderr from the
//! connection's thread, they were 15% of the host's user-space instructions
//! per connection and two `write` calls. Here:
//!
//! - [`LineFormat`] writes the same line as the full formatter does without
//!   colours (`TIMESTAMP LEVEL TARGET: MESSAGE FIELDS`), without its styling
//!   and span machinery, which cost more than the line itself;
//! - [`LogSink`] takes each line into a buffer that a thread of its own
//!   writes to stderr, at most [`GATHER`] after the line came: under load,
//!   one wake-up and one `write` serve many lines, and no connection waits
//!   for a `write`. Once the buffers have grown, a line allocates nothing.
//!
//! Nothing is dropped: a line that finds [`MAX_BUFFERED`] bytes waiting
//! waits for the writer, as a write to a full pipe would.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Most bytes of log lines waiting for the writer before a new line waits.
const MAX_BUFFERED: usize = 1 << 20;
/// How long the writer lets lines gather after the first, so that under
/// load one `write` takes many lines and one wake-up serves them; the most
/// a line waits before it is written.
const GATHER: Duration = Duration::from_millis(10);
/// Bytes of lines the writer writes without waiting out [`GATHER`].
const WRITE_AT: usize = 64 * 1024;

/// Longest [`exit`] waits for the lines before it to be written.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The sink the process logs through, for [`exit`].
static SINK: OnceLock<Arc<Shared>> = OnceLock::new();

/// Exits the process with `code` once the lines logged so far are written
/// (waiting at most [`EXIT_FLUSH_TIMEOUT`]): `std::process::exit` alone
/// would lose the lines still buffered, the reason for exiting among them.
pub fn exit(code: i32) -> ! {
    if let Some(shared) = SINK.get() {
        let deadline = Instant::now() + EXIT_FLUSH_TIMEOUT;
        let mut state = shared.lock();
        // Closing makes the writer write what it has at once.
        state.closing = true;
        shared.changed.notify_all();
        while !(state.pending.is_empty() && state.writer == Phase::Sleeping)
            && Instant::now() < deadline
        {
            state = shared.wait_until(state, deadline);
        }
    }
    std::process::exit(code)
}

/// The full formatter's line, without colours: RFC 3339 timestamp, level,
/// target, message and fields. Spans are not shown (the host opens none).
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::ERROR => " ERROR ",
            Level::WARN => "  WARN ",
            Level::INFO => "  INFO ",
            Level::DEBUG => " DEBUG ",
            Level::TRACE => " TRACE ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Log lines on their way to stderr; see the module's comment.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when lines arrive, when the writer has taken them, and at
    /// the end.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Lines not yet taken by the writer.
    pending: Vec<u8>,
    writer: Phase,
    closing: bool,
}

/// What the writer thread is doing, so that a line wakes it only when it
/// must.
#[derive(Clone, Copy, Default, PartialEq)]
enum Phase {
    /// Writing what it took; it looks for more before it sleeps.
    #[default]
    Writing,
    /// Letting lines gather before it writes them.
    Gathering,
    /// Nothing to write: the next line wakes it.
    Sleeping,
}

/// Stops the writer once it has written every line logged before; the
/// process's last lines are not lost when it exits.
pub struct LogFlushGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl LogSink {
    /// Starts the writer thread. If it cannot be started, lines are written
    /// to stderr directly.
    pub fn start() -> (LogSink, Option<LogFlushGuard>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.write_until_closed(&mut io::stderr())
            })
            .ok();
        let guard = writer.map(|writer| LogFlushGuard {
            shared: shared.clone(),
            writer: Some(writer),
        });
        if guard.is_none() {
            shared.lock().closing = true;
        }
        let _ = SINK.set(shared.clone());
        (LogSink { shared }, guard)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> MutexGuard<'a, State> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.changed.wait_timeout(state, left) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// The writer thread: sleeps until a line arrives, lets more gather for
    /// up to [`GATHER`] (or until [`WRITE_AT`] bytes have), writes them all
    /// at once, and again, until the guard closes the sink.
    fn write_until_closed(&self, out: &mut impl Write) {
        let mut taken = Vec::new();
        loop {
            let mut state = self.lock();
            state.writer = Phase::Sleeping;
            self.changed.notify_all();
            while state.pending.is_empty() && !state.closing {
                state = self.wait(state);
            }
            if state.pending.is_empty() {
                return;
            }
            state.writer = Phase::Gathering;
            let deadline = Instant::now() + GATHER;
            while !state.closing && state.pending.len() < WRITE_AT && Instant::now() < deadline {
                state = self.wait_until(state, deadline);
            }
            std::mem::swap(&mut state.pending, &mut taken);
            state.writer = Phase::Writing;
            drop(state);
            // Nowhere to report a failure to write the log.
            let _ = out.write_all(&taken);
            taken.clear();
        }
    }

    /// Adds a line for the writer, waiting while too much is waiting.
    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        while state.pending.len() >= MAX_BUFFERED && !state.closing {
            state = self.wait(state);
        }
        if state.closing {
            drop(state);
            let _ = io::stderr().write_all(line);
            return;
        }
        let before = state.pending.len();
        state.pending.extend_from_slice(line);
        let wake = match state.writer {
            Phase::Sleeping => before == 0,
            Phase::Gathering => before < WRITE_AT && state.pending.len() >= WRITE_AT,
            Phase::Writing => false,
        };
        if wake {
            self.changed.notify_all();
        }
    }
}

impl Drop for LogFlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What one event writes through: tracing-subscriber formats a whole line,
/// then writes it with one `write_all`.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.shared.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line pushed before the guard is dropped is written, in order,
    /// even when the writer is slower than the lines arrive.
    #[test]
    fn writes_every_line_in_order() {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = std::thread::spawn({
            let (shared, out) = (shared.clone(), out.clone());
            move || shared.write_until_closed(&mut SlowWriter(out))
        });
        let guard = LogFlushGuard {
            shared: shared.clone(),
            writer: Some(writer),
        };
        let sink = LogSink { shared };
        let lines: Vec<String> = (0..2000).map(|n| format!("line {n}\n")).collect();
        for line in &lines {
            sink.make_writer().write_all(line.as_bytes()).unwrap();
        }
        drop(guard);
        let written = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(written, lines.concat());
    }

    struct SlowWriter(Arc<Mutex<Vec<u8>>>);

    impl Write for SlowWriter {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(50));
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
