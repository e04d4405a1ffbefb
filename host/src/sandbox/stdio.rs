//! A plugin's stdout and stderr, turned into the host's log lines.
//!
//! Each complete line becomes one log event tagged with the connection id
//! and the stream's name, its text escaped and quoted
//! ([`crate::ops::untrusted`]). Bounds keep a plugin from flooding the log or
//! growing the host's memory through it:
//! - a line longer than [`MAX_LINE_BYTES`] is cut there;
//! - a connection may log only so many lines per second; the lines over
//!   that are dropped, and one line says how many once the second is over;
//! - one write may carry at most [`MAX_WRITE_BYTES`], what `check-write`
//!   grants; a larger one traps, as on the client socket;
//! - every stdout handle a plugin opens shares one unfinished-line buffer,
//!   and so does every stderr handle: however many handles it opens, the
//!   host holds at most two unfinished lines per connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::ops::counters::Counters;
use crate::ops::untrusted::Untrusted;

/// Longest line logged whole; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 4096;

/// Most bytes one write to stdout or stderr may carry.
pub const MAX_WRITE_BYTES: usize = 64 * 1024;

/// Which of the plugin's output streams a line came from.
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The log of one connection's plugin, shared by all its stdout and stderr
/// handles.
pub struct PluginLog {
    service: Arc<str>,
    conn: u64,
    lines_per_second: u32,
    counters: Arc<Counters>,
    state: Mutex<State>,
}

struct State {
    /// When the current one-second window started.
    window_start: Instant,
    /// Lines logged in the current window.
    logged: u32,
    /// Lines dropped since the last report of drops.
    dropped: u64,
    stdout: Line,
    stderr: Line,
    exception: ExceptionWatch,
}

/// The unfinished line of one stream.
#[derive(Default)]
struct Line {
    bytes: Vec<u8>,
    /// The line was too long and has been logged; skip to its end.
    cut: bool,
}

impl PluginLog {
    pub fn new(
        service: Arc<str>,
        conn: u64,
        lines_per_second: u32,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            service,
            conn,
            lines_per_second,
            counters,
            state: Mutex::new(State {
                window_start: Instant::now(),
                logged: 0,
                dropped: 0,
                stdout: Line::default(),
                stderr: Line::default(),
                exception: ExceptionWatch::default(),
            }),
        })
    }

    /// The stream to hand the WASI context as stdout or stderr.
    pub fn stream(self: &Arc<Self>, stream: Stream) -> LogStream {
        LogStream {
            log: self.clone(),
            stream,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `bytes` written to `stream`, logging each line they complete.
    fn push(&self, stream: Stream, mut bytes: &[u8]) {
        let mut state = self.state();
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            let line = state.line(stream);
            if !line.cut {
                let room = MAX_LINE_BYTES - line.bytes.len();
                line.bytes.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    line.cut = true;
                    self.emit(&mut state, stream, " [line cut]");
                }
            }
            if end.is_some() {
                let line = state.line(stream);
                if !std::mem::take(&mut line.cut) {
                    self.emit(&mut state, stream, "");
                }
            }
            bytes = rest;
        }
    }

    /// Logs the unfinished line of `stream` (if it holds more than
    /// whitespace), rate permitting, and empties it.
    fn emit(&self, state: &mut State, stream: Stream, marker: &str) {
        let bytes = std::mem::take(&mut state.line(stream).bytes);
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        if state.window_start.elapsed() >= Duration::from_secs(1) {
            self.report_dropped(state);
            state.window_start = Instant::now();
            state.logged = 0;
        }
        let reports_exception = matches!(stream, Stream::Stderr) && state.exception.read(text);
        if state.logged < self.lines_per_second {
            state.logged += 1;
            let text = format!("{text}{marker}");
            let (service, conn, stream) = (&*self.service, self.conn, stream.name());
            if reports_exception {
                tracing::warn!(target: "plugin", service, conn, stream, "{}", Untrusted(&text));
            } else {
                tracing::info!(target: "plugin", service, conn, stream, "{}", Untrusted(&text));
            }
        } else {
            state.dropped += 1;
            crate::ops::counters::count(&self.counters.log_lines_dropped);
        }
    }

    /// The exception the plugin's runtime reported it did not catch, if it
    /// did: the language, and the report's last line (its type and message).
    pub fn uncaught_exception(&self) -> Option<(&'static str, String)> {
        self.state().exception.uncaught.clone()
    }

    /// Logs how many lines were dropped, if any, and starts counting afresh.
    fn report_dropped(&self, state: &mut State) {
        if state.dropped > 0 {
            tracing::warn!(
                target: "plugin",
                service = %self.service,
                conn = self.conn,
                dropped = state.dropped,
                "plugin log lines dropped: over {} lines per second",
                self.lines_per_second
            );
            state.dropped = 0;
        }
    }
}

/// Reads a plugin's stderr for the report of an exception its language's
/// runtime did not catch, so that the `closed` line can say so: Python's
/// traceback, which componentize-py prints before it aborts, and the
/// `Uncaught ...` report of the JavaScript SDK (portico.js), after which
/// componentize-js aborts, failing to make the exception `run`'s error.
#[derive(Default)]
struct ExceptionWatch {
    /// The language whose report is being read, if one is.
    reading: Option<&'static str>,
    /// The last report's last line: the exception's type and message.
    summary: Option<(&'static str, String)>,
    /// The report the runtime then said it did not catch.
    uncaught: Option<(&'static str, String)>,
}

/// What componentize-py prints once an exception has left `run`.
const PYTHON_UNCAUGHT: &str = "Python function threw an unexpected exception";
/// What componentize-js prints when `run` throws what cannot be its error.
const JAVASCRIPT_UNCAUGHT: &str = "expected a string, received";

impl ExceptionWatch {
    /// Reads one line of stderr; whether it is part of an exception report.
    fn read(&mut self, line: &str) -> bool {
        if line == "Traceback (most recent call last):" {
            (self.reading, self.summary) = (Some("Python"), None);
            return true;
        }
        if let Some(exception) = line.strip_prefix("Uncaught ") {
            self.reading = Some("JavaScript");
            self.summary = Some(("JavaScript", exception.to_string()));
            return true;
        }
        let indented = line.starts_with(' ');
        match self.reading {
            Some(_) if indented => return true,
            Some("Python") => {
                self.summary = Some(("Python", line.to_string()));
                self.reading = None;
                return true;
            }
            _ => self.reading = None,
        }
        let language = if line == PYTHON_UNCAUGHT {
            "Python"
        } else if line.starts_with(JAVASCRIPT_UNCAUGHT) {
            "JavaScript"
        } else {
            return false;
        };
        self.uncaught = Some(self.summary.take().unwrap_or_else(|| {
            let unknown = match language {
                "Python" => "no traceback was printed",
                _ => "a value that is not a string was thrown: throw a string, or use portico.js",
            };
            (language, unknown.to_string())
        }));
        true
    }
}

impl State {
    fn line(&mut self, stream: Stream) -> &mut Line {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

impl Drop for PluginLog {
    /// Logs what is left: unfinished lines, and the count of dropped ones.
    fn drop(&mut self) {
        let mut state = self.state();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !state.line(stream).cut {
                self.emit(&mut state, stream, "");
            }
        }
        self.report_dropped(&mut state);
    }
}

/// One of a connection's output streams (stdout or stderr), as handed to
/// its WASI context; every handle the plugin opens writes to the same log.
pub struct LogStream {
    log: Arc<PluginLog>,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }
}

impl LogStream {
    fn writer(&self) -> LogWriter {
        LogWriter {
            log: self.log.clone(),
            stream: self.stream,
        }
    }
}

/// A handle on stdout or stderr, as the plugin holds it.
struct LogWriter {
    log: Arc<PluginLog>,
    stream: Stream,
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > MAX_WRITE_BYTES {
            return Err(StreamError::trap(
                "write exceeded the permit from check-write",
            ));
        }
        self.log.push(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_WRITE_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len().min(MAX_WRITE_BYTES);
        self.log.push(self.stream, &buf[..len]);
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::ExceptionWatch;

    fn read_all(lines: &[&str]) -> (Vec<bool>, Option<(&'static str, String)>) {
        let mut watch = ExceptionWatch::default();
        let reported = lines.iter().map(|line| watch.read(line)).collect();
        (reported, watch.uncaught)
    }

    /// componentize-py's report of a chained exception: the last
    /// traceback's exception is the one that left `run`.
    #[test]
    fn a_python_traceback_names_its_last_exception() {
        let (reported, uncaught) = read_all(&[
            "Traceback (most recent call last):",
            "  File \"/0/app.py\", line 3, in run",
            "KeyError: 'x'",
            "During handling of the above exception, another exception occurred:",
            "Traceback (most recent call last):",
            "  File \"/0/app.py\", line 5, in run",
            "ValueError: bad",
            "thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:",
            "Python function threw an unexpected exception",
        ]);
        assert_eq!(uncaught, Some(("Python", "ValueError: bad".into())));
        assert_eq!(
            reported,
            [true, true, true, false, true, true, true, false, true]
        );
    }

    /// portico.js's report, then componentize-js's words.
    #[test]
    fn a_javascript_report_names_its_exception() {
        let (_, uncaught) = read_all(&[
            "Uncaught TypeError: x is undefined",
            "  run@app.js:3:5",
            "expected a string, received [object]",
        ]);
        assert_eq!(
            uncaught,
            Some(("JavaScript", "TypeError: x is undefined".into()))
        );
        let (_, uncaught) = read_all(&["expected a string, received [object]"]);
        assert!(uncaught.is_some_and(|(_, text)| text.contains("use portico.js")));
    }

    /// A traceback the plugin printed and went on (a caught exception) is
    /// no uncaught one.
    #[test]
    fn a_printed_traceback_alone_is_not_uncaught() {
        let (_, uncaught) = read_all(&[
            "Traceback (most recent call last):",
            "  File \"/0/app.py\", line 3, in run",
            "KeyError: 'x'",
            "handled it",
        ]);
        assert_eq!(uncaught, None);
    }
}
